"""No 500 for any input: JSON that Loops cannot store is refused wherever JSON comes in (over
real HTTP, and through the pages), naming the field, and nothing is saved.

Refused: NaN and Infinity literals (not JSON: 400 `invalid_json`); numbers that overflow a
float (1e400), lone surrogates, NUL characters and nesting deeper than LOOPS_MAX_JSON_DEPTH
(JSON that cannot be stored: 422 `invalid_value`)."""

import json

import pytest
from django.conf import settings
from django.test import RequestFactory
from django.urls import reverse
from django_q.models import OrmQ

from loops.models import Loop, LoopVersion, Schedule
from loops.models import TestInput as SavedInput
from runs import trigger_statement
from runs.models import Run, RunEvent, ScanRequest, ScanStatus, Step, StepStatus
from tests.engine_helpers import deploy, execute, program, trigger
from tests.factories import LoopFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
DEEP = b"[" * 100_000 + b"]" * 100_000
# (JSON text of the bad value, status, code); a deep value is named by the whole body.
BAD = {
    "overflow": (b"1e400", 422, "invalid_value"),
    "negative overflow": (b"-1.5e999", 422, "invalid_value"),
    "NaN": (b"NaN", 400, "invalid_json"),
    "Infinity": (b"-Infinity", 400, "invalid_json"),
    "lone surrogate": (b'"a\\ud800b"', 422, "invalid_value"),
    "low surrogate": (b'"\\udfff"', 422, "invalid_value"),
    "NUL": (b'"a\\u0000b"', 422, "invalid_value"),
    "100,000 brackets": (DEEP, 422, "invalid_value"),
    "101 levels": (b'{"a":' * 101 + b"1" + b"}" * 101, 422, "invalid_value"),
}


def post(api, path: str, body: bytes, method: str = "POST"):
    return api.request(method, path, content=body, headers={"Content-Type": "application/json"})


def assert_refused(response, status: int, code: str, field: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert [e["field"] for e in error["details"]] == [field]
    assert field in error["message"]
    return error


def saved() -> dict:
    return {
        model.__name__: model.objects.count()
        for model in (Run, RunEvent, Loop, LoopVersion, Schedule, SavedInput, OrmQ)
    }


@pytest.fixture
def waiting(loop):
    """A run waiting for an answer, and one waiting for a facial scan (as the engine leaves
    them)."""
    asking = RunFactory(
        loop=loop, status="waiting", pending={"kind": "input", "prompt": "Name?", "stepName": "Ask"}
    )
    Step.objects.create(run=asking, order=0, key="Ask", name="Ask", kind="input", status="waiting")
    scanning = RunFactory(loop=loop, status="waiting", pending={"kind": "scan", "stepName": "Scan"})
    step = Step.objects.create(
        run=scanning, order=0, key="Scan", name="Scan", kind="scan", status="waiting"
    )
    scan = ScanRequest.objects.create(
        organization=loop.organization, run=scanning, step=step, subject={"name": "Ana"}
    )
    return {"asking": asking, "scan": scan}


def endpoints(waiting) -> list[tuple[str, str, str, str]]:
    """(method, path, body with BAD where the bad value goes, the field named)."""
    run, scan = waiting["asking"].pk, waiting["scan"].pk
    schedule = '{"cron": "0 * * * *", "input": BAD}'
    return [
        ("POST", "/api/loop/acme/greeting", '{"a": [1, BAD]}', "body.a[1]"),
        ("POST", "/api/loop/acme/greeting", "BAD", "body"),
        ("POST", "/api/v1/loops/greeting/runs", '{"input": {"a": [1, BAD]}}', "input.a[1]"),
        ("POST", "/api/v1/loops/greeting/runs", '{"inputs": [{}, {"n": BAD}]}', "inputs[1].n"),
        ("POST", f"/api/v1/runs/{run}/events", '{"type": "go", "payload": {"p": BAD}}',
         "payload.p"),
        ("POST", f"/api/v1/runs/{run}/respond", '{"action": "input", "input": BAD}', "input"),
        ("POST", f"/api/v1/scans/{scan}/result", '{"heartRate": BAD}', "body.heartRate"),
        ("POST", "/api/v1/loops/greeting/schedules", schedule, "input"),
        ("POST", "/api/v1/loops", '{"slug": "new-loop", "description": BAD}', "description"),
        ("PATCH", "/api/v1/loops/greeting", '{"name": BAD}', "name"),
        ("POST", "/api/v1/loops/greeting/versions", '{"code": BAD}', "code"),
        ("POST", "/api/v1/loops/greeting/rollback", '{"version": BAD}', "version"),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_a_value_that_cannot_be_stored_is_refused_naming_the_field_everywhere(
    api, loop, waiting, kind
):
    bad, status, code = BAD[kind]
    before = saved()
    for method, path, template, field in endpoints(waiting):
        body = template.encode().replace(b"BAD", bad)
        # Too deep is found before the JSON is read: it is the body's, not a member's.
        expected = ("body" if kind.endswith(("brackets", "levels")) else field, status, code)
        response = post(api, path, body, method)
        assert_refused(response, expected[1], expected[2], expected[0])
    assert saved() == before
    assert Step.objects.filter(status=StepStatus.WAITING).count() == 2
    assert ScanRequest.objects.get().status == ScanStatus.PENDING
    assert Loop.objects.get(slug="greeting").name == "Greeting"


def test_a_body_that_is_not_utf8_is_400(api, loop):
    for path in ("/api/loop/acme/greeting", "/api/v1/loops/greeting/runs"):
        response = post(api, path, b'{"input": "\xed\xa0\x80"}')  # a surrogate, UTF-8 encoded
        assert_refused(response, 400, "invalid_json", "body")
    assert not Run.objects.exists()


def test_values_at_the_limits_are_accepted_and_stored_whole(api, loop):
    deepest = 1
    for _ in range(settings.LOOPS_MAX_JSON_DEPTH):
        deepest = [deepest]
    value = {"big": 1.7e308, "tiny": -5e-324, "emoji": "\U0001f600", "deep": deepest}
    # The body is one level deeper than its deepest member.
    response = api.post("/api/loop/acme/greeting", json=value)
    assert_refused(response, 422, "invalid_value", "body")
    response = api.post("/api/v1/loops/greeting/runs", json={"input": deepest})
    assert_refused(response, 422, "invalid_value", "body")

    value["deep"] = deepest[0]
    response = api.post("/api/loop/acme/greeting", json=value)
    assert response.status_code == 202, response.text
    run = Run.objects.get(pk=response.json()["runId"])
    # PostgreSQL's jsonb writes 1.7e308 out as an integer of 309 digits: the same number.
    assert float(run.input.pop("big")) == value.pop("big")
    assert run.input == value


@pytest.mark.skipif(not ON_POSTGRESQL, reason="the one-statement trigger runs on PostgreSQL")
@pytest.mark.parametrize("kind", list(BAD))
def test_the_trigger_statement_steps_aside_for_values_it_cannot_store(loop, kind):
    token = make_token(loop.organization)
    body = b'{"a": ' + BAD[kind][0] + b"}"
    request = RequestFactory().post(
        "/api/loop/acme/greeting", data=body, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )  # fmt: skip
    assert trigger_statement.answer(request, "acme", "greeting") is None
    response = trigger_statement.trigger_url(request, "acme", "greeting")
    assert response.status_code == BAD[kind][1]
    assert json.loads(response.content)["error"]["code"] == BAD[kind][2]
    assert not Run.objects.exists()
    assert not OrmQ.objects.exists()


# --- Schedules: time zones and input ---------------------------------------------------------

BAD_ZONES = ["Nowhere/City", "America", "Etc", "../etc/passwd", "/etc/passwd", "", "x" * 64,
             "UTC\u0000", "zone.tab", "Europe/"]  # fmt: skip


def test_an_unknown_time_zone_is_422_naming_the_field(api, loop):
    schedule = api.post("/api/v1/loops/greeting/schedules", json={"cron": "0 * * * *"})
    schedule_id = schedule.json()["data"]["id"]
    for zone in BAD_ZONES:
        body = {"cron": "0 * * * *", "timezone": zone}
        response = api.post("/api/v1/loops/greeting/schedules", json=body)
        expected = "invalid_value" if "\u0000" in zone else "invalid_timezone"
        assert_refused(response, 422, expected, "timezone")
        response = api.patch(f"/api/v1/schedules/{schedule_id}", json={"timezone": zone})
        assert_refused(response, 422, expected, "timezone")
    assert Schedule.objects.get().timezone == "UTC"
    response = api.post(
        "/api/v1/loops/greeting/schedules", json={"cron": "0 9 * * 1", "timezone": "Asia/Tokyo"}
    )
    assert response.status_code == 201


def test_schedule_input_over_the_input_limit_is_413_and_not_saved(api, loop, settings):
    settings.LOOPS_MAX_INPUT_BYTES = 100
    response = api.post(
        "/api/v1/loops/greeting/schedules", json={"cron": "0 * * * *", "input": "x" * 200}
    )
    assert_refused(response, 413, "input_too_large", "input")
    schedule = api.post("/api/v1/loops/greeting/schedules", json={"cron": "0 * * * *"})
    response = api.patch(
        f"/api/v1/schedules/{schedule.json()['data']['id']}", json={"input": ["x" * 200]}
    )
    assert_refused(response, 413, "input_too_large", "input")
    assert Schedule.objects.get().input == {}
    # null stands for no input, as when a schedule is created without one
    response = api.patch(f"/api/v1/schedules/{schedule.json()['data']['id']}", json={"input": None})
    assert response.status_code == 200, response.text
    assert Schedule.objects.get().input == {}


# --- Code that cannot be compiled -------------------------------------------------------------

LONG_EXPRESSION = "class A(Loop):\n    def run(self, event, step):\n        return " + "+".join(
    ["1"] * 100_000
)
NESTED = (
    "class A(Loop):\n    def run(self, event, step):\n        return " + "(" * 5000 + ")" * 5000
)


@pytest.mark.parametrize(
    ("code", "status", "code_name", "field"),
    [
        ("class A(Loop):\n    def run(self, event, step):\n        return '\u0000'\n",
         422, "invalid_value", "code"),
        ("class A(Loop):\n    def run(self, event, step):\n        return '\ud800'\n",
         422, "invalid_value", "code"),
        (LONG_EXPRESSION, 422, "invalid_code", None),
        (NESTED, 422, "invalid_code", None),
    ],
    ids=["NUL", "lone surrogate", "100,000 terms", "5,000 parentheses"],
)  # fmt: skip
def test_code_that_cannot_be_compiled_is_422_and_nothing_is_saved(
    api, loop, code, status, code_name, field
):
    body = json.dumps({"code": code, "note": "bad"}).encode()
    for path, payload in (
        ("/api/v1/loops/greeting/versions", body),
        ("/api/v1/loops", body.replace(b'"note"', b'"slug": "fresh", "note"')),
    ):
        response = post(api, path, payload)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["code"] == code_name
        if field:
            assert [e["field"] for e in error["details"]] == [field]
        else:
            [detail] = error["details"]
            assert detail["field"] == "code"
            assert detail["line"] >= 1
            assert detail["message"]
    assert LoopVersion.objects.count() == 1
    assert Loop.objects.count() == 1


def test_the_editor_answers_code_that_cannot_be_compiled_with_an_error(client, owner, loop):
    client.force_login(owner)
    url = reverse("loops:editor", args=[loop.slug])
    for code in (LONG_EXPRESSION, NESTED):
        response = client.post(url, {"code": code, "note": "bad"})
        assert response.status_code == 422
        assert "data-error-line" in response.content.decode()
    response = client.post(url, {"code": "class A(Loop):\x00\n", "note": "bad"})
    assert response.status_code == 200
    assert "Null characters are not allowed" in response.content.decode()
    # A lone surrogate cannot even arrive: the form's UTF-8 decoding replaces it.
    response = client.post(
        url, "code=%ED%A0%80&note=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 422
    response = client.post(
        reverse("loops:new"), {"name": "Fresh", "slug": "fresh", "code": LONG_EXPRESSION}
    )
    assert response.status_code == 200
    assert "nested too deeply or too large" in response.content.decode()
    assert LoopVersion.objects.count() == 1
    assert Loop.objects.count() == 1


# --- Page forms ---------------------------------------------------------------------------------

PAGE_BAD = ['{"a": 1e400}', '{"a": NaN}', '"\\ud800"', '"\\u0000"', "[" * 5000 + "]" * 5000]


@pytest.fixture
def editor_client(client, member):
    client.force_login(member)
    return client


def test_schedule_preview_names_an_unknown_time_zone(editor_client, loop):
    url = reverse("loops:cron_preview", args=[loop.slug])
    for zone in [z for z in BAD_ZONES if z]:  # an empty time zone is UTC here
        response = editor_client.get(url, {"cron": "0 9 * * *", "timezone": zone})
        if "\u0000" in zone:
            assert response.status_code == 400  # any NUL in a query (the middleware)
            continue
        assert response.status_code == 200
        page = response.content.decode()
        assert 'class="field-error"' in page, zone
        assert "Next runs" not in page
    page = editor_client.get(url, {"cron": "0 9 * * *", "timezone": "Europe/Paris"})
    assert "Next runs" in page.content.decode()
    page = editor_client.get(url, {"cron": "not cron", "timezone": "UTC"}).content.decode()
    assert "not a valid cron expression" in page


def test_schedule_form_names_its_fields_errors(editor_client, loop, settings):
    url = reverse("loops:schedules", args=[loop.slug])
    for zone in BAD_ZONES:
        response = editor_client.post(url, {"cron": "0 9 * * *", "timezone": zone, "input": "{}"})
        assert response.status_code == 200
        assert response.context["form"].errors["timezone"], zone
    for bad in PAGE_BAD:
        response = editor_client.post(url, {"cron": "0 9 * * *", "timezone": "UTC", "input": bad})
        assert response.status_code == 200
        assert response.context["form"].errors["input"], bad
    settings.LOOPS_MAX_INPUT_BYTES = 100
    response = editor_client.post(
        url, {"cron": "0 9 * * *", "timezone": "UTC", "input": json.dumps("x" * 200)}
    )
    assert "input is 202 bytes" in response.context["form"].errors["input"][0]
    assert not Schedule.objects.exists()


def test_test_run_and_trigger_forms_refuse_bad_json(editor_client, loop):
    code = loop.active_version.code
    for bad in PAGE_BAD:
        response = editor_client.post(
            reverse("loops:test", args=[loop.slug]), {"code": code, "input": bad},
            headers={"HX-Request": "true"},
        )  # fmt: skip
        assert response.status_code == 200
        assert "flash-error" in response.content.decode(), bad
        response = editor_client.post(
            reverse("loops:trigger", args=[loop.slug]), {"input": bad}, follow=True
        )
        assert response.status_code == 200
        assert "flash-error" in response.content.decode(), bad
    assert not Run.objects.exists()


def test_the_scan_page_refuses_numbers_it_cannot_store(client, waiting):
    scan = waiting["scan"]
    url = reverse("scan_page", args=[scan.pk])
    for fields in (
        {"heartRate": "inf"}, {"heartRate": "nan"}, {"heartRate": "1e400"},
        {"extra": '{"x": 1e400}'}, {"extra": '{"x": NaN}'}, {"extra": '{"x": "\\u0000"}'},
        {"extra": "[" * 5000}, {"extra": '{"a": ' * 200 + "1" + "}" * 200},
    ):  # fmt: skip
        response = client.post(url, fields)
        assert response.status_code == 200
        assert response.context["error"], fields
    scan.refresh_from_db()
    assert scan.status == ScanStatus.PENDING
    assert scan.result is None
    response = client.post(url, {"heartRate": "72", "extra": '{"note": "calm"}'})
    assert response.status_code == 302
    scan.refresh_from_db()
    assert scan.result == {"heartRate": 72.0, "note": "calm"}


def test_admin_schedule_and_test_input_forms_refuse_what_cannot_be_stored(admin_client, loop):
    for bad in PAGE_BAD:
        response = admin_client.post(
            reverse("admin:loops_schedule_add"),
            {"loop": loop.pk, "cron": "0 * * * *", "timezone": "UTC", "input": bad,
             "enabled": "on"},
        )  # fmt: skip
        assert response.status_code == 200
        assert response.context["adminform"].form.errors["input"], bad
        response = admin_client.post(
            reverse("admin:loops_testinput_add"), {"loop": loop.pk, "name": "n", "input": bad}
        )
        assert response.status_code == 200
        assert response.context["adminform"].form.errors["input"], bad
    response = admin_client.post(
        reverse("admin:loops_schedule_add"),
        {"loop": loop.pk, "cron": "0 * * * *", "timezone": "America", "input": "{}"},
    )
    assert response.context["adminform"].form.errors["timezone"]
    assert not Schedule.objects.exists()
    assert not SavedInput.objects.exists()


def test_a_loop_of_another_organization_is_not_reachable_with_bad_json(api, other_org):
    LoopFactory(organization=other_org, slug="theirs")
    response = post(api, "/api/v1/loops/theirs/runs", b'{"input": 1}')
    assert response.status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/loops/greeting/logs/?run=%00", "/loops/greeting/logs/?text=a%00", "/runs/run_%00x/",
        "/loops/greeting/editor/?version=%C2%B2", "/loops/greeting/editor/?line=%D9%A3",
        "/loops/greeting/editor/?version=" + "9" * 5000,
        "/loops/greeting/editor/?version=99999999999999999999",
        "/loops/greeting/versions/?a=%C2%B2&b=" + "9" * 5000,
        "/runs/?start=0001-01-01&end=9999-12-31", "/runs/?page=" + "9" * 5000,
        "/loops/greeting/schedules/preview/?cron=%00&timezone=UTC",
    ],
)  # fmt: skip
def test_odd_query_values_on_pages_are_not_a_server_error(client, owner, loop, url):
    RunFactory(loop=loop)
    loop.versions.create(number=2, code=loop.active_version.code)
    client.force_login(owner)
    response = client.get(url)
    assert response.status_code in (200, 400, 404), url
    run = Run.objects.get()
    detail = client.get(f"/runs/{run.pk}/value/?field=input&start=" + "9" * 5000)
    assert detail.status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"n": float("nan")}', "body.n holds NaN"),
        ('["a\\x00"]', "body[0] holds a NUL character"),
        ('{"s": "\\ud800"}', "body.s holds a lone UTF-16 surrogate"),
        ("deep", "is nested more than 100 levels deep"),
    ],
)
def test_a_child_run_body_that_cannot_be_stored_fails_the_step(org, body, message):
    deploy(org, program("return 1"), slug="child")
    code = (
        "        deep = 1\n        for _ in range(150):\n            deep = [deep]\n"
        f'        return step.run_loop("Child", "child", {body})\n'
    )
    parent = execute(trigger(deploy(org, program("").rstrip() + "\n" + code, slug="parent")))
    assert parent.status == "failed"
    step = parent.steps.get()
    assert (step.kind, step.status, step.input) == ("child", "failed", None)
    assert message in step.error["message"]
    assert message in parent.error_message
    assert not Run.objects.filter(parent_step__isnull=False).exists()
