"""Every change of a run's or a step's status, and who may make it.

A run is owned by the execution that claimed it: status `running` and that execution's id.
Every write an execution makes is conditional on still owning the run (`Owner`), so a run that
was cancelled, or taken over after its worker died, is never written by a stale execution.
A change returns what it was (`Change`); the caller hands it to runs.reactions, which does what
follows (a parent woken, webhooks) after the transaction commits. Nothing here sends anything;
a run put back in the queue tells idle workers through runs.dispatch.

Runs start in fair turns (`claim_next`): of the runs that may start (pending, within their
loop's and their organization's concurrency limits), the one of the organization with the
fewest runs going, then the one that has waited longest for a turn; within it, the loop the
same way; within the loop, the oldest run. Waiting runs hold no slot.
"""

# ruff: noqa: S608 - table and column names from the models; every value is a parameter

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Organization
from loops.models import Loop
from loops_project import sql
from runs import dispatch
from runs.models import (
    CANCELLED_STEP_ERROR,
    LogEntry,
    LogLevel,
    Run,
    RunStatus,
    ScanRequest,
    ScanStatus,
    Step,
    StepKind,
    StepStatus,
    TimerKind,
    Turn,
    Webhook,
)

WORKER_LOST = "WorkerLost"  # the error of a run that lost LOOPS_MAX_LOST_EXECUTIONS workers
CLAIM_LOCK = 7_270_011  # pg_advisory_xact_lock key: one claim at a time, so limits hold exactly
# The claims' lock, taken first in the claim's transaction (its snapshot is taken after it). The
# claim commits without waiting for the WAL flush: the run's first durable write after it
# (a step's end, the run's end) flushes it too, and a claim lost with the database's last
# moments only makes the run pending again (its execution, no longer the owner, stops).
_CLAIM_LOCK_SQL = "SELECT pg_advisory_xact_lock(%s), set_config('synchronous_commit', 'off', true)"


def lease_expiry(now: datetime) -> datetime:
    """A running run's lease; its worker renews it (runs.engine.heartbeat) until it ends."""
    return now + timedelta(seconds=settings.LOOPS_LEASE_SECONDS)


def duration_ms(started_at: datetime | None, now: datetime) -> int:
    return max(int((now - (started_at or now)).total_seconds() * 1000), 0)


@dataclass(frozen=True)
class Owner:
    """The execution that holds a run."""

    run_id: str
    execution_id: str

    def runs(self):
        return Run.objects.filter(
            pk=self.run_id, status=RunStatus.RUNNING, execution_id=self.execution_id
        )

    def holds(self) -> bool:
        return self.runs().exists()

    def params(self) -> list:
        return [self.run_id, self.execution_id]


def lock_run(run_id: str) -> Run | None:
    """The run's row, locked until the transaction ends: whatever resolves a wait or changes
    the run's status takes it first, so two of them never miss each other's write."""
    return Run.objects.select_for_update().filter(pk=run_id).first()


# --- Claiming ------------------------------------------------------------------------------------


@dataclass
class Claim:
    """A run an execution now owns, with what the execution needs to know of it."""

    run: Run
    owner: Owner
    has_webhooks: bool

    @property
    def change(self) -> "Change":
        return change_of(self.run, RunStatus.RUNNING, self.has_webhooks)


def claim_next() -> Claim | None:
    """Take the run that should start next (see the module's docstring), or None. Claims take
    turns (an advisory lock on PostgreSQL; SQLite has one writer at a time), so limits hold
    exactly; on PostgreSQL the choice, the claim and the turns served are one statement, sent
    with the lock in one round trip."""
    owner_id = uuid.uuid4().hex
    if connection.vendor == "postgresql":
        now = timezone.now()
        row = sql.fetch_one_in_transaction(
            (_CLAIM_LOCK_SQL, [CLAIM_LOCK]),
            (_claim_next_sql(), [*_choice_params(), owner_id, lease_expiry(now), now, now]),
        )
        return _claim_of(row, owner_id)
    with transaction.atomic():
        chosen = sql.fetch_one(_choice_sql(), _choice_params())
        if chosen is None:
            return None
        run_id, loop_id, organization_id = chosen
        claim = _take(run_id, or_expired=False)
        if claim is not None:
            now = timezone.now()
            sql.execute(_turn_sql(), [organization_id, now, loop_id, now])
    return claim


def claim(run_id: str) -> Claim | None:
    """Take this run, if it is pending or its worker died (lease expired)."""
    return _take(run_id, or_expired=True)


RUN_FIELDS = sql.fields_of(Run)


def _take(run_id: str, *, or_expired: bool) -> Claim | None:
    """One statement: the run becomes this execution's, and comes back whole, with whether
    its organization has webhooks (so that nothing needs asking again)."""
    now = timezone.now()
    owner_id = uuid.uuid4().hex
    row = sql.fetch_one(
        _take_sql(or_expired),
        [owner_id, lease_expiry(now), now, run_id, *([now] if or_expired else [])],
    )
    return _claim_of(row, owner_id)


def _claim_of(row: tuple | None, owner_id: str) -> Claim | None:
    if row is None:
        return None
    run = sql.instance(Run, RUN_FIELDS, row[:-1])
    return Claim(run=run, owner=Owner(run.pk, owner_id), has_webhooks=bool(row[-1]))


def _claim_set(started: str = "%s") -> str:
    c = lambda name: sql.column(Run, name)  # noqa: E731
    return (
        f"{c('status')} = '{RunStatus.RUNNING}', {c('execution_id')} = %s, "
        f"{c('lease_expires_at')} = %s, {c('executions')} = {c('executions')} + 1, "
        f"{c('started_at')} = COALESCE({c('started_at')}, {started}), {c('pending')} = NULL"
    )


def _claim_returning() -> str:
    run, hook = sql.table(Run), sql.table(Webhook)
    columns = ", ".join(f"{run}.{sql.quote(f.column)}" for f in RUN_FIELDS)
    return (
        f"{columns}, EXISTS (SELECT 1 FROM {hook} w "
        f"WHERE w.{sql.column(Webhook, 'organization')} = {run}.{sql.column(Run, 'organization')} "
        f"AND w.{sql.column(Webhook, 'active')})"
    )


@cache
def _take_sql(or_expired: bool) -> str:
    c = lambda name: sql.column(Run, name)  # noqa: E731
    condition = f"{c('status')} = '{RunStatus.PENDING}'"
    if or_expired:
        condition = (
            f"({condition} OR ({c('status')} = '{RunStatus.RUNNING}' "
            f"AND {c('lease_expires_at')} < %s))"
        )
    return (
        f"UPDATE {sql.table(Run)} SET {_claim_set()} WHERE {c('id')} = %s AND {condition} "
        f"RETURNING {_claim_returning()}"
    )


@cache
def _claim_next_sql() -> str:
    """PostgreSQL: the choice, the claim of the chosen run and the turns it serves, in one
    statement (data-modifying CTEs)."""
    c = lambda name: sql.column(Run, name)  # noqa: E731
    run, turn = sql.table(Run), sql.table(Turn)
    scope, at = sql.column(Turn, "scope"), sql.column(Turn, "claimed_at")
    choice = _choice_sql().strip()
    choice_body, choice_select = choice.rsplit("SELECT run_id, loop_id, organization_id", 1)
    return (
        f"{choice_body.rstrip()}, "
        f"chosen AS (SELECT run_id, loop_id, organization_id {choice_select}), "
        # Started at the database's clock while the statement runs: after every run end its
        # snapshot sees (a limit's next run never starts before the end it waited for).
        f"taken AS (UPDATE {run} SET {_claim_set('clock_timestamp()')} FROM chosen "
        f"WHERE {run}.{c('id')} = chosen.run_id AND {run}.{c('status')} = '{RunStatus.PENDING}' "
        f"RETURNING {_claim_returning()}), "
        f"served AS (INSERT INTO {turn} ({scope}, {at}) "
        f"SELECT organization_id, CAST(%s AS TIMESTAMPTZ) FROM chosen "
        f"WHERE EXISTS (SELECT 1 FROM taken) "
        f"UNION ALL SELECT loop_id, CAST(%s AS TIMESTAMPTZ) FROM chosen "
        f"WHERE EXISTS (SELECT 1 FROM taken) "
        f"ON CONFLICT ({scope}) DO UPDATE SET {at} = excluded.{at}) "
        f"SELECT * FROM taken"
    )


def _choice_params() -> list:
    return [dispatch.queue_key(), settings.LOOPS_ORG_CONCURRENCY_LIMIT or 0]


@cache
def _choice_sql() -> str:
    """The run that should start next, of this cluster's queue: the oldest pending run of each
    loop, found by a loose scan of the partial index run_pending (queue, loop, created_at, id);
    for each, the runs going in its loop and in its organization, and when each was last
    served; the limits applied; the fairest first.

    The scan orders by loop, then age, and steps from one loop to the next with `loop >`: an
    order only run_pending gives, so no planner, however stale its statistics, walks the
    loop's whole history in run_loop_created instead (it did, mid-drain, after a batch)."""
    run, loop, org = sql.table(Run), sql.table(Loop), sql.table(Organization)
    r = lambda name: sql.column(Run, name)  # noqa: E731
    lc = lambda name: sql.column(Loop, name)  # noqa: E731
    pending = f"{r('status')} = '{RunStatus.PENDING}' AND {r('queue')} = (SELECT queue FROM p)"
    running = f"{r('status')} = '{RunStatus.RUNNING}'"
    loop_id, org_id = r("loop"), r("organization")
    in_order = f"ORDER BY {loop_id}, {r('created_at')}, {r('id')} LIMIT 1"
    return f"""
WITH RECURSIVE p(queue, org_limit) AS (SELECT CAST(%s AS VARCHAR(100)), CAST(%s AS INTEGER)),
waiting(run_id) AS (
    SELECT * FROM (SELECT {r("id")} FROM {run} WHERE {pending} {in_order}) AS s
    UNION ALL
    SELECT (SELECT {r("id")} FROM {run} WHERE {pending} AND {loop_id} >
                (SELECT w.{loop_id} FROM {run} w WHERE w.{r("id")} = waiting.run_id)
            {in_order})
    FROM waiting WHERE waiting.run_id IS NOT NULL
),
going AS MATERIALIZED (
    SELECT {org_id} AS organization_id, {loop_id} AS loop_id, COUNT(*) AS n
    FROM {run} WHERE {running} GROUP BY {org_id}, {loop_id}
),
org_going AS MATERIALIZED (
    SELECT organization_id, SUM(n) AS n FROM going GROUP BY organization_id
),
heads AS MATERIALIZED (
    SELECT run_id,
        (SELECT {loop_id} FROM {run} WHERE {r("id")} = waiting.run_id) AS loop_id,
        (SELECT {r("created_at")} FROM {run} WHERE {r("id")} = waiting.run_id) AS run_created
    FROM waiting WHERE run_id IS NOT NULL
),
candidates AS MATERIALIZED (
    SELECT heads.run_id, heads.loop_id, heads.run_created,
        l.{lc("organization")} AS organization_id,
        COALESCE(og.n, 0) AS org_going, COALESCE(lg.n, 0) AS loop_going,
        l.{lc("concurrency_limit")} AS loop_limit,
        COALESCE(o.{sql.column(Organization, "concurrency_limit")}, (SELECT org_limit FROM p))
            AS org_limit,
        (SELECT t.{sql.column(Turn, "claimed_at")} FROM {sql.table(Turn)} t
         WHERE t.{sql.column(Turn, "scope")} = l.{lc("organization")}) AS org_turn,
        (SELECT t.{sql.column(Turn, "claimed_at")} FROM {sql.table(Turn)} t
         WHERE t.{sql.column(Turn, "scope")} = heads.loop_id) AS loop_turn
    FROM heads
    JOIN {loop} l ON l.{lc("id")} = heads.loop_id
    JOIN {org} o ON o.{sql.column(Organization, "id")} = l.{lc("organization")}
    LEFT JOIN org_going og ON og.organization_id = l.{lc("organization")}
    LEFT JOIN going lg ON lg.loop_id = heads.loop_id
)
SELECT run_id, loop_id, organization_id FROM candidates
WHERE (loop_limit IS NULL OR loop_going < loop_limit)
  AND (org_limit <= 0 OR org_going < org_limit)
ORDER BY org_going, org_turn IS NOT NULL, org_turn, loop_going, loop_turn IS NOT NULL, loop_turn,
    run_created
LIMIT 1
"""


@cache
def _turn_sql() -> str:
    turn = sql.table(Turn)
    scope, at = sql.column(Turn, "scope"), sql.column(Turn, "claimed_at")
    return (
        f"INSERT INTO {turn} ({scope}, {at}) VALUES (%s, %s), (%s, %s) "
        f"ON CONFLICT ({scope}) DO UPDATE SET {at} = excluded.{at}"
    )


def renew_lease(owner: Owner) -> bool:
    """The owning execution is alive: its lease runs on. False if it no longer owns the run."""
    return bool(owner.runs().update(lease_expires_at=lease_expiry(timezone.now())))


def release_expired(limit: int = 500) -> list["Change"]:
    """Runs whose worker died (lease expired) go back to pending, to be claimed again; the
    step that was in progress is re-run by the next execution, finished ones are replayed. A
    run that has lost LOOPS_MAX_LOST_EXECUTIONS workers so fails instead (`WorkerLost`), with
    its step in progress. Each loss is written in the run's log. Only the runs of this
    cluster's queue (LOOPS_QUEUE): its clusters' settings apply to them."""
    now = timezone.now()
    expired = Run.objects.filter(
        status=RunStatus.RUNNING, lease_expires_at__lt=now, queue=dispatch.queue_key()
    )
    fields = ("organization_id", "loop_id", "parent_step_id", "started_at", "lost_executions")
    expired = list(expired.only(*fields)[:limit])
    released = []
    for run in expired:
        with transaction.atomic():
            change = _release(run, now)
        if change is not None:
            released.append(change)
    return released


def _release(run: Run, now: datetime) -> "Change | None":
    lost = run.lost_executions + 1
    limit = settings.LOOPS_MAX_LOST_EXECUTIONS
    expired = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, lease_expires_at__lt=now)
    if lost < limit:
        if not expired.update(status=RunStatus.PENDING, execution_id="", lease_expires_at=None,
                              lost_executions=lost):  # fmt: skip
            return None
        _log_loss(run, now, LogLevel.WARNING, f"The worker running this run stopped "
                  f"(lost {lost} of {limit} times); the run is queued again")  # fmt: skip
        dispatch.wake_workers()
        return change_of(run, RunStatus.PENDING)
    step = Step.objects.filter(run_id=run.pk, status=StepStatus.RUNNING).only("name").first()
    message = (
        f"The worker running this run stopped {lost} times (LOOPS_MAX_LOST_EXECUTIONS); "
        "it is not run again"
    )
    if not expired.update(
        status=RunStatus.FAILED, completed_at=now, duration_ms=duration_ms(run.started_at, now),
        lease_expires_at=None, pending=None, lost_executions=lost,
        error_message=f"Step '{step.name}' failed: {message}" if step else message,
        error_type=WORKER_LOST, error_step=step.name if step else "", error_traceback="",
    ):  # fmt: skip
        return None
    error = {"message": message, "type": WORKER_LOST}
    Step.objects.filter(run_id=run.pk, status=StepStatus.RUNNING).update(
        status=StepStatus.FAILED, error=error, finished_at=now
    )
    _log_loss(run, now, LogLevel.ERROR, message, step)
    return change_of(run, RunStatus.FAILED)


def _log_loss(run: Run, now: datetime, level: str, message: str, step: Step | None = None):
    LogEntry.objects.create(run_id=run.pk, loop_id=run.loop_id, step=step, level=level,
                            message=message, time=now)  # fmt: skip


# --- What a change was, for runs.reactions -------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A run's new status, with what its reactions need (so they ask nothing again)."""

    run_id: str
    organization_id: str
    loop_id: str
    parent_step_id: str | None
    status: str
    has_webhooks: bool | None = None  # None: not known, reactions look it up


def change_of(run: Run, status: str, has_webhooks: bool | None = None) -> Change:
    return Change(run.pk, run.organization_id, run.loop_id, run.parent_step_id, status,
                  has_webhooks)  # fmt: skip


# --- New runs ----------------------------------------------------------------------------------


def run_insert(run: Run) -> Change:
    """A new run, pending: saved, and idle workers told. With the ORM broker on PostgreSQL the
    run and its turn are one statement (one round trip, and they commit together)."""
    run.queue = dispatch.queue_key()
    if connection.vendor == "postgresql" and dispatch.orm_broker_in_database():
        statement, params = sql.insert_statement(run)
        sql.execute(
            f"WITH i AS ({statement}) {dispatch.turn_statement()}",
            [*params, *dispatch.turn_params(timezone.now())],
        )
        sql.saved(run)
    else:
        sql.insert(run)
        dispatch.wake_workers()
    return change_of(run, RunStatus.PENDING)


# --- Steps ---------------------------------------------------------------------------------------


@cache
def _step_insert_sql(columns: tuple[str, ...], vendor: str, relaxed: bool) -> str:
    """A step's row, inserted only while its execution owns the run. The start of a step is
    committed without waiting for the WAL flush (PostgreSQL): losing it in a crash loses
    nothing, the step had not finished; its end is committed durably."""
    fields = [Step._meta.get_field(name) for name in columns]
    names = ", ".join(sql.quote(field.column) for field in fields)
    values = ", ".join(sql.cast(field) for field in fields)
    owned = _owned_sql()
    if vendor == "postgresql" and relaxed:
        return (
            "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"INSERT INTO {sql.table(Step)} ({names}) SELECT {values} FROM durability "
            f"WHERE {owned}"
        )
    return f"INSERT INTO {sql.table(Step)} ({names}) SELECT {values} WHERE {owned}"


@cache
def _owned_sql() -> str:
    return f"EXISTS (SELECT 1 FROM {sql.table(Run)} WHERE {_owner_sql()})"


@cache
def _step_update_sql(columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{sql.column(Step, name)} = %s" for name in columns)
    return (
        f"UPDATE {sql.table(Step)} SET {assignments} "
        f"WHERE {sql.column(Step, 'id')} = %s AND {_owned_sql()}"
    )


def _step_params(values: dict, columns: tuple[str, ...]) -> list:
    return [sql.prep(Step._meta.get_field(name), values[name]) for name in columns]


@dataclass(frozen=True)
class StepRow:
    """A new step's row (its start, or its start and its end at once)."""

    row: dict

    @property
    def status(self) -> str:
        return self.row["status"]

    def statement(self, owner: Owner, *, relaxed: bool = False) -> tuple[str, list]:
        columns = tuple(name for name, value in self.row.items() if value is not None)
        statement = _step_insert_sql(columns, connection.vendor, relaxed)
        return statement, [*_step_params(self.row, columns), *owner.params()]


@dataclass(frozen=True)
class StepEnd:
    """A step's end (or any change of an existing step's row)."""

    step_id: str
    values: dict

    @property
    def status(self) -> str:
        return self.values["status"]

    def statement(self, owner: Owner, *, relaxed: bool = False) -> tuple[str, list]:
        columns = tuple(self.values)
        params = [*_step_params(self.values, columns), self.step_id, *owner.params()]
        return _step_update_sql(columns), params


StepWrite = StepRow | StepEnd


def step_write(owner: Owner, write: StepWrite, *, then: StepWrite | None = None) -> bool:
    """Write a step's row or its change, after `then`: a write the execution held back to send
    with this one (on PostgreSQL one statement, so one round trip and one commit). False if
    the run is no longer the execution's. A step's start alone commits without waiting for
    the WAL flush (_step_insert_sql): losing it in a crash loses nothing, the step had not
    finished. Anything else commits durably."""
    relaxed = (
        then is None
        and isinstance(write, StepRow)
        and write.status == StepStatus.RUNNING
        and not connection.in_atomic_block
    )
    return _after(owner, then, *write.statement(owner, relaxed=relaxed)) == 1


def _after(owner: Owner, held: StepWrite | None, statement: str, params: list) -> int:
    """Run `statement` after the `held` write (one statement on PostgreSQL); its row count."""
    if held is None:
        return sql.execute(statement, params)
    if connection.vendor != "postgresql":  # no data-modifying CTEs: two statements
        step_write(owner, held)
        return sql.execute(statement, params)
    first, first_params = held.statement(owner)
    return sql.execute(f"WITH held AS ({first}) {statement}", [*first_params, *params])


def step_insert(owner: Owner, row: dict) -> bool:
    """A new step (running, waiting, or already ended); False if the run is no longer the
    execution's."""
    return step_write(owner, StepRow(row))


def step_update(owner: Owner, step_id: str, values: dict) -> bool:
    """A step of the execution's run changes (it starts again, ends, waits); False if the run
    is no longer the execution's."""
    return step_write(owner, StepEnd(step_id, values))


def step_wake_at(step_id: str, when: datetime, owner: Owner | None = None) -> None:
    """The waiting step ends (sleep) or times out at `when`: a timer of the clock's. Written
    only while `owner` holds the step's run; without one, the caller holds the run's lock."""
    steps = Step.objects.filter(pk=step_id)
    if owner is not None:
        steps = steps.filter(run__in=owner.runs())
    if steps.update(wake_at=when):
        dispatch.set_timer(TimerKind.STEP, step_id, when)


def step_resolve(step: Step, *, status: str, output=None, error=None) -> Change | None:
    """Close a waiting step (an answer, an event, a scan, a child's end, a timer) and wake its
    run when nothing else keeps it waiting. Call inside a transaction holding the run's lock."""
    now = timezone.now()
    closed = Step.objects.filter(pk=step.pk, status=StepStatus.WAITING).update(
        status=status,
        output=output,
        error=error,
        finished_at=now,
        duration_ms=duration_ms(step.started_at, now),
        attempts=1,
    )
    if not closed:
        return None
    dispatch.clear_timer(TimerKind.STEP, step.pk)
    if step.kind in (StepKind.INPUT, StepKind.APPROVAL):  # its reminder or escalation
        dispatch.clear_timer(TimerKind.APPROVAL, step.pk)
    return run_wake(step.run_id)


# --- The ends of an execution --------------------------------------------------------------------


def run_end(owner: Owner, run: Run, status: str, *, cpu_ms: int, total_steps: int,
            stored: int, then: StepWrite | None = None, **fields) -> Change | None:  # fmt: skip
    """The execution ends the run (succeeded or failed), recording what it cost, after the
    step write it held back (`then`, see step_write). None when the run is no longer the
    execution's (cancelled, taken over): then only the cost."""
    now = timezone.now()
    values = {"status": status, "completed_at": now,
              "duration_ms": duration_ms(run.started_at, now), "lease_expires_at": None,
              "pending": None, "total_steps": total_steps, **fields}  # fmt: skip
    columns = tuple(values)
    params = [sql.prep(Run._meta.get_field(name), values[name]) for name in columns]
    ended = _after(owner, then, _run_end_sql(columns), [*params, cpu_ms, stored, *owner.params()])
    if not ended:
        Run.objects.filter(pk=owner.run_id).update(
            cpu_time_ms=F("cpu_time_ms") + cpu_ms, total_steps=total_steps,
            stored_bytes=F("stored_bytes") + stored,
        )  # fmt: skip
        return None
    return change_of(run, status)


@cache
def _run_end_sql(columns: tuple[str, ...]) -> str:
    c = lambda name: sql.column(Run, name)  # noqa: E731
    assignments = ", ".join(f"{c(name)} = %s" for name in columns)
    return (
        f"UPDATE {sql.table(Run)} SET {assignments}, "
        f"{c('cpu_time_ms')} = {c('cpu_time_ms')} + %s, "
        f"{c('stored_bytes')} = {c('stored_bytes')} + %s WHERE {_owner_sql()}"
    )


@cache
def _owner_sql() -> str:
    """The run, while this execution owns it (params: Owner.params())."""
    c = lambda name: sql.column(Run, name)  # noqa: E731
    return f"{c('id')} = %s AND {c('status')} = '{RunStatus.RUNNING}' AND {c('execution_id')} = %s"


def steps_in_progress_fail(owner: Owner, error: dict) -> None:
    """The step in progress when an execution died fails with the run's error, while the
    execution still owns the run (a run taken over is its new execution's)."""
    Step.objects.filter(
        run_id=owner.run_id, status=StepStatus.RUNNING, run__in=owner.runs()
    ).update(status=StepStatus.FAILED, error=error, finished_at=timezone.now())


@transaction.atomic
def run_suspend(owner: Owner, run: Run, *, cpu_ms: int, total_steps: int,
                stored: int) -> Change | None:  # fmt: skip
    """The program waits. The run goes to `waiting` (no worker held) unless what it waits for
    has arrived meanwhile; then it goes straight back to the queue."""
    locked = owner.runs().select_for_update().first()
    cost = {"cpu_time_ms": F("cpu_time_ms") + cpu_ms, "total_steps": total_steps,
            "stored_bytes": F("stored_bytes") + stored}  # fmt: skip
    if locked is None:
        Run.objects.filter(pk=owner.run_id).update(**cost)
        return None
    if Step.objects.filter(run_id=owner.run_id, status=StepStatus.WAITING).exists():
        Run.objects.filter(pk=owner.run_id).update(
            status=RunStatus.WAITING, lease_expires_at=None, **cost
        )
        return change_of(run, RunStatus.WAITING)
    Run.objects.filter(pk=owner.run_id).update(**cost)
    return _requeue(locked)


def _requeue(run: Run) -> Change:
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.PENDING, pending=None, lease_expires_at=None, execution_id=""
    )
    dispatch.wake_workers()
    return change_of(run, RunStatus.PENDING)


def run_wake(run_id: str) -> Change | None:
    """Queue the next execution of a waiting run once nothing it waits for is open. Call
    inside a transaction that holds the run's lock."""
    run = Run.objects.filter(pk=run_id, status=RunStatus.WAITING).first()
    if run is None or Step.objects.filter(run_id=run_id, status=StepStatus.WAITING).exists():
        return None
    return _requeue(run)


def run_waits_for(run_id: str, pending: dict, owner: Owner | None = None) -> None:
    """What a run waits for (API: pending). Written only while `owner` holds the run; without
    one, the caller holds the lock of the waiting run."""
    runs = (
        owner.runs()
        if owner is not None
        else Run.objects.filter(pk=run_id, status=RunStatus.WAITING)
    )
    runs.update(pending=pending)


# --- Operators' changes ----------------------------------------------------------------------


def run_cancel(run: Run) -> Change:
    """Cancel a pending, running or waiting run (locked by the caller). An execution in
    flight stops at its next step boundary: it no longer owns the run."""
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.CANCELLED,
        completed_at=now,
        duration_ms=duration_ms(run.started_at, now),
        lease_expires_at=None,
    )
    waiting = list(
        Step.objects.filter(
            run=run, status__in=[StepStatus.WAITING, StepStatus.RUNNING]
        ).values_list("pk", flat=True)
    )
    Step.objects.filter(pk__in=waiting).update(
        status=StepStatus.FAILED, error=CANCELLED_STEP_ERROR, finished_at=now
    )
    for step_id in waiting:
        dispatch.clear_timer(TimerKind.STEP, step_id)
        dispatch.clear_timer(TimerKind.APPROVAL, step_id)
    ScanRequest.objects.filter(run=run, status=ScanStatus.PENDING).update(status=ScanStatus.EXPIRED)
    return change_of(run, RunStatus.CANCELLED)


NOT_ENDED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)


def runs_cancel(run_ids: list[str], has_webhooks: bool | None = None) -> list[Change]:
    """Cancel those of `run_ids` that have not ended, and the runs they started with
    step.run_loop that have not ended (as runs.services.run_cancel cancels one), in a few
    statements whatever their number (bulk actions): the runs in one UPDATE, which locks each
    row and skips one that ended meanwhile; then their steps in progress or waiting end as
    cancelled, those steps' timers go and their pending scans expire; then the same for the
    children the failed steps waited for, level by level. An execution in flight stops at its
    next step boundary. Call inside a transaction; returns the runs cancelled."""
    if not run_ids:
        return []
    now = sql.prep(Run._meta.get_field("completed_at"), timezone.now())
    r = lambda name: sql.column(Run, name)  # noqa: E731
    started = r("started_at")
    if connection.vendor == "postgresql":
        elapsed = f"GREATEST(FLOOR(EXTRACT(EPOCH FROM (%s - {started})) * 1000), 0)"
    else:
        elapsed = f"MAX(CAST((julianday(%s) - julianday({started})) * 86400000 AS INTEGER), 0)"
    among, ids = _among(r("id"), run_ids)
    rows = _fetch_all(
        f"UPDATE {sql.table(Run)} SET {r('status')} = %s, {r('completed_at')} = %s, "
        f"{r('duration_ms')} = CASE WHEN {started} IS NULL THEN 0 ELSE {elapsed} END, "
        f"{r('lease_expires_at')} = NULL WHERE {among} AND {r('status')} IN (%s, %s, %s) "
        f"RETURNING {r('id')}, {r('organization')}, {r('loop')}, {r('parent_step')}",
        [RunStatus.CANCELLED, now, now, *ids, *NOT_ENDED],
    )
    cancelled = [row[0] for row in rows]
    step_ids: list[str] = []
    if cancelled:
        s = lambda name: sql.column(Step, name)  # noqa: E731
        among, ids = _among(s("run"), cancelled)
        error = sql.prep(Step._meta.get_field("error"), CANCELLED_STEP_ERROR)
        steps = _fetch_all(
            f"UPDATE {sql.table(Step)} SET {s('status')} = %s, {s('error')} = %s, "
            f"{s('finished_at')} = %s WHERE {among} AND {s('status')} IN (%s, %s) "
            f"RETURNING {s('id')}",
            [StepStatus.FAILED, error, now, *ids, StepStatus.WAITING, StepStatus.RUNNING],
        )
        step_ids = [row[0] for row in steps]
        dispatch.clear_timers(step_ids)
        among, ids = _among(sql.column(ScanRequest, "run"), cancelled)
        status = sql.column(ScanRequest, "status")
        _fetch_all(
            f"UPDATE {sql.table(ScanRequest)} SET {status} = %s WHERE {among} AND {status} = %s",
            [ScanStatus.EXPIRED, *ids, ScanStatus.PENDING],
        )
    changes = [Change(run_id, org_id, loop_id, parent_step_id, RunStatus.CANCELLED, has_webhooks)
               for run_id, org_id, loop_id, parent_step_id in rows]  # fmt: skip
    if cancelled and step_ids:
        # A child run that has not ended is waited for by a step of its parent (step.run_loop
        # waits): one of the steps just failed. Parents before children, as run_cancel.
        among, ids = _among(r("parent_step"), step_ids)
        children = _fetch_all(
            f"SELECT {r('id')} FROM {sql.table(Run)} WHERE {among} AND {r('status')} IN "
            "(%s, %s, %s)", [*ids, *NOT_ENDED],
        )  # fmt: skip
        changes += runs_cancel([row[0] for row in children], has_webhooks)
    return changes


def _among(column: str, values: list) -> tuple[str, list]:
    """`column` is one of `values`: one array parameter on PostgreSQL (the same statement to
    parse and plan whatever their number), one parameter each elsewhere."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s)", [list(values)]
    return f"{column} IN ({', '.join(['%s'] * len(values))})", list(values)


def _fetch_all(statement: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def run_resume(run: Run) -> Change:
    """A failed or cancelled run (locked by the caller) continues from its last checkpoint."""
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.PENDING,
        attempt=run.attempt + 1,
        completed_at=None,
        duration_ms=None,
        output=None,
        error_message="",
        error_type="",
        error_step="",
        error_traceback="",
        pending=None,
        execution_id="",
        task_id=dispatch.new_execution_name(),
    )
    dispatch.wake_workers()
    return change_of(run, RunStatus.PENDING)


def steps_forget(run: Run, step_ids: list[str]) -> None:
    """Checkpoints of a run that is not executing (locked by the caller) are dropped: its next
    execution runs those steps again as new work. Runs they started (step.run_loop) are kept,
    no longer attached to a step, so that nothing they do later wakes a step that is gone."""
    Run.objects.filter(parent_step_id__in=step_ids).update(parent_step=None)
    waiting = Step.objects.filter(pk__in=step_ids, status=StepStatus.WAITING)
    for step_id in waiting.values_list("pk", flat=True):
        dispatch.clear_timer(TimerKind.STEP, step_id)
    Step.objects.filter(run=run, pk__in=step_ids).delete()


def step_succeed_with(step: Step, output) -> bool:
    """A failed step of a failed or cancelled run (locked by the caller) takes an operator's
    output: it succeeded, as if it had returned it. False if it is no longer failed."""
    return bool(
        Step.objects.filter(pk=step.pk, status=StepStatus.FAILED).update(
            status=StepStatus.SUCCEEDED, output=output, error=None, finished_at=timezone.now()
        )
    )


def step_time_up(step_id: str) -> Change | None:
    """A waiting step's time has come (runs.clock, in a transaction): a sleep ends, a wait
    for an event, an answer or a scan times out (StepTimeout)."""
    step = Step.objects.filter(pk=step_id).first()
    if step is None:
        return None
    lock_run(step.run_id)
    step.refresh_from_db()
    if step.status != StepStatus.WAITING:
        return None
    now = timezone.now()
    if step.wake_at and step.wake_at > now + timedelta(seconds=1):
        dispatch.set_timer(TimerKind.STEP, step.pk, step.wake_at)  # fired early: again then
        return None
    if step.kind == "sleep":
        return step_resolve(step, status=StepStatus.SUCCEEDED)
    if step.kind == "do":  # a retry's delay is over: the step is tried again
        Step.objects.filter(pk=step.pk, status=StepStatus.WAITING).update(
            status=StepStatus.RUNNING, wake_at=None
        )
        return run_wake(step.run_id)
    waited = int((now - step.started_at).total_seconds())
    error = {"message": f"Step '{step.name}' timed out after {waited} s", "type": "StepTimeout"}
    if step.kind == "scan":
        ScanRequest.objects.filter(step=step, status=ScanStatus.PENDING).update(
            status=ScanStatus.EXPIRED
        )
    return step_resolve(step, status=StepStatus.FAILED, error=error)


def may_start() -> bool:
    """Whether a run may start now (one is pending, within its limits)."""
    return sql.fetch_one(_choice_sql(), _choice_params()) is not None
