"""The only code that writes to django-q2, and the one that writes timers.

Runs are not django-q2 tasks. A pending run waits in the runs table, which is the queue. The
workers' tasks are turns to work (`runs.tasks.work`): a worker that gets one claims runs,
fairest first (`runs.state.claim_next`), until none may start or its time is up. A trigger, a
woken run or a recovered one therefore only makes sure that turns are queued for idle workers
(`wake_workers`), and the order in which runs start is decided by the fair claim, not by the
order of a queue. Turns are interchangeable: one lost with a dead worker costs nothing, and a
turn that finds no run ends at once.

Timers (a sleep's end, a wait's timeout, a retry's delay, a reminder) are rows of runs_timer,
fired within a second of their due time by the clock of the worker clusters of the queue that
set them (runs.clock). Webhook deliveries are rows too, sent by those clusters' senders
(runs.senders), never tasks in the queue of the turns.
"""

# ruff: noqa: S608 - table and column names from the models; every value is a parameter

import uuid
from datetime import datetime
from functools import cache

from django.conf import settings
from django.db import connection, router, transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.humanhash import humanize
from django_q.models import OrmQ
from django_q.signals import pre_enqueue
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from loops_project import sql
from runs.models import BulkJob, BulkStatus, Timer

WORK_TASK = "runs.tasks.work"
BULK_TASK = "runs.tasks.bulk_work"
DEFAULT_DB = "default"
QUEUE_FIELDS = tuple(OrmQ._meta.get_field(name) for name in ("key", "payload", "lock"))


@cache
def broker():
    # async_task would otherwise build a new broker (and connection) on every call.
    return get_broker()


def new_execution_name() -> str:
    """The name a trigger answers as workflowInstanceId."""
    return uuid.uuid4().hex


def package(func: str, *args, name: str | None = None) -> str:
    """A signed django-q2 task package, built as django_q.tasks.async_task builds it."""
    full = uuid.uuid4().hex  # django_q.humanhash.uuid(), without the words unless needed
    task = {"id": full, "name": name or humanize(full), "func": func, "args": args}
    if Conf.CACHED:
        task["cached"] = Conf.CACHED
    if Conf.ACK_FAILURES:
        task["ack_failure"] = Conf.ACK_FAILURES
    task["kwargs"] = {}
    task["started"] = timezone.now()
    pre_enqueue.send(sender="django_q", task=task)
    return SignedPackage.dumps(task)


def orm_broker_in_database() -> bool:
    """True when the ORM broker keeps its queue in the default database, so that turns are
    written in the caller's transaction (no second commit, nothing to push after)."""
    b = broker()
    return (
        not Conf.SYNC
        and isinstance(b, ORM)
        and router.db_for_write(OrmQ) == DEFAULT_DB == (Conf.ORM or DEFAULT_DB)
    )


def queue_key() -> str:
    """The queue of runs this cluster claims (LOOPS_QUEUE, django-q2's cluster name): the same
    whichever broker carries the turns, so that runs queued before a change of broker are
    claimed after it."""
    return Conf.CLUSTER_NAME


def turns_wanted() -> int:
    """How many turns may wait in the queue: enough for every worker of a cluster to get one
    at once (a worker that has one keeps claiming runs while there are runs to claim)."""
    return max(settings.LOOPS_WORKERS, 1)


@cache
def turn_statement(source: str | None = None) -> str:
    """The insert of a turn (ORM broker) if fewer than `turns_wanted()` are queued (beside the
    bulk jobs' tasks), for one
    statement of its own or for statements that add it to theirs (a run's insert, the trigger
    URL's): with `source`, only for each row of that CTE. Its parameters: `turn_params()`."""
    names = ", ".join(sql.quote(f.column) for f in QUEUE_FIELDS)
    key, lock = sql.quote(OrmQ._meta.get_field("key").column), sql.column(OrmQ, "lock")
    return (
        f"INSERT INTO {sql.table(OrmQ)} ({names}) "
        f"SELECT {', '.join(sql.cast(f) for f in QUEUE_FIELDS)} "
        + (f"FROM {source} " if source else "")
        + f"WHERE (SELECT count(*) FROM {sql.table(OrmQ)} WHERE {key} = %s AND {lock} <= %s) "
        f"< %s + ({_bulk_tasks_sql()})"
    )


def _bulk_tasks_sql() -> str:
    """How many tasks of bulk jobs may be in the queue (runs.bulk: one per running job): the
    queue holds them beside the turns, and they are not turns (they must not keep one out)."""
    status = sql.column(BulkJob, "status")
    return f"SELECT count(*) FROM {sql.table(BulkJob)} WHERE {status} = '{BulkStatus.RUNNING}'"


def turn_params(now: datetime) -> list:
    row = OrmQ(key=broker().list_key, payload=package(WORK_TASK), lock=now)
    return [
        *(sql.prep(f, getattr(row, f.attname)) for f in QUEUE_FIELDS),
        row.key,
        now,
        turns_wanted(),
    ]


def wake_workers() -> None:
    """Make sure an idle worker will look for runs once the current transaction commits.

    With the ORM broker in this database the turn is written in the caller's transaction,
    and only if fewer than `turns_wanted()` turns are waiting; with another broker (Redis) it
    is pushed after commit on the same condition."""
    if orm_broker_in_database():
        sql.execute(turn_statement(), turn_params(timezone.now()))
        return
    transaction.on_commit(_push_turn)


def _push_turn() -> None:
    if Conf.SYNC:
        async_task(WORK_TASK, broker=broker())
    else:
        queued = broker().queue_size()
        # The bulk jobs' count is asked only when the queue looks full (rarely).
        if queued < turns_wanted() or queued < turns_wanted() + _bulk_tasks():
            broker().enqueue(package(WORK_TASK))


def _bulk_tasks() -> int:
    return BulkJob.objects.filter(status=BulkStatus.RUNNING).count()


def queue_bulk_work(job_id: str, token: str) -> None:
    """Queue the task that works on a bulk job (runs.bulk). With the ORM broker in this
    database it is written in the caller's transaction, so it exists exactly when the job's
    change that asked for it has committed; with another broker it is pushed after commit."""
    if orm_broker_in_database():
        OrmQ.objects.create(
            key=broker().list_key, payload=package(BULK_TASK, job_id, token), lock=timezone.now()
        )
        return
    transaction.on_commit(lambda: async_task(BULK_TASK, job_id, token, broker=broker()))


# --- Timers -------------------------------------------------------------------------------------


def set_timer(kind: str, target: str, due_at: datetime) -> None:
    """Fire `kind` for `target` at `due_at` (runs.clock), replacing an earlier timer of it. It
    is this queue's: only the clocks of its clusters fire it."""
    Timer.objects.filter(kind=kind, target=target).delete()
    Timer.objects.create(kind=kind, target=target, due_at=due_at, queue=queue_key())


def clear_timer(kind: str, target: str) -> None:
    Timer.objects.filter(kind=kind, target=target).delete()


def clear_timers(targets: list[str]) -> None:
    """Every timer of these steps (their time, their approval's reminders), in one DELETE:
    on PostgreSQL with the targets as one array (a bulk cancel names thousands)."""
    if not targets:
        return
    if connection.vendor == "postgresql":
        column = sql.column(Timer, "target")
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {sql.table(Timer)} WHERE {column} = ANY(%s)", [targets])
        return
    Timer.objects.filter(target__in=targets).delete()
