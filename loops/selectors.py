"""Reads behind the loop pages: the runs chart, duration percentiles, the loops list."""

from datetime import date, timedelta

from django.db.models import Count, Max, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from loops.models import Loop
from runs.models import Run, RunMode, RunStatus

CHART_STATUSES = [
    RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED,
    RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PENDING,
]  # fmt: skip
# Percentiles are computed in Python (SQLite has no percentile function) over a bounded
# window of the most recent finished runs, so the cost stays flat however many runs exist.
PERCENTILE_WINDOW = 1000


def loops_with_stats(org: Organization) -> QuerySet:
    day_ago = timezone.now() - timedelta(days=1)
    return (
        Loop.objects.for_org(org)
        .select_related("active_version")
        .annotate(
            runs_24h=Count("runs", filter=Q(runs__created_at__gte=day_ago)),
            failed_24h=Count(
                "runs", filter=Q(runs__created_at__gte=day_ago, runs__status=RunStatus.FAILED)
            ),
            last_run_at=Max("runs__created_at"),
        )
    )


def runs_per_day(loop: Loop, *, days: int = 14) -> dict:
    """Runs per day and status over the last `days` days (today included), oldest first."""
    today = timezone.localdate()
    first = today - timedelta(days=days - 1)
    rows = (
        Run.objects.filter(loop=loop, mode=RunMode.LIVE, created_at__date__gte=first)
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("pk"))
    )
    counts: dict[date, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["day"], {})[row["status"]] = row["n"]
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        by_status = counts.get(day, {})
        result.append({
            "day": day,
            "total": sum(by_status.values()),
            "segments": [(s.value, by_status[s.value]) for s in CHART_STATUSES
                         if by_status.get(s.value)],
        })  # fmt: skip
    peak = max((d["total"] for d in result), default=0)
    for d in result:
        d["height"] = round(100 * d["total"] / peak) if peak else 0
        d["segments"] = [(status, n, round(100 * n / d["total"], 2)) for status, n in d["segments"]]
    return {"days": result, "peak": peak, "total": sum(d["total"] for d in result)}


def percentile(sorted_values: list[int], p: float) -> int | None:
    """Nearest-rank percentile of an ascending list; None while there are too few values for
    it to mean anything (a p95 needs 20, a p99 100: fewer and it is just the slowest run)."""
    if not sorted_values or len(sorted_values) * (100 - p) < 100:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


def duration_percentiles(loop: Loop, *, window: int = PERCENTILE_WINDOW) -> dict:
    values = sorted(
        Run.objects.filter(
            loop=loop, mode=RunMode.LIVE, duration_ms__isnull=False, status=RunStatus.SUCCEEDED
        )
        .order_by("-created_at")
        .values_list("duration_ms", flat=True)[:window]
    )
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }
