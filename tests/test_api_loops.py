"""Loops and versions over real HTTP (token scope full)."""

import pytest

from loops.demo import GREETING_CODE
from loops.models import Loop, LoopVersion
from loops.validation import COMPILE_LOCK
from loops_project.slots import slot
from runs.models import Run
from tests.factories import LoopFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

V2_CODE = GREETING_CODE.replace("Hello", "Hi")
BROKEN_CODE = "class HealthLoop(Loop):\n    def run(self, event, step):\n        return (\n"


def test_create_list_and_retrieve_loops(api, org, loop, live_server):
    response = api.post(
        "/api/v1/loops", json={"slug": "billing", "name": "Billing", "description": "Invoices"}
    )
    assert response.status_code == 201, response.text
    created = response.json()["data"]
    assert created["id"].startswith("loop_")
    assert created["slug"] == "billing"
    assert created["description"] == "Invoices"
    assert created["activeVersion"] is None
    assert created["paused"] is False
    assert created["triggerUrl"] == f"{live_server.url}/api/loop/acme/billing"
    listed = api.get("/api/v1/loops").json()
    assert {item["slug"] for item in listed["data"]} == {"greeting", "billing"}
    assert listed["hasMore"] is False
    for ident in ("billing", created["id"]):
        assert api.get(f"/api/v1/loops/{ident}").json()["data"]["id"] == created["id"]


def test_create_with_code_deploys_version_1(api, org):
    response = api.post(
        "/api/v1/loops", json={"slug": "hello", "name": "Hello", "code": GREETING_CODE}
    )
    assert response.status_code == 201
    assert response.json()["data"]["activeVersion"] == 1
    versions = api.get("/api/v1/loops/hello/versions").json()["data"]
    assert [(v["number"], v["active"]) for v in versions] == [(1, True)]


def test_create_with_invalid_code_or_taken_or_bad_slug_saves_nothing(api, loop):
    response = api.post("/api/v1/loops", json={"slug": "bad", "name": "Bad", "code": BROKEN_CODE})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["line"]
    assert api.post("/api/v1/loops", json={"slug": "greeting"}).status_code == 409
    response = api.post("/api/v1/loops", json={"slug": "Not A Slug"})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["details"]] == ["slug"]
    assert list(Loop.objects.values_list("slug", flat=True)) == ["greeting"]


def test_an_organization_has_at_most_its_loops_and_others_are_not_counted(
    api, loop, other_org, settings
):
    """Each claim of a run looks at every loop with a run waiting, so an organization's loops
    are bounded (LOOPS_MAX_LOOPS_PER_ORG); another organization's do not count."""
    settings.LOOPS_MAX_LOOPS_PER_ORG = 2
    LoopFactory.create_batch(3, organization=other_org)
    assert api.post("/api/v1/loops", json={"slug": "second", "name": "2"}).status_code == 201
    response = api.post("/api/v1/loops", json={"slug": "third", "name": "3", "code": GREETING_CODE})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "too_many_loops"
    assert error["message"].startswith("The organization has 2 loops, the most it may have")
    assert sorted(
        Loop.objects.filter(organization=loop.organization).values_list("slug", flat=True)
    ) == ["greeting", "second"]


def test_an_organization_has_at_most_its_schedules(api, loop, settings):
    settings.LOOPS_MAX_SCHEDULES_PER_ORG = 2
    other = LoopFactory(organization=loop.organization, slug="other")
    path = "/api/v1/loops/{}/schedules"
    assert api.post(path.format("greeting"), json={"cron": "0 9 * * *"}).status_code == 201
    assert api.post(path.format("other"), json={"cron": "0 9 * * *"}).status_code == 201
    response = api.post(path.format("other"), json={"cron": "0 10 * * *"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "too_many_schedules"
    assert other.schedules.count() == 1


def test_patch_name_description_and_paused(api, loop):
    response = api.patch(
        "/api/v1/loops/greeting", json={"name": "Greeter", "description": "Says hi"}
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["name"], data["description"], data["paused"]) == ("Greeter", "Says hi", False)
    assert api.patch("/api/v1/loops/greeting", json={"paused": True}).json()["data"]["paused"]
    loop.refresh_from_db()
    assert (loop.name, loop.paused) == ("Greeter", True)
    response = api.patch("/api/v1/loops/greeting", json={"name": "  "})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["details"]] == ["name"]


def test_a_paused_loop_answers_triggers_with_409(api, loop):
    api.patch("/api/v1/loops/greeting", json={"paused": True})
    for path, body in (
        ("/api/loop/acme/greeting", {"name": "A"}),
        ("/api/v1/loops/greeting/runs", {"input": {"name": "A"}}),
        ("/api/v1/loops/greeting/runs", {"inputs": [{"name": "A"}, {"name": "B"}]}),
    ):
        response = api.post(path, json=body)
        assert response.status_code == 409, path
        assert response.json()["error"]["code"] == "loop_paused"
    assert not Run.objects.exists()
    api.patch("/api/v1/loops/greeting", json={"paused": False})
    assert api.post("/api/loop/acme/greeting", json={}).status_code == 202


def test_a_loop_without_a_version_answers_triggers_with_409(api, org):
    LoopFactory(organization=org, slug="empty", code=False)
    response = api.post("/api/loop/acme/empty", json={})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_active_version"


def test_an_organization_checks_its_programs_a_few_at_a_time(api, loop, other_org, settings):
    """Checking a large program takes seconds of a web worker's CPU: an organization has
    LOOPS_COMPILES_PER_ORG checked at once, and one more is 429 `busy`, not queued; another
    organization's deploys are not held."""
    settings.LOOPS_COMPILES_PER_ORG = 1
    theirs = LoopFactory(organization=other_org)
    with slot(COMPILE_LOCK, loop.organization_id, 1) as free:  # a deploy being checked
        assert free
        response = api.post("/api/v1/loops/greeting/versions", json={"code": GREETING_CODE})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "busy"
        assert "try again" in response.json()["error"]["message"]
        headers = {"Authorization": f"Bearer {make_token(other_org)}"}
        other = api.post(f"/api/v1/loops/{theirs.slug}/versions", json={"code": GREETING_CODE},
                         headers=headers)  # fmt: skip
        assert other.status_code == 201, other.text
    assert loop.versions.count() == 1
    after = api.post("/api/v1/loops/greeting/versions", json={"code": GREETING_CODE})
    assert after.status_code == 201


def test_deploy_lists_newest_first_retrieves_code_and_rolls_back(api, loop):
    response = api.post("/api/v1/loops/greeting/versions", json={"code": V2_CODE, "note": "hi"})
    assert response.status_code == 201
    deployed = response.json()["data"]
    assert (deployed["number"], deployed["active"], deployed["note"]) == (2, True, "hi")
    assert deployed["author"]
    versions = api.get("/api/v1/loops/greeting/versions").json()["data"]
    assert [(v["number"], v["active"]) for v in versions] == [(2, True), (1, False)]
    assert all("code" not in v or v["code"] is None for v in versions)
    assert {"number", "active", "createdAt", "author", "note"} <= set(versions[0])
    one = api.get("/api/v1/loops/greeting/versions/1").json()["data"]
    assert one["code"] == GREETING_CODE
    assert one["active"] is False
    assert api.get("/api/v1/loops/greeting/versions/9").status_code == 404

    response = api.post("/api/v1/loops/greeting/rollback", json={"version": 1})
    assert response.status_code == 200
    assert response.json()["data"]["activeVersion"] == 1
    assert api.get("/api/v1/loops/greeting").json()["data"]["activeVersion"] == 1
    assert api.post("/api/v1/loops/greeting/rollback", json={"version": 7}).status_code == 404
    assert LoopVersion.objects.filter(loop=loop).count() == 2


def test_deploying_invalid_code_is_422_with_line_and_reason_and_saves_nothing(api, loop):
    response = api.post("/api/v1/loops/greeting/versions", json={"code": BROKEN_CODE})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_code"
    [detail] = error["details"]
    assert detail["field"] == "code"
    assert isinstance(detail["line"], int)
    assert detail["line"] >= 1
    assert detail["message"]
    assert error["message"] == f"Line {detail['line']}: {detail['message']}"
    response = api.post("/api/v1/loops/greeting/versions", json={"code": ""})
    assert response.status_code == 422
    assert response.json()["error"]["details"] == [
        {"field": "code", "message": "the program is empty", "line": 1}
    ]
    assert LoopVersion.objects.filter(loop=loop).count() == 1
    loop.refresh_from_db()
    assert loop.active_version.number == 1


def test_another_orgs_loops_are_404(api, other_org):
    foreign = LoopFactory(organization=other_org, slug="secret")
    assert [item["slug"] for item in api.get("/api/v1/loops").json()["data"]] == []
    for method, path, body in (
        ("GET", f"/api/v1/loops/{foreign.pk}", None),
        ("GET", "/api/v1/loops/secret", None),
        ("PATCH", f"/api/v1/loops/{foreign.pk}", {"paused": True}),
        ("GET", f"/api/v1/loops/{foreign.pk}/versions", None),
        ("GET", f"/api/v1/loops/{foreign.pk}/versions/1", None),
        ("POST", f"/api/v1/loops/{foreign.pk}/versions", {"code": GREETING_CODE}),
        ("POST", f"/api/v1/loops/{foreign.pk}/rollback", {"version": 1}),
        ("POST", f"/api/v1/loops/{foreign.pk}/runs", {"input": {}}),
        ("POST", f"/api/loop/globex/{foreign.slug}", {}),
    ):
        response = api.request(method, path, json=body)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    foreign.refresh_from_db()
    assert foreign.paused is False
    assert foreign.versions.count() == 1


def test_schedules_create_patch_delete_and_a_bad_cron_is_422(api, loop, other_org):
    response = api.post(
        "/api/v1/loops/greeting/schedules",
        json={"cron": "*/5 * * * *", "timezone": "Africa/Johannesburg", "input": {"name": "S"}},
    )
    assert response.status_code == 201, response.text
    schedule = response.json()["data"]
    assert schedule["loopId"] == loop.pk
    assert schedule["enabled"] is True
    assert schedule["nextRunAt"]
    listed = api.get("/api/v1/loops/greeting/schedules").json()["data"]
    assert [s["id"] for s in listed] == [schedule["id"]]
    patched = api.patch(f"/api/v1/schedules/{schedule['id']}", json={"enabled": False})
    assert patched.status_code == 200
    assert patched.json()["data"]["enabled"] is False
    for body in ({"cron": "every day"}, {"cron": "* * * * *", "timezone": "Mars/Olympus"}):
        response = api.post("/api/v1/loops/greeting/schedules", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["message"]
    assert api.delete(f"/api/v1/schedules/{schedule['id']}").status_code == 204
    assert api.delete(f"/api/v1/schedules/{schedule['id']}").status_code == 404
    foreign = LoopFactory(organization=other_org)
    assert api.get(f"/api/v1/loops/{foreign.pk}/schedules").status_code == 404
