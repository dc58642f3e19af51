"""Webhook deliveries are sent by the worker clusters of a queue (LOOPS_QUEUE), fairly across
organizations (runs.senders), no longer as django-q2 tasks in the queue that carries the turns
of runs. A delivery is its run's queue's; one without a run, and the retries that waited on a
timer, are the queue of the cluster that migrates (the timer is no longer needed: the
delivery's next_attempt_at says when it is due)."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery, Value
from django.db.models.functions import Coalesce, Now
from django_q.conf import Conf


def deliveries_of_their_runs_queue(apps, schema_editor):
    WebhookDelivery = apps.get_model("runs", "WebhookDelivery")
    Run = apps.get_model("runs", "Run")
    Timer = apps.get_model("runs", "Timer")
    here = Value(Conf.CLUSTER_NAME)
    run_queue = Run.objects.filter(pk=OuterRef("run_id")).values("queue")[:1]
    # Only pending deliveries are ever sent again (a redelivery takes its run's queue anew).
    WebhookDelivery.objects.filter(status="pending").update(
        queue=Coalesce(Subquery(run_queue), here)
    )
    Timer.objects.filter(kind="webhook").delete()
    # An attempt a task had claimed (the old claim cleared next_attempt_at) and never ended.
    WebhookDelivery.objects.filter(status="pending", next_attempt_at__isnull=True).update(
        next_attempt_at=Now()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0017_timer_queue"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookdelivery",
            name="queue",
            # In the database too: processes of the previous release insert deliveries
            # without it until they are restarted.
            field=models.CharField(db_default="loops", default="loops", max_length=100),
        ),
        migrations.AddIndex(
            model_name="webhookdelivery",
            index=models.Index(
                condition=models.Q(status="pending"),
                fields=["queue", "next_attempt_at"],
                name="delivery_due",
            ),
        ),
        migrations.RunPython(deliveries_of_their_runs_queue, migrations.RunPython.noop),
    ]
