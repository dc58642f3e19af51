"""Bounds a tenant cannot push past: schedule input, loop names and descriptions, values in run
lists, the depth of step.run_loop, and cancellation reaching every run below a run."""

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from loops.models import Loop, Schedule
from loops.schedules import fire_due_schedules, schedule_create
from loops.services import loop_create, loop_update
from loops_project.errors import Invalid, TooLarge
from runs.engine.executor import execute_run
from runs.models import Run, RunStatus, Step, StepStatus
from runs.services import run_cancel
from tests.engine_helpers import deploy, execute, program, trigger
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

# --- Schedule input -------------------------------------------------------------------------------


def test_a_schedule_input_over_the_limit_is_refused_by_every_way_in(loop, admin_client, settings):
    settings.LOOPS_MAX_INPUT_BYTES = 100
    big = {"text": "x" * 200}
    with pytest.raises(TooLarge) as error:
        schedule_create(loop=loop, cron="0 * * * *", input=big)
    assert error.value.details == {"field": "input"}
    response = admin_client.post(
        reverse("admin:loops_schedule_add"),
        {"loop": loop.pk, "cron": "0 * * * *", "timezone": "UTC", "input": json.dumps(big)},
    )
    assert response.status_code == 200
    assert "bytes" in response.context["adminform"].form.errors["input"][0]
    assert not Schedule.objects.exists()
    # (the API and the schedules page: tests/test_input_validation.py)


def test_a_schedule_whose_input_is_over_the_limit_is_skipped_when_it_fires(loop, settings):
    schedule = schedule_create(loop=loop, cron="0 0 1 1 *", input={"text": "x" * 200})
    settings.LOOPS_MAX_INPUT_BYTES = 100  # lowered after the schedule was saved
    due = schedule.next_run_at
    assert fire_due_schedules(now=due) == 0
    assert not Run.objects.exists()
    schedule.refresh_from_db()
    assert schedule.next_run_at > due  # on to its next time, instead of failing at every due time

    settings.LOOPS_MAX_INPUT_BYTES = 1000
    assert fire_due_schedules(now=schedule.next_run_at) == 1
    assert Run.objects.get().input == {"text": "x" * 200}


# --- Loop name and description --------------------------------------------------------------------


@pytest.mark.parametrize(("field", "limit"), [("name", 200), ("description", 2000)])
def test_loop_name_and_description_are_bounded_everywhere(
    api, org, loop, owner, client, admin_client, field, limit
):
    too_long = "x" * (limit + 1)
    response = api.post("/api/v1/loops", json={"slug": "fresh", field: too_long})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field
    response = api.patch("/api/v1/loops/greeting", json={field: too_long})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field
    with pytest.raises(Invalid) as error:
        loop_create(organization=org, slug="fresh", **{field: too_long})
    assert error.value.details == {"field": field}
    with pytest.raises(Invalid) as error:
        loop_update(loop=loop, **{field: too_long})
    assert error.value.details == {"field": field}

    client.force_login(owner)
    page = {"name": "Fresh", "slug": "fresh", "code": loop.active_version.code, field: too_long}
    response = client.post(reverse("loops:new"), page)
    assert response.status_code == 200
    assert response.context["form"].errors[field]
    admin = {"name": "Greeting", "description": "", field: too_long}
    response = admin_client.post(reverse("admin:loops_loop_change", args=[loop.pk]), admin)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field]

    assert list(Loop.objects.values_list("slug", "name", "description")) == [
        ("greeting", "Greeting", "")
    ]
    response = api.post("/api/v1/loops", json={"slug": "fresh", field: "x" * limit})
    assert response.status_code == 201, response.text
    assert getattr(Loop.objects.get(slug="fresh"), field) == "x" * limit


# --- Values in run lists --------------------------------------------------------------------------

BIG = {"rows": [{"id": i, "name": f"row {i}"} for i in range(5000)]}


@pytest.fixture
def big_runs(loop, settings):
    settings.LOOPS_LIST_PREVIEW_CHARS = 4096
    small = RunFactory(loop=loop, input={"name": "Ana"}, output={"greeting": "Hi"})
    big = RunFactory(loop=loop, input=BIG, output=["é" * 10_000])
    return small, big


def test_run_lists_carry_a_large_value_as_a_preview_and_a_flag(api, big_runs):
    small, big = big_runs
    for path in ("/api/v1/runs", "/api/v1/loops/greeting/runs"):
        rows = {r["id"]: r for r in api.get(path).json()["data"]}
        assert rows[small.pk]["input"] == {"name": "Ana"}
        assert rows[small.pk]["output"] == {"greeting": "Hi"}
        assert rows[small.pk]["inputTruncated"] is rows[small.pk]["outputTruncated"] is False
        assert rows[small.pk]["inputPreview"] is rows[small.pk]["outputPreview"] is None
        row = rows[big.pk]
        assert row["input"] is row["output"] is None
        assert row["inputTruncated"] is row["outputTruncated"] is True
        assert len(row["inputPreview"]) == len(row["outputPreview"]) == 4096
        assert row["inputPreview"].replace(" ", "").startswith('{"rows":[{"id":0,"name":"row0"}')
        # The start of the JSON text as the database holds it: on PostgreSQL "é", in SQLite's
        # text its escape.
        assert row["outputPreview"].startswith(('["é', '["' + "\\u00e9"))
    whole = api.get(f"/api/v1/runs/{big.pk}").json()["data"]
    assert (whole["input"], whole["output"]) == (BIG, ["é" * 10_000])
    assert whole["inputTruncated"] is whole["outputTruncated"] is False


def test_a_value_just_under_the_preview_length_is_carried_whole(api, loop, settings):
    settings.LOOPS_LIST_PREVIEW_CHARS = 100
    fits = RunFactory(loop=loop, input="x" * 98, output="y" * 99)  # 100 and 101 characters
    row = api.get("/api/v1/runs").json()["data"][0]
    assert row["id"] == fits.pk
    assert (row["input"], row["inputTruncated"]) == ("x" * 98, False)
    assert (row["output"], row["outputTruncated"]) == (None, True)
    assert row["outputPreview"] == '"' + "y" * 99


def test_the_list_query_does_not_load_inputs_and_outputs(big_runs, token, client):
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    # The page's ids (on plain columns: nothing computed for the rows sorted or skipped),
    # then the page's rows.
    ids, select = [q["sql"] for q in queries if 'FROM "runs_run"' in q["sql"]]
    assert '"runs_run"."input"' not in ids
    assert '"runs_run"."output"' not in ids
    assert '"runs_run"."test_code"' not in select
    assert '"loops_loopversion"."code"' not in select
    for column in ('"runs_run"."input"', '"runs_run"."output"'):
        # Only inside the head expression (LEFT(…::text) on PostgreSQL, SUBSTR(CAST(…)) on
        # SQLite), never as a column of its own.
        outside = re.sub(rf"(LEFT\(\(|SUBSTR\(CAST\(){re.escape(column)}", "", select)
        assert column not in outside, select


def test_runs_pages_show_a_short_preview_of_large_outputs(client, owner, loop, big_runs):
    client.force_login(owner)
    _, big = big_runs
    for url in (reverse("runs:list"), reverse("loops:runs", args=[loop.slug]),
                loop.get_absolute_url()):  # fmt: skip
        page = client.get(url).content.decode()
        assert "é" * 100 not in page  # not the whole output: 60 characters of it
        assert f'id="row-{big.pk}"' in page
        assert "data-truncated" in page
        assert "{&quot;greeting&quot;: &quot;Hi&quot;}" in page
    detail = client.get(big.get_absolute_url()).content.decode()
    assert "é" * 1000 in detail  # the run's page shows it (in chunks)


# --- step.run_loop depth --------------------------------------------------------------------------

RECURSE = program('return step.run_loop("Down", "recurse", {"n": event.body["n"] + 1})')


def run_until_quiet(limit: int = 40) -> None:
    """Execute queued runs (as the worker would) until none is pending."""
    for _ in range(limit):
        pending = list(Run.objects.filter(status=RunStatus.PENDING).order_by("created_at"))
        if not pending:
            return
        for run in pending:
            execute_run(run.pk)
    raise AssertionError("runs still pending")


def test_step_run_loop_fails_past_the_child_depth_limit(org, settings):
    settings.LOOPS_MAX_CHILD_DEPTH = 3
    root = execute(trigger(deploy(org, RECURSE, slug="recurse"), {"n": 0}))
    assert root.status == RunStatus.WAITING
    run_until_quiet()

    runs = {run.depth: run for run in Run.objects.all()}
    assert sorted(runs) == [0, 1, 2, 3]  # no run 4 levels deep was started
    assert [runs[d].input["n"] for d in range(4)] == [0, 1, 2, 3]
    deepest = runs[3].steps.get()
    assert deepest.status == StepStatus.FAILED
    assert "LOOPS_MAX_CHILD_DEPTH" in deepest.error["message"]
    assert "at most 3 deep" in deepest.error["message"]
    for depth in range(4):  # the failure travels up: every step.run_loop raised it
        assert runs[depth].status == RunStatus.FAILED, depth
        assert "LOOPS_MAX_CHILD_DEPTH" in runs[depth].error_message
    assert runs[1].parent_step.run_id == runs[0].pk


def test_the_default_child_depth_is_ten(org):
    root = execute(trigger(deploy(org, RECURSE, slug="recurse"), {"n": 0}))
    assert root.status == RunStatus.WAITING
    run_until_quiet(limit=60)
    assert Run.objects.count() == 11
    assert max(Run.objects.values_list("depth", flat=True)) == 10


# --- Cancel reaches every descendant --------------------------------------------------------------

WAIT = program('return step.wait_for_event("Go", "go")')


def test_cancelling_a_run_cancels_its_pending_running_and_waiting_descendants(org, api):
    deploy(org, RECURSE, slug="recurse")
    root = execute(trigger(Loop.objects.get(slug="recurse"), {"n": 0}))
    child = execute(Run.objects.get(parent_step__run=root))
    grandchild = Run.objects.get(parent_step__run=child)
    assert (root.status, child.status, grandchild.status) == ("waiting", "waiting", "pending")
    deploy(org, WAIT, slug="waits")
    unrelated = execute(trigger(Loop.objects.get(slug="waits")))

    response = api.post(f"/api/v1/runs/{root.pk}/cancel")
    assert response.status_code == 202, response.text

    statuses = dict(Run.objects.values_list("pk", "status"))
    assert statuses[root.pk] == statuses[child.pk] == statuses[grandchild.pk] == "cancelled"
    assert statuses[unrelated.pk] == "waiting"
    assert not Step.objects.filter(run__in=[root, child], status=StepStatus.WAITING).exists()
    execute_run(grandchild.pk)  # its queued execution finds it cancelled and does nothing
    assert Run.objects.get(pk=grandchild.pk).status == "cancelled"
    assert not Run.objects.filter(parent_step__run=grandchild).exists()


def test_cancelling_a_child_leaves_its_parent_to_fail_and_ended_descendants_alone(org):
    deploy(org, program('return step.run_loop("Down", "waits")'), slug="calls")
    deploy(org, WAIT, slug="waits")
    parent = execute(trigger(Loop.objects.get(slug="calls")))
    child = execute(Run.objects.get(parent_step__run=parent))
    assert child.status == RunStatus.WAITING

    run_cancel(run=child)
    run_until_quiet()
    parent.refresh_from_db()
    assert parent.status == RunStatus.FAILED  # the child was cancelled: its step failed
    with pytest.raises(Exception, match="already ended"):
        run_cancel(run=parent)
