"""Webhooks: a signed JSON POST of the run on each status change, retried with backoff."""

import hashlib
import hmac
import json
import secrets
from datetime import timedelta

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import Schedule as QSchedule
from django_q.tasks import schedule as q_schedule

from accounts.models import Organization
from loops.models import Loop
from loops_project.errors import Invalid
from runs.engine import outbound
from runs.models import DeliveryStatus, Run, RunStatus, Webhook, WebhookDelivery
from runs.queue import enqueue_task

SIGNATURE_HEADER = "X-Loops-Signature"
DELIVER_TASK = "runs.tasks.deliver_webhook"
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


def queue_deliveries(run_id: str, status: str) -> None:
    run = Run.objects.filter(pk=run_id).only("organization_id", "loop_id").first()
    if run is None:
        return
    event = f"run.{status}"
    hooks = [
        hook
        for hook in Webhook.objects.filter(
            Q(loop__isnull=True) | Q(loop_id=run.loop_id),
            organization_id=run.organization_id,
            active=True,
        )
        if not hook.events or event in hook.events
    ]
    if not hooks:
        return
    from runs.schemas import run_payload

    run = Run.objects.select_related("loop", "version").get(pk=run_id)
    # Stored as JSON the way the API writes it (timestamps as ISO 8601 strings).
    payload = json.loads(
        json.dumps({"event": event, "data": run_payload(run)}, cls=DjangoJSONEncoder)
    )
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook, run_id=run_id, event=event, payload=payload
        )
        enqueue_task(DELIVER_TASK, delivery.pk)


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
            q_schedule(
                DELIVER_TASK, retry.pk, name=f"webhook:{retry.pk}",
                schedule_type=QSchedule.ONCE, repeats=-1,
                next_run=timezone.now() + timedelta(seconds=delay),
            )  # fmt: skip
    return "delivered" if ok else f"attempt {attempt} failed"


def delivery_redeliver(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a recorded delivery again (its row records the new attempt)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.PENDING, delivered_at=None
    )
    enqueue_task(DELIVER_TASK, delivery.pk)
    return delivery
