"""A run's queue is its cluster's name (LOOPS_QUEUE) whichever broker carries the turns. Under
the Redis broker it used to be that broker's list key, "django_q:<name>:q": runs not ended yet
get the plain name, so that the clusters claim them (ended runs are never claimed again)."""

from django.db import migrations

PREFIX, SUFFIX = "django_q:", ":q"
NOT_ENDED = ("pending", "running", "waiting")


def plain_queue_names(apps, schema_editor):
    Run = apps.get_model("runs", "Run")
    runs = Run.objects.filter(
        status__in=NOT_ENDED, queue__startswith=PREFIX, queue__endswith=SUFFIX
    )
    for queue in runs.values_list("queue", flat=True).distinct():
        runs.filter(queue=queue).update(queue=queue[len(PREFIX) : -len(SUFFIX)])


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0015_step_parent_index"),
    ]

    operations = [
        migrations.RunPython(plain_queue_names, migrations.RunPython.noop),
    ]
