"""The platform's own django-q2 schedules: take up lost runs, fire due cron schedules."""

from django.db import migrations

SYSTEM_SCHEDULES = {
    "loops:recover-runs": "runs.tasks.recover_runs",
    "loops:fire-schedules": "runs.tasks.fire_due_schedules",
}


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, func in SYSTEM_SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name, defaults={"func": func, "schedule_type": "I", "minutes": 1, "repeats": -1}
        )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=SYSTEM_SCHEDULES).delete()


class Migration(migrations.Migration):
    dependencies = [("runs", "0001_initial"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = [migrations.RunPython(create, remove)]
