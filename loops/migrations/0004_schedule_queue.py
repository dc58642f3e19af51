"""A schedule belongs to a queue (LOOPS_QUEUE): only the clocks of that queue's clusters fire
it, and its runs are queued there, so that a cluster of another queue on the same database
(staging) never starts production's scheduled runs. Existing schedules are the queue of the
cluster that migrates."""

from django.db import migrations, models
from django_q.conf import Conf


def schedules_of_this_queue(apps, schema_editor):
    apps.get_model("loops", "Schedule").objects.update(queue=Conf.CLUSTER_NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("loops", "0003_loop_concurrency_limit"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="schedule", name="schedule_due"),
        migrations.AddField(
            model_name="schedule",
            name="queue",
            field=models.CharField(default="loops", editable=False, max_length=100),
        ),
        migrations.AddIndex(
            model_name="schedule",
            index=models.Index(
                fields=["queue", "enabled", "next_run_at"], name="schedule_queue_due"
            ),
        ),
        migrations.RunPython(schedules_of_this_queue, migrations.RunPython.noop),
    ]
