"""step.http: the worker makes the request on the run's behalf and records it as a step.

The request counts against the run's wall clock: its deadline is the earlier of its own timeout
and the execution's deadline, and every page of a paginated call shares that one deadline.
"""

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


def _fetch(req: dict, pages: int, deadline: outbound.Deadline, records: list) -> dict | None:
    """Request each page into `records`; returns the step's error for a 4xx/5xx, else None."""
    url = str(req.get("url", ""))
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    for page in range(1, pages + 1):
        reply = outbound.request(
            str(req.get("method") or "GET"),
            url,
            deadline=deadline,
            headers=headers,
            params=req.get("params") or None if page == 1 else None,
            json=req.get("json"),
            content=req.get("data") if isinstance(req.get("data"), str) else None,
        )
        record = _record(reply)
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
    if timeout is None:
        error = {"message": "timeout must be a positive number of seconds", "type": "HttpError"}
    else:
        try:
            error = _fetch(req, pages, _deadline(execution, timeout), records)
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
