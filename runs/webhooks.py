"""Webhooks: a signed JSON POST of the run on each status change, retried with backoff."""

import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from functools import cache

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from loops.models import Loop
from loops_project import sql
from loops_project.errors import Invalid
from runs import dispatch, outbound
from runs.models import DeliveryStatus, Run, RunStatus, TimerKind, Webhook, WebhookDelivery
from runs.schemas import run_payload
from runs.state import Change

SIGNATURE_HEADER = "X-Loops-Signature"
EVENT_NAMES = {f"run.{s}" for s in RunStatus.values}
DELIVERY_TIMEOUT_SECONDS = 10


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_create(
    *, organization: Organization, url: str, events: list[str] | None = None,
    loop: Loop | None = None,
) -> Webhook:  # fmt: skip
    # A status alone ("failed") names the same event as "run.failed".
    events = list(dict.fromkeys(e if e.startswith("run.") else f"run.{e}" for e in events or []))
    unknown = [e for e in events if e not in EVENT_NAMES]
    if unknown:
        raise Invalid(
            f"unknown events: {', '.join(map(str, unknown))}; use {', '.join(sorted(EVENT_NAMES))}",
            code="invalid_events", details={"field": "events"},
        )  # fmt: skip
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise Invalid(
            "url must be an http or https URL", code="invalid_url", details={"field": "url"}
        ) from None
    return Webhook.objects.create(
        organization=organization, loop=loop, url=url, events=events,
        secret="whsec_" + secrets.token_urlsafe(24),
    )  # fmt: skip


@cache
def _has_webhooks_sql() -> str:
    hook = sql.table(Webhook)
    return (
        f"SELECT EXISTS (SELECT 1 FROM {hook} WHERE {sql.column(Webhook, 'organization')} = %s "  # noqa: S608 - model names; the value is a parameter
        f"AND {sql.column(Webhook, 'active')})"
    )


def organization_has_webhooks(organization_id: str) -> bool:
    """Whether any webhook of the organization is on (one prepared statement: it is asked on
    every trigger that did not already find out)."""
    return bool(sql.fetch_one(_has_webhooks_sql(), [organization_id])[0])


def queue_deliveries_of(changes: list[Change]) -> None:
    """A delivery for each webhook subscribed to each change (run.<status>), queued."""
    organizations = {change.organization_id for change in changes}
    hooks = list(Webhook.objects.filter(organization_id__in=organizations, active=True))
    wanted = [
        (change, hook)
        for change in changes
        for hook in hooks
        if hook.organization_id == change.organization_id
        and hook.loop_id in (None, change.loop_id)
        and (not hook.events or f"run.{change.status}" in hook.events)
    ]
    if not wanted:
        return
    runs = Run.objects.select_related("loop", "version").in_bulk({c.run_id for c, _ in wanted})
    deliveries = []
    for change, hook in wanted:
        event = f"run.{change.status}"
        # Stored as JSON the way the API writes it (timestamps as ISO 8601 strings); the run as
        # it is now, with the status of the change it announces.
        data = {**run_payload(runs[change.run_id]), "status": change.status}
        payload = json.loads(json.dumps({"event": event, "data": data}, cls=DjangoJSONEncoder))
        deliveries.append(
            WebhookDelivery(webhook=hook, run_id=change.run_id, event=event, payload=payload)
        )
    with transaction.atomic():
        for delivery in WebhookDelivery.objects.bulk_create(deliveries):
            dispatch.deliver_webhook(delivery.pk)


def deliver(delivery_id: str) -> str:
    """One attempt of a delivery. Each attempt is its own WebhookDelivery row (status code,
    response excerpt, attempt number, time); a failed attempt schedules the next one as a new
    row after an exponential backoff, until LOOPS_WEBHOOK_MAX_ATTEMPTS."""
    # Claim the attempt, so that a task that runs twice never posts twice.
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, delivered_at__isnull=True
    ).update(delivered_at=timezone.now())
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if not claimed or delivery is None:
        return "nothing to do"
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Loops-Webhooks/1",
        SIGNATURE_HEADER: sign(delivery.webhook.secret, body),
        "X-Loops-Event": delivery.event,
        "X-Loops-Delivery": delivery.pk,
    }
    attempt = delivery.attempt + 1
    status_code, excerpt, error = None, "", ""
    try:
        # The same byte limit and one total deadline as step.http: a receiver that answers
        # slowly or at length cannot hold the worker.
        reply = outbound.request(
            "POST", delivery.webhook.url, headers=headers, content=body,
            deadline=outbound.Deadline.after(DELIVERY_TIMEOUT_SECONDS),
        )  # fmt: skip
        status_code, excerpt = reply.status_code, reply.text[:1000]
        ok = 200 <= reply.status_code < 300
        if not ok:
            error = f"HTTP {reply.status_code}"
    except (outbound.OutboundError, httpx.HTTPError) as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"[:1000]
    final = ok or attempt >= settings.LOOPS_WEBHOOK_MAX_ATTEMPTS
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempt=attempt,
        status_code=status_code,
        response_excerpt=excerpt,
        error=error,
        delivered_at=timezone.now(),
        status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
    )
    if not final:
        delay = settings.LOOPS_WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1)
        with transaction.atomic():
            retry = WebhookDelivery.objects.create(
                webhook=delivery.webhook, run_id=delivery.run_id, event=delivery.event,
                payload=delivery.payload, attempt=attempt,
            )  # fmt: skip
            dispatch.set_timer(
                TimerKind.WEBHOOK, retry.pk, timezone.now() + timedelta(seconds=delay)
            )
    return "delivered" if ok else f"attempt {attempt} failed"


def delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a recorded delivery again (its row records the new attempt)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, delivered_at=None
    )
    dispatch.deliver_webhook(delivery.pk)
    return delivery
