"""runs.dispatch is the only writer to django-q2: its packages are the ones django-q2's own
async_task makes, for the pinned django-q2."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone
from django_q.brokers import Broker
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from loops.models import Schedule
from loops.schedules import schedule_create
from loops_project import ids
from runs import dispatch
from runs.models import Run, RunStatus, Step, Timer, TimerKind, Webhook, WebhookDelivery
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


class Capture(Broker):
    def __init__(self):
        super().__init__(list_key="capture")
        self.payloads = []

    def enqueue(self, task):
        self.payloads.append(task)
        return len(self.payloads)


@pytest.mark.parametrize("args", [(), ("hook_123",)])
def test_a_package_is_what_async_task_makes(args):
    capture = Capture()
    async_task(dispatch.WORK_TASK, *args, broker=capture)
    theirs = SignedPackage.loads(capture.payloads[0])
    ours = SignedPackage.loads(dispatch.package(dispatch.WORK_TASK, *args))
    assert ours.keys() == theirs.keys()
    for key in ours.keys() - {"id", "name", "started"}:
        assert ours[key] == theirs[key], key
    assert ours["id"] != theirs["id"]
    assert type(ours["started"]) is type(theirs["started"])


def test_turns_are_queued_until_every_worker_has_one(settings):
    settings.LOOPS_WORKERS = 3
    for _ in range(5):
        dispatch.wake_workers()
    turns = [SignedPackage.loads(p) for p in OrmQ.objects.values_list("payload", flat=True)]
    assert [t["func"] for t in turns] == [dispatch.WORK_TASK] * 3
    assert {row.key for row in OrmQ.objects.all()} == {dispatch.queue_key()}


def test_runs_queued_under_the_redis_broker_keep_their_place_after_the_upgrade(loop):
    # Before 0016 a run queued under the Redis broker was in "django_q:<name>:q".
    migration = importlib.import_module("runs.migrations.0016_queue_names_without_broker_prefix")
    waiting = RunFactory(loop=loop, status=RunStatus.WAITING, queue="django_q:loops:q")
    pending = RunFactory(loop=loop, status=RunStatus.PENDING, queue="django_q:night:q")
    ended = RunFactory(loop=loop, status=RunStatus.SUCCEEDED, queue="django_q:loops:q")
    plain = RunFactory(loop=loop, status=RunStatus.PENDING, queue="loops")

    migration.plain_queue_names(apps, None)

    queues = dict(Run.objects.values_list("pk", "queue"))
    assert queues == {
        waiting.pk: "loops",
        pending.pk: "night",
        ended.pk: "django_q:loops:q",  # never claimed again: left as it was
        plain.pk: "loops",
    }
    assert dispatch.queue_key() == "loops"  # the cluster's name, whichever broker


def test_timers_and_schedules_made_before_queues_were_theirs_stay_with_their_clusters(loop):
    """Before runs 0017 and loops 0004 any cluster's clock fired any timer or schedule. A
    step's timers go to its run's queue; the rest, and every schedule, to the queue of the
    cluster that migrates (its clusters fired them until then)."""
    timers = importlib.import_module("runs.migrations.0017_timer_queue")
    schedules = importlib.import_module("loops.migrations.0004_schedule_queue")
    run = RunFactory(loop=loop, status=RunStatus.WAITING, queue="night")
    step = Step.objects.create(id=ids.step_id(), run=run, order=0, key="nap", name="Nap",
                               kind="sleep", status="waiting")  # fmt: skip
    due = run.created_at
    made = {
        "sleep": Timer.objects.create(kind=TimerKind.STEP, target=step.pk, due_at=due),
        "reminder": Timer.objects.create(kind=TimerKind.APPROVAL, target=step.pk, due_at=due),
        "gone": Timer.objects.create(kind=TimerKind.STEP, target=ids.step_id(), due_at=due),
        "webhook": Timer.objects.create(kind=TimerKind.WEBHOOK, target="dl_x", due_at=due),
    }
    Timer.objects.update(queue="")
    schedule = schedule_create(loop=loop, cron="0 9 * * *")
    Schedule.objects.update(queue="")

    timers.timers_of_their_runs_queue(apps, None)
    schedules.schedules_of_this_queue(apps, None)

    queues = dict(Timer.objects.values_list("pk", "queue"))
    assert {name: queues[timer.pk] for name, timer in made.items()} == {
        "sleep": "night", "reminder": "night", "gone": "loops", "webhook": "loops",
    }  # fmt: skip
    assert Schedule.objects.get(pk=schedule.pk).queue == "loops" == dispatch.queue_key()


def test_deliveries_made_before_senders_are_sent_by_their_runs_queue(loop):
    """Before runs 0018 deliveries were tasks, and retries waited on timers. A pending delivery
    goes to its run's queue (else the migrating cluster's), its retry's timer goes (its
    next_attempt_at says when it is due), and an attempt a task had claimed and never ended is
    due again."""
    migration = importlib.import_module("runs.migrations.0018_delivery_queue")
    hook = Webhook.objects.create(organization=loop.organization, url="https://x.test/h",
                                  secret="s")  # fmt: skip
    run = RunFactory(loop=loop, status=RunStatus.SUCCEEDED, queue="night")
    later = timezone.now() + timedelta(minutes=5)
    retry = WebhookDelivery.objects.create(
        webhook=hook, run=run, event="run.succeeded", payload={}, attempt=1, next_attempt_at=later
    )
    Timer.objects.create(kind=TimerKind.WEBHOOK, target=retry.pk, due_at=later)
    lost = WebhookDelivery.objects.create(webhook=hook, event="ping", payload={},
                                          next_attempt_at=None)  # fmt: skip
    done = WebhookDelivery.objects.create(webhook=hook, event="ping", payload={},
                                          status="succeeded", next_attempt_at=None)  # fmt: skip
    WebhookDelivery.objects.update(queue="")

    migration.deliveries_of_their_runs_queue(apps, None)

    rows = {d.pk: d for d in WebhookDelivery.objects.all()}
    # An ended delivery is never sent again: left as it was (a redelivery takes its run's queue).
    assert [rows[d.pk].queue for d in (retry, lost, done)] == ["night", "loops", ""]
    assert rows[retry.pk].next_attempt_at == later
    assert rows[lost.pk].next_attempt_at is not None  # due again
    assert rows[done.pk].next_attempt_at is None
    assert not Timer.objects.exists()
