"""Enqueueing executions on django-q2, always after the transaction commits (or with it)."""

import math
import time
import uuid
from functools import cache

from django.conf import settings
from django.db import connections, router, transaction
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

EXECUTE_TASK = "runs.tasks.execute_run"
EXECUTE_CHUNK_TASK = "runs.queue.execute_chunk"
# A batch is handed to the workers in chunks: one task per run caps throughput at the broker's
# rate (PERFORMANCE.md), while one chunk per worker would leave the other workers idle.
MAX_CHUNK = 500
DEFAULT_DB = "default"
CHUNKS_PER_WORKER = 4


@cache
def _broker():
    # async_task would otherwise build a new broker (and connection) on every call.
    return get_broker()


def new_task_id() -> str:
    return uuid.uuid4().hex


def enqueue_execution(run_id: str, task_id: str | None = None) -> str:
    """Queue an execution of the run, visible to the workers once the current transaction
    commits.

    With the ORM broker on the same database the queue row is written in the caller's
    transaction: no second commit, no broker reconnection check, and the run and its task
    commit together. With another broker the task is pushed after commit.
    """
    task_id = task_id or new_task_id()
    row = queue_row(run_id, task_id)
    if row is not None:
        sql.insert(row)
    else:
        transaction.on_commit(
            lambda: async_task(EXECUTE_TASK, run_id, task_name=task_id, broker=_broker())
        )
    return task_id


def queue_row(run_id: str, task_id: str) -> OrmQ | None:
    """The ORM broker's queue row (unsaved) for an execution of the run, to be saved with the
    run itself; None when the tasks go to another broker (then use enqueue_execution)."""
    if Conf.SYNC or not _orm_broker_in(DEFAULT_DB):
        return None
    return OrmQ(
        key=_queue_key(),
        payload=package(EXECUTE_TASK, run_id, name=task_id),
        lock=timezone.now(),
    )


def chunk_size(count: int) -> int:
    per_worker = math.ceil(count / (CHUNKS_PER_WORKER * max(settings.LOOPS_WORKERS, 1)))
    return max(1, min(MAX_CHUNK, per_worker))


def chunks(run_ids: list[str], size: int | None = None) -> list[list[str]]:
    size = size or chunk_size(len(run_ids))
    return [run_ids[start : start + size] for start in range(0, len(run_ids), size)]


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


def _orm_broker_in(using: str) -> bool:
    """True when the ORM broker stores its queue in the database of `using`, so that queue
    rows can be written in the caller's transaction."""
    broker = _broker()
    return isinstance(broker, ORM) and router.db_for_write(OrmQ) == using == (Conf.ORM or using)


def _queue_key() -> str:
    """The queue name the ORM broker's workers read (as its enqueue() names it)."""
    return _broker().list_key or Conf.CLUSTER_NAME


def _insert_packages(packages: list[str], using: str) -> None:
    """Write packages to the ORM broker's queue table as its enqueue() does (key, payload,
    lock = now), with one plain INSERT: this is on the path of every trigger."""
    key = _queue_key()
    now = timezone.now()
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(OrmQ._meta.db_table)
    columns = ", ".join(quote(OrmQ._meta.get_field(f).column) for f in ("key", "payload", "lock"))
    lock = OrmQ._meta.get_field("lock").get_db_prep_save(now, connection)
    with connection.cursor() as cursor:
        for start in range(0, len(packages), 500):
            part = packages[start : start + 500]
            values = ", ".join(["(%s, %s, %s)"] * len(part))
            params = [x for p in part for x in (key, p, lock)]
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", params)  # noqa: S608


def enqueue_executions(run_ids: list[str], using: str = DEFAULT_DB) -> int:
    """Queue many runs, a chunk of them per task. Returns the number of tasks.

    With the ORM broker on the same database the queue rows are inserted in the current
    transaction with one bulk INSERT: the runs and their tasks commit together, so the runs are
    queued when the caller answers. With another broker (Redis) the packages are pushed after
    commit, through one reused broker.
    """
    parts = chunks(run_ids)
    if Conf.SYNC:
        transaction.on_commit(
            lambda: [async_task(EXECUTE_CHUNK_TASK, part, broker=_broker()) for part in parts]
        )
        return len(parts)
    packages = [package(EXECUTE_CHUNK_TASK, part) for part in parts]
    if _orm_broker_in(using):
        _insert_packages(packages, using)
    else:

        def push():
            broker = _broker()
            for p in packages:
                broker.enqueue(p)

        transaction.on_commit(push, using=using)
    return len(packages)


def execute_chunk(run_ids: list[str], budget: float | None = None) -> int:
    """django-q2 task: execute a chunk of a batch one run after the other.

    A chunk stops after `budget` seconds (half the wall-clock limit of one execution) and queues
    the rest as a new task, so that a task always ends well inside django-q2's timeout and
    retry period, however long the runs take. Runs already claimed elsewhere are skipped.
    """
    from runs.engine import executor

    budget = settings.LOOPS_WALL_SECONDS / 2 if budget is None else budget
    deadline = time.monotonic() + budget
    done = 0
    for index, run_id in enumerate(run_ids):
        if index and time.monotonic() >= deadline:
            _broker().enqueue(package(EXECUTE_CHUNK_TASK, run_ids[index:]))
            break
        if executor.execute_run(run_id) != "not claimed":
            done += 1
    return done


def enqueue_task(func: str, *args, **kwargs) -> None:
    transaction.on_commit(lambda: async_task(func, *args, broker=_broker(), **kwargs))
