"""A timer belongs to a queue (LOOPS_QUEUE), as a run does: only the clocks of that queue's
clusters fire it, so that a cluster of another queue on the same database (staging) never
ends production's sleeps or delivers its webhooks. A step's timer (its time, its reminder) is
its run's queue's; any other timer is the queue of the cluster that migrates."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django_q.conf import Conf

STEP_TIMERS = ("step", "approval")


def timers_of_their_runs_queue(apps, schema_editor):
    Timer = apps.get_model("runs", "Timer")
    Step = apps.get_model("runs", "Step")
    here = Value(Conf.CLUSTER_NAME)
    run_queue = Step.objects.filter(pk=OuterRef("target")).values("run__queue")[:1]
    Timer.objects.filter(kind__in=STEP_TIMERS).update(queue=Coalesce(Subquery(run_queue), here))
    Timer.objects.exclude(kind__in=STEP_TIMERS).update(queue=here)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0016_queue_names_without_broker_prefix"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="timer", name="timer_due"),
        migrations.AddField(
            model_name="timer",
            name="queue",
            field=models.CharField(default="loops", max_length=100),
        ),
        migrations.AddIndex(
            model_name="timer",
            index=models.Index(fields=["queue", "due_at"], name="timer_queue_due"),
        ),
        migrations.RunPython(timers_of_their_runs_queue, migrations.RunPython.noop),
    ]
