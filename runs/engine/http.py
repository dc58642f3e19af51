"""step.http: the worker makes the request on the run's behalf and records it as a step."""

import json

import httpx
from django.utils import timezone

from runs.engine import outbound
from runs.models import Step, StepStatus

MAX_PAGES = 100
TEXT_LIMIT = 64 * 1024


def _parse(response: httpx.Response):
    text = response.text[:TEXT_LIMIT] if len(response.content) <= outbound.MAX_BODY_BYTES else ""
    body = text
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = text
    return body, text


def _record(response: httpx.Response, url: str) -> dict:
    body, text = _parse(response)
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": body,
        "text": text if not isinstance(body, str) else "",
        "url": url,
    }


def handle_http(execution, message: dict) -> dict:
    entry = execution.steps.get(message.get("key"))
    req = message.get("request") if isinstance(message.get("request"), dict) else {}
    if entry is None:
        return {"error": {"message": "step.http was not opened", "type": "RuntimeError"}}
    pages = max(1, min(int(req.get("pages") or 1), MAX_PAGES))
    started = timezone.now()
    records, url, error = [], str(req.get("url", "")), None
    try:
        for page in range(1, pages + 1):
            response, final_url = outbound.request(
                str(req.get("method") or "GET"),
                url,
                headers={str(k): str(v) for k, v in (req.get("headers") or {}).items()},
                params=req.get("params") or None if page == 1 else None,
                json=req.get("json"),
                content=req.get("data") if isinstance(req.get("data"), str) else None,
                timeout=req.get("timeout"),
            )
            record = _record(response, final_url)
            if pages > 1:
                record["page"] = page
            records.append(record)
            if response.status_code >= 400:
                error = {
                    "message": f"HTTP {response.status_code} from {final_url}",
                    "type": "HttpError",
                    "status": response.status_code,
                    "headers": record["headers"],
                    "body": record["body"],
                }
                break
            nxt = response.links.get("next", {}).get("url")
            if not nxt:
                break
            url = str(response.url.join(nxt)) if nxt.startswith("/") else nxt
    except outbound.TargetRefused as exc:
        error = {"message": str(exc), "type": "HttpError"}
    except httpx.HTTPError as exc:
        error = {"message": f"{type(exc).__name__}: {exc}", "type": "HttpError"}
    now = timezone.now()
    duration = int((now - started).total_seconds() * 1000)
    output = records if pages > 1 else (records[0] if records else None)
    status = StepStatus.FAILED if error else StepStatus.SUCCEEDED
    Step.objects.filter(pk=entry[0]).update(
        status=status,
        output=output,
        error=error,
        attempts=1,
        finished_at=now,
        duration_ms=duration,
        page=len(records) if pages > 1 else None,
    )
    entry[1] = status
    execution.current_step = None
    if error:
        return {"error": error}
    return {"output": output}
