"""The audit log: every operator action recorded once, with the action, from every entry point
(pages, API, admin, commands); read through the API, the page and the admin; kept as long as
the retention says."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.audit_log import prune_audit
from accounts.models import ApiToken, AuditEvent, Role, TokenScope
from loops.services import loop_deploy
from runs.models import Run
from tests.factories import MembershipFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)


def _only(**filters) -> AuditEvent:
    events = list(AuditEvent.objects.filter(**filters))
    assert len(events) == 1, [(e.action, e.object_id) for e in AuditEvent.objects.all()]
    return events[0]


def test_api_actions_are_recorded_with_the_token_and_address(api, org, loop, token):
    code = loop.active_version.code.replace("Hello", "Hi")
    assert api.post(f"/api/v1/loops/{loop.slug}/versions", json={"code": code}).status_code == 201
    deploy = _only(action="loop.deploy")
    used = ApiToken.objects.get(organization=org)
    assert (deploy.actor_type, deploy.actor_id, deploy.actor_name) == ("token", used.pk, used.name)
    assert deploy.ip == "127.0.0.1"
    assert (deploy.object_type, deploy.object_id) == ("loop", loop.pk)
    assert deploy.details == {"version": 2, "previous": 1, "note": ""}
    assert api.post(f"/api/v1/loops/{loop.slug}/rollback", json={"version": 1}).status_code == 200
    assert _only(action="loop.rollback").details == {"before": 2, "after": 1}
    run = RunFactory(loop=loop, status="running")
    assert api.post(f"/api/v1/runs/{run.pk}/cancel").status_code == 202
    assert _only(action="run.cancel").details == {"before": "running", "after": "cancelled"}


def test_a_refused_action_records_nothing(api, loop):
    assert api.post(f"/api/v1/loops/{loop.slug}/rollback", json={"version": 9}).status_code == 404
    ended = RunFactory(loop=loop, status="succeeded")
    assert api.post(f"/api/v1/runs/{ended.pk}/cancel").status_code == 409
    assert not AuditEvent.objects.exists()


def test_record_refuses_to_run_outside_the_actions_transaction(org):
    with pytest.raises(RuntimeError, match="inside the action's transaction"):
        record(organization=org, actor=Actor.system("test"), action="loop.create",
               object_type="loop", object_id="loop_x")  # fmt: skip

    # Inside one, a failure after the record takes the record with it.
    def fails_after_recording():
        with transaction.atomic():
            record(organization=org, actor=Actor.system("test"), action="loop.create",
                   object_type="loop", object_id="loop_x")  # fmt: skip
            raise ValueError("the action failed later")

    with pytest.raises(ValueError, match="later"):
        fails_after_recording()
    assert not AuditEvent.objects.exists()


def test_audit_api_lists_newest_first_with_filters_and_cursor_pages(api, org, loop, other_org):
    for number in range(2, 6):
        loop_deploy(loop=loop, code=loop.active_version.code, note=f"n{number}",
                    actor=Actor.system("test"))  # fmt: skip
    with transaction.atomic():
        record(organization=other_org, actor=Actor.system("x"), action="loop.deploy",
               object_type="loop", object_id="loop_theirs")  # fmt: skip
    first = api.get("/api/v1/audit", params={"limit": 3, "action": "loop.deploy"}).json()
    assert [e["details"]["version"] for e in first["data"]] == [5, 4, 3]  # newest first
    assert first["hasMore"] is True
    assert first["data"][0]["actor"] == {"type": "system", "id": None, "name": "test"}
    assert first["data"][0]["object"] == {"type": "loop", "id": loop.pk}
    rest = api.get("/api/v1/audit", params={"limit": 3, "action": "loop.deploy",
                                            "cursor": first["nextCursor"]}).json()  # fmt: skip
    assert [e["details"]["version"] for e in rest["data"]] == [2]
    assert rest["hasMore"] is False
    everything = api.get("/api/v1/audit", params={"limit": 100}).json()["data"]
    assert "loop_theirs" not in {e["object"]["id"] for e in everything}  # another org's
    assert api.get("/api/v1/audit", params={"action": "loop"}).json()["data"]  # a prefix
    assert api.get("/api/v1/audit", params={"actorType": "user"}).json()["data"] == []
    assert len(api.get("/api/v1/audit", params={"objectId": loop.pk}).json()["data"]) == 4
    future = (timezone.now() + timedelta(hours=1)).isoformat()
    assert api.get("/api/v1/audit", params={"after": future}).json()["data"] == []
    assert len(api.get("/api/v1/audit", params={"before": future}).json()["data"]) == 4
    bad = api.get("/api/v1/audit", params={"actorType": "robot"})
    assert bad.status_code == 422
    assert "actorType" in bad.json()["error"]["message"]


def test_audit_api_needs_a_full_token(live_server, org):
    import httpx

    trigger_only = make_token(org, scope=TokenScope.TRIGGER)
    with httpx.Client(base_url=live_server.url) as client:
        answer = client.get("/api/v1/audit", headers={"Authorization": f"Bearer {trigger_only}"})
    assert answer.status_code == 403


def test_page_actions_are_recorded_with_the_user(client, org, owner, loop):
    client.force_login(owner)
    loop_deploy(loop=loop, code=loop.active_version.code.replace("Hello", "Hey"))
    client.post(reverse("loops:rollback", args=[loop.slug, 1]), REMOTE_ADDR="203.0.113.9")
    rollback = _only(action="loop.rollback")
    assert (rollback.actor_type, rollback.actor_name, rollback.ip) == ("user", "olivia",
                                                                      "203.0.113.9")  # fmt: skip
    failed = RunFactory(loop=loop, status="failed")
    client.post(reverse("runs:resume", args=[failed.pk]))
    assert _only(action="run.resume").object_id == failed.pk
    ended = RunFactory(loop=loop, status="succeeded")
    client.post(reverse("runs:restart", args=[ended.pk]))
    restarted = Run.objects.get(restarted_from=ended)
    assert _only(action="run.restart").details == {"newRun": restarted.pk}
    client.post(reverse("loops:pause", args=[loop.slug]))
    assert _only(action="loop.pause").details == {"changes": {"paused": [False, True]}}
    client.post(reverse("accounts:tokens"), {"name": "CI", "scope": "trigger"})
    token = ApiToken.objects.get(name="CI")
    assert _only(action="token.create").details["scope"] == "trigger"
    client.post(reverse("accounts:token_revoke", args=[token.pk]))
    client.post(reverse("accounts:token_revoke", args=[token.pk]))  # already revoked: no entry
    assert _only(action="token.revoke").object_id == token.pk
    editor = MembershipFactory(organization=org, role=Role.EDITOR)
    client.post(reverse("accounts:member_role", args=[editor.pk]), {"role": "viewer"})
    assert _only(action="member.role").details == {
        "user": editor.user.username, "before": "editor", "after": "viewer"
    }  # fmt: skip
    client.post(reverse("accounts:member_remove", args=[editor.pk]))
    assert _only(action="member.remove").details["user"] == editor.user.username
    schedule_form = {"cron": "0 6 * * *", "timezone": "UTC", "input": "{}", "enabled": "on"}
    client.post(reverse("loops:schedules", args=[loop.slug]), schedule_form)
    schedule = loop.schedules.get()
    client.post(reverse("loops:schedule_delete", args=[loop.slug, schedule.pk]))
    assert _only(action="schedule.create").object_id == schedule.pk
    assert _only(action="schedule.delete").details["cron"] == "0 6 * * *"


def test_the_audit_page_is_for_admins_and_filters(client, org, owner, loop):
    loop_deploy(loop=loop, code=loop.active_version.code, actor=Actor.of_user(owner))
    client.force_login(owner)
    page = client.get(reverse("accounts:audit")).content.decode()
    assert "loop.deploy" in page
    assert loop.pk in page
    filtered = client.get(reverse("accounts:audit"), {"action": "token.revoke"}).content.decode()
    assert "No matching entries." in filtered
    bad = client.get(reverse("accounts:audit"), {"after": "yesterday"}).content.decode()
    assert "after must be an ISO 8601 date and time" in bad
    client.force_login(MembershipFactory(organization=org, role=Role.EDITOR).user)
    assert client.get(reverse("accounts:audit")).status_code == 403


def test_admin_actions_are_recorded_and_the_log_is_read_only(admin_client, org, loop):
    token = ApiToken.objects.get(pk=make_token_row(org))
    admin_client.post(reverse("admin:accounts_apitoken_changelist"),
                      {"action": "revoke_tokens", "_selected_action": [token.pk]})  # fmt: skip
    entry = _only(action="token.revoke")
    assert (entry.actor_type, entry.actor_name) == ("user", "admin")
    url = reverse("admin:accounts_auditevent_change", args=[entry.pk])
    assert admin_client.get(reverse("admin:accounts_auditevent_changelist")).status_code == 200
    assert admin_client.post(url, {"action": "x"}).status_code == 403
    assert admin_client.get(reverse("admin:accounts_auditevent_add")).status_code == 403


def make_token_row(org) -> str:
    make_token(org, name="bot")
    return ApiToken.objects.get(organization=org, name="bot").pk


def test_commands_are_recorded_as_the_system(org, loop):
    loop_deploy(loop=loop, code=loop.active_version.code)
    call_command("rollback", org.slug, loop.slug, "1", stdout=StringIO())
    entry = _only(action="loop.rollback")
    assert (entry.actor_type, entry.actor_name) == ("system", "manage.py rollback")


def test_retention_deletes_only_entries_past_it(org, settings):
    settings.LOOPS_AUDIT_RETENTION_DAYS = 30
    with transaction.atomic():
        for days in (40, 31, 29, 0):
            entry = record(organization=org, actor=Actor.system("t"), action="loop.create",
                           object_type="loop", object_id=f"loop_{days}")  # fmt: skip
            AuditEvent.objects.filter(pk=entry.pk).update(at=timezone.now() - timedelta(days=days))
    assert prune_audit() == 2
    assert set(AuditEvent.objects.values_list("object_id", flat=True)) == {"loop_29", "loop_0"}
    settings.LOOPS_AUDIT_RETENTION_DAYS = 0  # keep for ever
    AuditEvent.objects.update(at=timezone.now() - timedelta(days=9999))
    assert prune_audit() == 0
