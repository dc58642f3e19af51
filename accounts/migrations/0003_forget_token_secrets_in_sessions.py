"""Sessions written before this release may still hold a new API token's secret under
"new_token" (the tokens page kept it there until it was viewed again). Remove it."""

from importlib import import_module

from django.conf import settings
from django.db import migrations

OLD_KEY = "new_token"


def forget_token_secrets(apps, schema_editor):
    if settings.SESSION_ENGINE != "django.contrib.sessions.backends.db":
        return  # other engines kept nothing in this database
    Session = apps.get_model("sessions", "Session")
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    for session in Session.objects.using(schema_editor.connection.alias).iterator():
        data = store.decode(session.session_data)
        if OLD_KEY in data:
            del data[OLD_KEY]
            session.session_data = store.encode(data)
            session.save(update_fields=["session_data"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_invitations"),
        ("sessions", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forget_token_secrets, migrations.RunPython.noop, elidable=True),
    ]
