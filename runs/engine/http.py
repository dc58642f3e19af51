"""step.http: the worker makes the request on the run's behalf and records it as a step.

The request counts against the run's wall clock: its deadline is the earlier of its own timeout
and the execution's deadline, and every page of a paginated call shares that one deadline.
"""

import json
import math
from urllib.parse import urljoin

import httpx
from django.conf import settings
from django.utils import timezone

from loops_project import strict_json
from runs import outbound, state
from runs.models import StepStatus

MAX_PAGES = 100
MAX_TIMEOUT_SECONDS = 120.0
TEXT_LIMIT = 64 * 1024


def _parse(reply: outbound.Reply):
    # Kept as the run's data, so only what the database can hold: a body that is not strict
    # JSON (NaN, NUL, lone surrogates, deep nesting) is kept as its text, NUL replaced.
    text = reply.text[:TEXT_LIMIT].replace("\x00", "\ufffd")
    body = text
    if "json" in reply.headers.get("content-type", ""):
        try:
            body = strict_json.parse(reply.content, field="body")
        except strict_json.JsonValueError:
            body = text
    return body, text


def _record(reply: outbound.Reply) -> dict:
    body, text = _parse(reply)
    return {
        "status": reply.status_code,
        "headers": dict(reply.headers),
        "body": body,
        "text": text if not isinstance(body, str) else "",
        "url": reply.url,
    }


def _timeout(value) -> float | None:
    """The request's own timeout in seconds, or None when the program's value is unusable."""
    if value is None:
        return min(float(settings.LOOPS_HTTP_TIMEOUT_SECONDS), MAX_TIMEOUT_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return min(float(value), MAX_TIMEOUT_SECONDS)


def _deadline(execution, timeout: float) -> outbound.Deadline:
    own = outbound.Deadline.after(timeout)
    if execution.deadline < own.at:
        reason = (
            f"the run's wall-clock limit (LOOPS_WALL_SECONDS = {settings.LOOPS_WALL_SECONDS} s)"
        )
        return outbound.Deadline(execution.deadline, reason)
    return own


def _pages(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 1
    return max(1, min(value, MAX_PAGES))


SCALAR = str | int | float | bool


def _headers(value) -> dict[str, str] | None:
    """The request's headers (an object of names to scalar values), or None if unusable."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, SCALAR) for v in value.values()):
        return None
    return {str(k): str(v) for k, v in value.items()}


def _params(value):
    """The query's parameters (an object of names to scalars or lists of scalars, or a list of
    [name, value] pairs), or False if unusable."""
    if value is None or value == {} or value == []:
        return None
    if isinstance(value, dict) and all(
        isinstance(v, SCALAR) or (isinstance(v, list) and all(isinstance(i, SCALAR) for i in v))
        for v in value.values()
    ):
        return value
    if isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], SCALAR) for pair in value
    ):
        return [(str(name), item) for name, item in value]
    return False


def _checked(req: dict) -> dict | str:
    """The program's request with its headers and query parameters as they are sent, or what
    is wrong with it (before anything is sent)."""
    if not isinstance(req.get("url"), str) or not isinstance(req.get("method") or "GET", str):
        return "method and url must be strings"
    headers, params = _headers(req.get("headers")), _params(req.get("params"))
    if headers is None:
        return "headers must be an object of names to strings"
    if params is False:
        return "params must be an object of names to values, or a list of [name, value] pairs"
    return {**req, "headers": headers, "params": params}


def _budget(execution) -> int:
    """The bytes a step.http may read, all its pages together: what one step may keep, and no
    more than its run may still store."""
    run_left = settings.LOOPS_MAX_RUN_BYTES - execution.run.stored_bytes - execution.stored
    return max(min(settings.LOOPS_MAX_STEP_OUTPUT_BYTES, run_left), 0)


def _over_budget(budget: int) -> dict:
    return {
        "message": f"the responses are larger than the step may keep ({budget} bytes: "
        "LOOPS_MAX_STEP_OUTPUT_BYTES, or what is left of LOOPS_MAX_RUN_BYTES); reading stopped "
        "there",
        "type": "HttpError",
    }


def _fetch(req: dict, pages: int, deadline: outbound.Deadline, records: list,
           budget: int) -> dict | None:  # fmt: skip
    """Request each page of `req` (checked) into `records`, keeping at most `budget` bytes of
    records in all; returns the step's error for a 4xx/5xx or a body over the budget, else
    None."""
    url, left = req["url"], budget
    for page in range(1, pages + 1):
        read_limit = min(settings.LOOPS_HTTP_MAX_RESPONSE_BYTES, left)
        try:
            reply = outbound.request(
                req.get("method") or "GET",
                url,
                deadline=deadline,
                max_bytes=read_limit,
                headers=req["headers"],
                params=req["params"] if page == 1 else None,
                json=req.get("json"),
                content=req.get("data") if isinstance(req.get("data"), str) else None,
            )
        except outbound.ResponseTooLarge:
            if read_limit == settings.LOOPS_HTTP_MAX_RESPONSE_BYTES:
                raise
            return _over_budget(budget)
        record = _record(reply)
        size = len(json.dumps(record))  # what the step keeps of it: body, text, headers
        if size > left:
            return _over_budget(budget)
        left -= size
        if pages > 1:
            record["page"] = page
        records.append(record)
        if reply.status_code >= 400:
            return {
                "message": f"HTTP {reply.status_code} from {reply.url}",
                "type": "HttpError",
                "status": reply.status_code,
                "headers": record["headers"],
                "body": record["body"],
            }
        nxt = reply.links.get("next", {}).get("url")
        if not nxt:
            return None
        # Relative to the URL the program asked for, never to the pinned address.
        url = urljoin(reply.url, nxt)
    return None


def handle_http(execution, message: dict) -> dict:
    entry = execution.steps.get(message.get("key"))
    req = message.get("request") if isinstance(message.get("request"), dict) else {}
    if entry is None:
        return {"error": {"message": "step.http was not opened", "type": "RuntimeError"}}
    started = timezone.now()
    pages = _pages(req.get("pages"))
    timeout = _timeout(req.get("timeout"))
    records: list[dict] = []
    error = None
    checked = _checked(req)
    if isinstance(checked, dict) and timeout is None:
        checked = "timeout must be a positive number of seconds"
    if isinstance(checked, str):
        error = {"message": checked, "type": "HttpError"}
    else:
        try:
            deadline = _deadline(execution, timeout)
            error = _fetch(checked, pages, deadline, records, _budget(execution))
        except outbound.OutboundError as exc:
            error = {"message": str(exc), "type": "HttpError"}
        except httpx.HTTPError as exc:
            error = {"message": f"{type(exc).__name__}: {exc}", "type": "HttpError"}
    now = timezone.now()
    output = records if pages > 1 else (records[0] if records else None)
    status = StepStatus.FAILED if error else StepStatus.SUCCEEDED
    execution.close_step(
        message["key"],
        {
            "status": status,
            "output": output,
            "error": error,
            "attempts": 1,
            "finished_at": now,
            "duration_ms": state.duration_ms(started, now),
            "page": len(records) if pages > 1 else None,
        },
    )
    if error:
        return {"error": error}
    return {"output": output}
