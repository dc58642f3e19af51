"""The client: one method per call of the Loops HTTP API that a program starting and following
runs needs, and `poll`, which waits for a run."""

import random
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, Unpack, cast
from urllib.parse import quote

import httpx

from loops_client._version import __version__
from loops_client.errors import PollTimeout, RateLimited, error_from_response
from loops_client.types import (
    ENDED,
    FOR_A_PERSON,
    Batch,
    BatchCreated,
    Event,
    RespondResult,
    Run,
    RunFilters,
    RunPage,
)

LIVE_WAIT_DEFAULT = 30.0
"""How long the server waits for a live run when no timeout is given (API.md, "Trigger")."""

RUNS_PAGE_SIZE = 100
"""`Client.runs` asks for pages this large (the API's maximum) unless told a `limit`."""

_FILTER_NAMES = {
    "status": "status",
    "loop": "loop",
    "trigger_type": "triggerType",
    "mode": "mode",
    "batch": "batch",
    "created_after": "createdAfter",
    "created_before": "createdBefore",
    "step_status": "stepStatus",
    "triggered_by": "triggeredBy",
    "sort": "sort",
    "limit": "limit",
}


class Client:
    """A client of one Loops server, authenticated with one API token.

    ```
    with Client("https://loops.example.com", token) as loops:
        run = loops.trigger("greeting", {"name": "Ana"})
        run = loops.poll(run["id"])
    ```

    `base_url` is the server's root (the API is under `/api/v1/`). `timeout` bounds each
    request, in seconds. `transport` is handed to httpx (`httpx.MockTransport` in tests, a
    transport with retries or a proxy in production). Every method raises a `LoopsError`
    subclass for an error answer of the API.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/api/v1/",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "User-Agent": f"loops-client/{__version__}",
            },
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._http.close()

    # --- starting runs ---------------------------------------------------------------------

    def trigger(
        self,
        loop: str,
        body: Any,
        *,
        idempotency_key: str | None = None,
        mode: Literal["async", "live"] = "async",
        timeout: float | None = None,
    ) -> Run:
        """Start a run of `loop` (id or slug) with `body` as its input (`event.body`): any
        JSON value, `None` included.

        `mode="async"` answers at once with the queued run. `mode="live"` waits on the server
        up to `timeout` seconds (its default 30, at most 120) and answers the run, ended if it
        ended in time. The same `idempotency_key` for the same loop within 24 hours answers
        the first run again and starts nothing.
        """
        payload: dict[str, Any] = {"input": body, "mode": mode}
        if timeout is not None:
            payload["timeout"] = timeout
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        # A live request lasts as long as the server waits, and then as long as any request.
        wait = (LIVE_WAIT_DEFAULT if timeout is None else timeout) if mode == "live" else 0
        answer = self._request(
            "POST", f"loops/{_segment(loop)}/runs", json=payload, headers=headers,
            timeout=self.timeout + wait,
        )  # fmt: skip
        return cast(Run, answer["data"])

    def batch(self, loop: str, inputs: Sequence[Any]) -> BatchCreated:
        """Start one run of `loop` per input (1 to 100,000), all or none. Answers
        `{"batchId", "count"}` once every run exists and is queued; list them with
        `runs(batch=batchId)`."""
        answer = self._request("POST", f"loops/{_segment(loop)}/runs", json={"inputs": [*inputs]})
        return cast(BatchCreated, answer["data"])

    def get_batch(self, batch_id: str) -> Batch:
        """A batch with its runs counted by status."""
        return cast(Batch, self._request("GET", f"batches/{_segment(batch_id)}")["data"])

    # --- reading runs ----------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with its steps, in order."""
        return cast(Run, self._request("GET", f"runs/{_segment(run_id)}")["data"])

    def list_runs(
        self, *, cursor: str | None = None, offset: int | None = None, **filters: Unpack[RunFilters]
    ) -> RunPage:
        """One page of the organization's runs (without steps), newest first unless `sort`
        says otherwise. The next page: the same filters with `cursor=page["nextCursor"]`."""
        params = _filter_params(filters)
        if cursor is not None:
            params["cursor"] = cursor
        if offset is not None:
            params["offset"] = str(offset)
        return cast(RunPage, self._request("GET", "runs", params=params))

    def runs(self, **filters: Unpack[RunFilters]) -> Iterator[Run]:
        """Every run that matches the filters, page after page (following `nextCursor`, so
        runs that arrive meanwhile neither repeat nor shift the pages). Pages hold `limit`
        runs (default 100). Lazy: nothing is requested, and no error raised, before the first
        run is asked for."""
        filters.setdefault("limit", RUNS_PAGE_SIZE)
        cursor: str | None = None
        offset = 0
        while True:
            page = self.list_runs(cursor=cursor, offset=offset or None, **filters)
            yield from page["data"]
            if not page["hasMore"] or not page["data"]:
                return
            if page["nextCursor"]:
                cursor, offset = page["nextCursor"], 0
            else:
                offset += len(page["data"])

    # --- acting on runs (a `full` token) ---------------------------------------------------

    def respond(
        self,
        run_id: str,
        action: Literal["input", "approve", "reject"],
        input: Any = None,
        reason: str | None = None,
    ) -> RespondResult:
        """Answer a run waiting for a person: `"input"` with the answer (any JSON but null)
        for `step.ask`, `"approve"` or `"reject"` (with an optional `reason`) for
        `step.approve`. The run is queued to carry on."""
        payload: dict[str, Any] = {"action": action}
        if input is not None:
            payload["input"] = input
        if reason is not None:
            payload["reason"] = reason
        answer = self._request("POST", f"runs/{_segment(run_id)}/respond", json=payload)
        return cast(RespondResult, answer["data"])

    def send_event(self, run_id: str, type: str, payload: Any = None) -> Event:
        """Post an event to a run. A run waiting in `step.wait_for_event` for `type` carries
        on with `payload`; otherwise the event is kept for a later wait of that type."""
        answer = self._request(
            "POST", f"runs/{_segment(run_id)}/events", json={"type": type, "payload": payload}
        )
        return cast(Event, answer["data"])

    def cancel(self, run_id: str) -> Run:
        """Cancel a pending, running or waiting run (and the child runs below it)."""
        return cast(Run, self._request("POST", f"runs/{_segment(run_id)}/cancel")["data"])

    # --- waiting ---------------------------------------------------------------------------

    def poll(
        self, run_id: str, *, timeout: float = 60.0, initial: float = 0.2, maximum: float = 5.0
    ) -> Run:
        """Wait until the run has ended (succeeded, failed or cancelled) or waits for a
        person (`pending.kind` `input` or `approval`), and return it, with its steps.

        Asks at once, then again after `initial` seconds, each wait twice the one before up
        to `maximum`, each taken at random between its half and its whole so that many
        pollers do not ask in step. A 429 waits its `Retry-After` (or is raised, as
        `RateLimited`, when that would pass the timeout). Raises
        `PollTimeout` (a `LoopsError` and a `TimeoutError`, with the run as last seen) when
        `timeout` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        delay = initial
        while True:
            least = 0.0
            try:
                run = self.get_run(run_id)
            except RateLimited as exc:
                least = exc.retry_after or delay
                if time.monotonic() + least > deadline:
                    raise
            else:
                pending = run["pending"]
                if run["status"] in ENDED or (
                    run["status"] == "waiting"
                    and pending is not None
                    and pending["kind"] in FOR_A_PERSON
                ):
                    return run
                if time.monotonic() >= deadline:
                    raise PollTimeout(
                        f"Run {run_id} is still {run['status']} after {timeout:g} s", run=run
                    )
            # Jitter spreads pollers out; it guards nothing, so `random` is the right tool.
            pause = max(random.uniform(delay / 2, delay), least)  # noqa: S311
            time.sleep(max(min(pause, deadline - time.monotonic()), 0.0))
            delay = min(delay * 2, maximum)

    # --- plumbing --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The answer's decoded JSON, or the LoopsError for an error answer."""
        response = self._http.request(
            method, path, json=json, params=params, headers=headers,
            timeout=timeout if timeout is not None else self.timeout,
        )  # fmt: skip
        if not response.is_success:
            raise error_from_response(response)
        return response.json() if response.content else None


def _segment(value: str) -> str:
    """An id or slug as one path segment (quoted, so that it can never name another path)."""
    return quote(value, safe="")


def _filter_params(filters: RunFilters) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in filters.items():
        if name not in _FILTER_NAMES:
            raise TypeError(f"runs() got an unexpected filter {name!r}")
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(value)
        elif isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(f"{name} must be an aware datetime (with a time zone)")
            value = value.isoformat()
        params[_FILTER_NAMES[name]] = str(value)
    return params
