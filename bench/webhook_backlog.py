"""What one organization's webhook backlog costs everyone: the senders' pick of what is due.

The webhook senders of every cluster ask what is due (runs.webhooks.due_deliveries) at each
round of the clock and after each attempt, so the pick's cost is paid hundreds of times a
second while a backlog drains. One organization can build a large one: a batch of 100,000 runs
with 20 webhooks on every status makes millions of deliveries, all due at once while its
receivers are down.

In a database of its own (loops_bench_webhooks), one organization ("flood") gets a backlog of
due deliveries, grown in --steps (default 0, 10,000, 100,000, 1,000,000; written by COPY, then
ANALYZE), and another ("quiet") one due delivery, newer than the whole backlog. At each size the pick is timed, --calls (50)
times as the senders make it (limit 8, 4 per organization), and its median and p95 printed next
to the same pick with no backlog, measured in the same run. The quiet organization's delivery
must be in every answer. Target: the pick does not grow with the backlog (ratio ~1).

    .venv/bin/python bench/webhook_backlog.py [--steps 0,10000,100000,1000000] [--calls 50]
"""

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

DATABASE = "loops_bench_webhooks"


def hook_of(slug: str):
    from accounts.models import Organization
    from accounts.services import organization_create
    from runs.models import Webhook

    org = Organization.objects.filter(slug=slug).first() or organization_create(slug=slug)
    hook = Webhook.objects.filter(organization=org).first()
    if hook is None:
        hook = Webhook.objects.create(organization=org, url="http://127.0.0.1:9/", secret="bench")  # noqa: S106
    return org, hook


def backlog(hook, count: int, start: datetime | None = None) -> None:
    """`count` due deliveries of `hook`, due from `start` on (an hour ago), by COPY."""
    from django.db import connection

    from loops_project import ids
    from runs.models import WebhookDelivery

    fields = list(WebhookDelivery._meta.concrete_fields)
    columns = ", ".join(f'"{f.column}"' for f in fields)
    start = start or datetime.now(UTC) - timedelta(hours=1)
    payload = json.dumps({"event": "run.succeeded", "data": {}})
    values = {"webhook_id": hook.pk, "run_id": None, "event": "run.succeeded",
              "payload": payload, "status": "pending", "queue": "loops",
              "organization_id": hook.organization_id}  # fmt: skip
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {WebhookDelivery._meta.db_table} ({columns}) FROM STDIN") as copy:
            for n in range(count):
                due = start + timedelta(microseconds=n)
                row = []
                for field in fields:
                    if field.attname == "id":
                        row.append(ids.delivery_id())
                    elif field.attname in ("created_at", "next_attempt_at"):
                        row.append(due)
                    elif field.attname in values:
                        row.append(values[field.attname])
                    else:
                        row.append(field.get_default())
                copy.write_row(row)
        cursor.execute(f"ANALYZE {WebhookDelivery._meta.db_table}")


def pick_times(calls: int, quiet_org) -> list[float]:
    from runs import webhooks

    times = []
    for _ in range(calls):
        started = time.perf_counter()
        due = webhooks.due_deliveries(limit=8, per_organization=4)
        times.append((time.perf_counter() - started) * 1000)
        assert any(org == quiet_org.pk for _, org in due), "the quiet organization waited"
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="0,10000,100000,1000000")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    common.setup(DATABASE)
    from django.db import connection

    from runs.models import WebhookDelivery

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {WebhookDelivery._meta.db_table}")
    _, flood = hook_of("flood")
    quiet_org, quiet = hook_of("quiet")
    sizes = [int(s) for s in args.steps.split(",")]
    print(f"webhook senders' pick, {args.calls} calls per size (limit 8, 4 per organization)")
    print(f"{'backlog':>10}  {'p50 ms':>8}  {'p95 ms':>8}  {'p50 / no backlog':>17}")
    made, anchor = 0, None
    for size in sizes:
        backlog(flood, size - made)
        made = size
        # The quiet organization's delivery is newer than the whole backlog.
        WebhookDelivery.objects.filter(webhook=quiet).delete()
        backlog(quiet, 1, start=datetime.now(UTC))
        times = pick_times(args.calls, quiet_org)
        p50, p95 = statistics.median(times), common.percentile(times, 95)
        anchor = anchor or p50
        print(f"{size:>10,}  {p50:>8.2f}  {p95:>8.2f}  {p50 / anchor:>16.1f}x", flush=True)


if __name__ == "__main__":
    main()
