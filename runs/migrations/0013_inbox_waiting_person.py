from datetime import UTC

import django.db.models.fields.json
from django.db import migrations, models


def stamp_waits(apps, schema_editor):
    """Runs already waiting for a person get what the inbox reads from `pending` (the step's
    id, when the wait began, no assignees), as runs.engine.waits now writes it."""
    Run = apps.get_model("runs", "Run")
    Step = apps.get_model("runs", "Step")
    waiting = Run.objects.filter(status="waiting", pending__kind__in=["input", "approval"])
    for run in waiting.only("id", "pending").iterator():
        if run.pending.get("since"):
            continue
        step = (
            Step.objects.filter(run_id=run.pk, status="waiting", kind=run.pending["kind"])
            .order_by("-order")
            .first()
        )
        if step is None:
            continue
        since = step.started_at.astimezone(UTC).isoformat(timespec="microseconds")
        pending = {"assignees": [], **run.pending, "stepId": step.pk, "since": since}
        Run.objects.filter(pk=run.pk).update(pending=pending)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0012_timer_kind_approval"),
    ]

    operations = [
        migrations.RunPython(stamp_waits, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                models.F("organization"),
                django.db.models.fields.json.KeyTextTransform("since", "pending"),
                models.F("id"),
                condition=models.Q(
                    ("pending__kind__in", ["input", "approval"]), ("status", "waiting")
                ),
                name="run_waiting_person",
            ),
        ),
    ]
