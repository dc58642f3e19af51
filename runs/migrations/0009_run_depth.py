from django.db import migrations, models


def set_depths(apps, schema_editor):
    """Runs started by step.run_loop before this migration: their depth below the run that
    was started otherwise (child runs are few; their parents are read once)."""
    Run = apps.get_model("runs", "Run")
    parent_of = dict(
        Run.objects.filter(parent_step__isnull=False).values_list("pk", "parent_step__run_id")
    )
    depths = {}

    for start in parent_of:
        chain, run_id = [], start
        while run_id in parent_of and run_id not in depths:
            chain.append(run_id)
            run_id = parent_of[run_id]
        known = depths.get(run_id, 0)
        for child in reversed(chain):
            known += 1
            depths[child] = known
    rows = [Run(pk=run_id, depth=min(value, 32767)) for run_id, value in depths.items()]
    Run.objects.bulk_update(rows, ["depth"], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0008_run_stored_bytes"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="depth",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.RunPython(set_depths, migrations.RunPython.noop),
    ]
