"""Bulk actions by filter: cancel, resume or restart every run a runs-list filter matches.

A dry run counts the runs with the list's own filter code (runs.selectors.filter_runs), so
the count is the list's. A real one is a job (BulkJob) whose runs are fixed when it is made:
the ids of the runs the filter matches then are its items (BulkJobItem), written by one
INSERT … SELECT in the request's transaction. The job therefore acts on exactly the runs the
dry run counted: not on runs created after it, nor on another organization's, and a run that
stops matching meanwhile (a pending run that starts) is still acted on if the action applies.
A keyset over the runs (their newest (created_at, id) at creation) would have spared the
items' rows, but a filter evaluated again at each chunk would have let runs slip in and out
of the job, and `total` would not have been the number of runs the job went through.

django-q2 tasks (runs.tasks.bulk_work, queued through runs.dispatch) work through the items
in chunks, oldest run first. Each chunk is one short transaction: it locks the job, acts on
the chunk's runs, moves the job's cursor past them, adds to its counts and deletes the
chunk's items. A chunk whose worker dies, or that fails, rolls back whole, so doing it again
acts on no run twice. A task works for TASK_SECONDS at most, then hands on to a new task (in
the transaction of its last chunk), so no worker is held for long and turns to execute runs
are served in between; the job names the one task that may work on it (task_token), so a
task delivered twice, or replaced, stops at its next chunk. A job whose work has stalled
(a task lost with its worker: the ORM broker delivers it again after Q_CLUSTER's retry, the
Redis broker never) is given a new task when it is next read (bulk_job_revive).

Cancelling is set-based (runs.state.runs_cancel: one UPDATE per chunk); resuming and
restarting go through the services of a single run (runs.services), each run in a savepoint
of its own: one that cannot be acted on is counted as failed, by the error's code.

Each job is audited twice at most: `runs.bulk` when it is created (action, filter, total) and
`runs.bulk_abort` when it is aborted. Runs are not audited one by one: 100,000 entries would
bury every other action in the log, and the job's own counts say what it did.
"""

import logging
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import CharField, Q, QuerySet, Value
from django.http import Http404
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.limits import check_room
from accounts.models import ActorType, Organization
from loops_project import sql
from loops_project.errors import Conflict, DomainError, Invalid
from runs import dispatch, reactions, services, state, webhooks
from runs.models import (
    BulkAction,
    BulkJob,
    BulkJobItem,
    BulkStatus,
    Run,
    TriggerType,
)
from runs.selectors import filter_runs

logger = logging.getLogger(__name__)

# The filters of GET /api/v1/runs (and the pages' "has errors"), as runs.selectors takes them.
FILTERS = {
    "status": "status",
    "loop": "loop",
    "triggerType": "trigger_type",
    "mode": "mode",
    "batch": "batch",
    "createdAfter": "created_after",
    "createdBefore": "created_before",
    "stepStatus": "step_status",
    "triggeredBy": "triggered_by",
    "hasErrors": "has_errors",
}
# Runs per chunk: a set-based cancel of 2,000 runs is one short transaction; resume and
# restart go through a run's services one run at a time (a few statements each).
CHUNK_SIZES = {BulkAction.CANCEL: 2000, BulkAction.RESUME: 200, BulkAction.RESTART: 200}
TASK_SECONDS = 5.0  # a task hands on to a new one after this long
STALE_AFTER = timedelta(seconds=60)  # no chunk for this long: the job's task is given up
CHUNK_ATTEMPTS = 3  # a chunk that fails (a deadlock) is tried again this many times

FAILURE_TEXT = {
    "run_ended": "had already ended",
    "not_resumable": "were not failed or cancelled",
    "run_not_ended": "had not ended (only ended runs are restarted)",
    "run_gone": "no longer exist",
    "loop_paused": "belong to a paused loop",
    "no_active_version": "belong to a loop with no deployed version",
}


def clean_filter(raw: dict | None) -> dict:
    """The filter as the API names it, without empty values; an unknown name is a 422."""
    cleaned = {}
    for name, value in (raw or {}).items():
        if name not in FILTERS:
            raise Invalid(
                f"Invalid filter.{name}: not a filter of the runs list "
                f"(one of {', '.join(FILTERS)})",
                code="invalid_filter", details={"field": f"filter.{name}"},
            )  # fmt: skip
        if value not in (None, "", False):
            cleaned[name] = value
    return cleaned


def bulk_runs(*, organization: Organization, filter: dict) -> QuerySet:
    """The organization's runs that `filter` matches, found as the runs list finds them (the
    same errors for a bad value: 422 naming the field)."""
    kwargs = {FILTERS[name]: value for name, value in clean_filter(filter).items()}
    return filter_runs(Run.objects.for_org(organization), organization, **kwargs)


def bulk_count(*, organization: Organization, filter: dict) -> int:
    """A dry run: how many runs a bulk action with this filter would go through."""
    return bulk_runs(organization=organization, filter=filter).count()


def get_bulk_job_for(organization: Organization, job_id: str) -> BulkJob:
    job = BulkJob.objects.filter(organization=organization, pk=job_id).first()
    if job is None:
        raise Http404("No such bulk job.")
    return job


def _new_token() -> str:
    return uuid.uuid4().hex


def bulk_job_create(*, organization: Organization, action: str, filter: dict,
                    actor: Actor) -> BulkJob:  # fmt: skip
    """Start `action` on every run `filter` matches now, as a job that works in the background
    (the answer comes before any run is acted on). Audited as `runs.bulk`."""
    if action not in BulkAction.values:
        raise Invalid(
            f"action must be one of: {', '.join(BulkAction.values)}", code="invalid_action",
            details={"field": "action"},
        )  # fmt: skip
    filter = clean_filter(filter)
    check_room(
        BulkJob.objects.filter(organization=organization, status=BulkStatus.RUNNING),
        settings.LOOPS_MAX_BULK_JOBS_PER_ORG,
        "running bulk jobs",
        hint="wait for one to finish, or cancel it",
    )
    runs = bulk_runs(organization=organization, filter=filter)
    now = timezone.now()
    with transaction.atomic():
        job = BulkJob.objects.create(
            organization=organization, action=action, filter=filter,
            created_by_type=actor.type, created_by_name=actor.name[:150],
            created_by_user_id=int(actor.id) if actor.type == ActorType.USER else None,
            created_by_token_id=actor.id if actor.type == ActorType.TOKEN else None,
            chunk_size=CHUNK_SIZES[BulkAction(action)], task_token=_new_token(),
            heartbeat_at=now,
        )  # fmt: skip
        job.total = _snapshot(job, runs)
        if job.total == 0:
            job.status, job.completed_at, job.task_token = BulkStatus.DONE, now, ""
        job.save(update_fields=["total", "status", "completed_at", "task_token"])
        record(
            organization=organization, actor=actor, action="runs.bulk", object_type="bulk",
            object_id=job.pk, details={"action": action, "filter": filter, "total": job.total},
        )  # fmt: skip
        if job.is_running:
            dispatch.queue_bulk_work(job.pk, job.task_token)
    return job


def _snapshot(job: BulkJob, runs: QuerySet) -> int:
    """Write the job's items: the ids of `runs`, oldest first, in one INSERT … SELECT (the
    database copies them; no id comes to Python). Returns how many."""
    select, params = (
        runs.order_by("created_at", "pk")
        .values_list(Value(job.pk, output_field=CharField()), "pk")
        .query.sql_with_params()
    )
    columns = f"{sql.column(BulkJobItem, 'job')}, {sql.column(BulkJobItem, 'run_id')}"
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {sql.table(BulkJobItem)} ({columns}) {select}", params)
        return cursor.rowcount


@transaction.atomic
def bulk_job_abort(*, job: BulkJob, actor: Actor) -> BulkJob:
    """Stop a running job: its task stops at its next chunk, and the runs it had not reached
    are left as they are (those it acted on stay so). Audited as `runs.bulk_abort`."""
    job = BulkJob.objects.select_for_update().get(pk=job.pk)
    if not job.is_running:
        raise Conflict(f"This bulk job has already ended ({job.status}).", code="bulk_ended")
    job.status, job.completed_at, job.task_token = BulkStatus.ABORTED, timezone.now(), ""
    job.save(update_fields=["status", "completed_at", "task_token"])
    BulkJobItem.objects.filter(job=job).delete()
    record(
        organization=job.organization_id, actor=actor, action="runs.bulk_abort",
        object_type="bulk", object_id=job.pk,
        details={"action": job.action, "total": job.total, "done": job.done,
                 "failed": job.failed},
    )  # fmt: skip
    return job


def bulk_job_revive(job: BulkJob) -> bool:
    """Give a running job whose work has stalled (no chunk for STALE_AFTER) a new task; the
    one it had, if it ever runs, finds another task named and stops. True if revived."""
    if not job.is_running or (job.heartbeat_at and job.heartbeat_at > timezone.now() - STALE_AFTER):
        return False
    with transaction.atomic():
        locked = BulkJob.objects.select_for_update().get(pk=job.pk)
        stale = locked.heartbeat_at is None or locked.heartbeat_at <= timezone.now() - STALE_AFTER
        if not (locked.is_running and stale):
            return False
        logger.warning("bulk job %s: no progress since %s; queued again", job.pk, job.heartbeat_at)
        locked.task_token, locked.heartbeat_at = _new_token(), timezone.now()
        locked.save(update_fields=["task_token", "heartbeat_at"])
        dispatch.queue_bulk_work(locked.pk, locked.task_token)
    return True


def bulk_revive_stalled() -> int:
    """Revive every running job whose work has stalled (the workers' clock asks, so that a
    job nobody looks at still ends); how many got a new task."""
    stale = BulkJob.objects.filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lte=timezone.now() - STALE_AFTER),
        status=BulkStatus.RUNNING,
    )  # fmt: skip
    return sum(bulk_job_revive(job) for job in stale[:100])


# --- The work: chunks -----------------------------------------------------------------------


def bulk_job_work(*, job_id: str, token: str) -> None:
    """A task's share of a job: chunks for TASK_SECONDS, then a new task for the rest (queued
    in the last chunk's transaction). Stops when the job is done or aborted, or when another
    task has been named for it."""
    deadline = time.monotonic() + TASK_SECONDS
    while True:
        last = time.monotonic() >= deadline
        for attempt in range(1, CHUNK_ATTEMPTS + 1):
            try:
                more = bulk_job_chunk(job_id=job_id, token=token, hand_on=last)
                break
            except DatabaseError:
                logger.exception("bulk job %s: chunk failed (attempt %d)", job_id, attempt)
        else:
            return  # left to bulk_job_revive once the job is seen stalled
        if not more or last:
            return


def bulk_job_chunk(*, job_id: str, token: str, hand_on: bool = False) -> bool:
    """One chunk of a job, in one transaction: act on the runs of its next items, move the
    cursor past them, count, delete them. With `hand_on`, a new task is named and queued for
    what is left. Returns whether this task should go on (work is left, and it is the job's)."""
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not job.is_running or job.task_token != token:
            return False
        size = job.chunk_size
        items = list(
            BulkJobItem.objects.filter(job_id=job.pk, pk__gt=job.cursor)
            .order_by("pk")
            .values_list("pk", "run_id")[:size]
        )
        fields = ["heartbeat_at"]
        if items:
            done, failures = ACTIONS[BulkAction(job.action)](job, [run for _, run in items])
            BulkJobItem.objects.filter(job_id=job.pk, pk__lte=items[-1][0]).delete()
            job.cursor = items[-1][0]
            job.done += done
            job.failed += sum(failures.values())
            job.failures = dict(Counter(job.failures) + failures)
            fields += ["cursor", "done", "failed", "failures"]
        now = timezone.now()
        job.heartbeat_at = now
        finished = len(items) < size
        if finished:
            job.status, job.completed_at, job.task_token = BulkStatus.DONE, now, ""
            fields += ["status", "completed_at", "task_token"]
        elif hand_on:
            job.task_token = _new_token()
            fields.append("task_token")
            dispatch.queue_bulk_work(job.pk, job.task_token)
        job.save(update_fields=fields)
        return not finished and not hand_on


def _cancel(job: BulkJob, run_ids: list[str]) -> tuple[int, Counter]:
    """Cancel the chunk's runs that have not ended, and the runs they started with
    step.run_loop (as run_cancel does), in a few statements (runs.state.runs_cancel)."""
    has_webhooks = webhooks.organization_has_webhooks(job.organization_id)
    changes = state.runs_cancel(run_ids, has_webhooks)
    _react(changes, has_webhooks)
    chunk = set(run_ids)
    cancelled = sum(change.run_id in chunk for change in changes)
    failures = Counter({"run_ended": len(run_ids) - cancelled} if len(run_ids) > cancelled else {})
    # Children cancelled with their parent that are runs of the job too count as done now;
    # their later chunk would otherwise find them ended.
    below = [change.run_id for change in changes if change.run_id not in chunk]
    if below:
        met, _ = BulkJobItem.objects.filter(job_id=job.pk, run_id__in=below).delete()
        cancelled += met
    return cancelled, failures


def _react(changes: list[state.Change], has_webhooks: bool) -> None:
    """What follows the cancellations, after commit: webhooks in one go, and each parent of
    a cancelled child run carries on (runs.reactions)."""
    if has_webhooks:
        reactions.after_all(changes)
    for change in changes:
        if change.parent_step_id:
            reactions.after(replace(change, has_webhooks=False))


def _each(job: BulkJob, run_ids: list[str], act) -> tuple[int, Counter]:
    """Act on each run through its service, each in a savepoint: a run the action does not
    apply to (a DomainError) is counted by the error's code and the chunk goes on."""
    runs = Run.objects.defer("output", "error_traceback").in_bulk(run_ids)
    done, failures = 0, Counter()
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            failures["run_gone"] += 1
            continue
        try:
            with transaction.atomic():
                act(job, run)
        except DomainError as exc:
            failures[exc.code] += 1
        else:
            done += 1
    return done, failures


def _resume(job: BulkJob, run: Run) -> None:
    services.run_resume(run=run)


def _restart(job: BulkJob, run: Run) -> None:
    if not run.is_ended:
        raise Conflict("Only a run that has ended is restarted.", code="run_not_ended")
    if job.created_by_user_id:
        by = {"user": job.created_by_user, "trigger_type": TriggerType.USER}
    elif job.created_by_token_id:
        by = {"token": job.created_by_token, "trigger_type": TriggerType.API_TOKEN}
    else:
        by = {"trigger_type": TriggerType.SYSTEM}
    services.run_restart(run=run, **by)


ACTIONS = {
    BulkAction.CANCEL: _cancel,
    BulkAction.RESUME: lambda job, run_ids: _each(job, run_ids, _resume),
    BulkAction.RESTART: lambda job, run_ids: _each(job, run_ids, _restart),
}


def failure_lines(job: BulkJob) -> list[tuple[int, str]]:
    """Why runs were not acted on, in words: [(how many, reason)], most first."""
    return sorted(
        ((count, FAILURE_TEXT.get(code, code.replace("_", " "))) for code, count in
         job.failures.items()),
        reverse=True,
    )  # fmt: skip
