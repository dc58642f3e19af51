"""GET /api/v1/runs and friends over real HTTP: filters, sorting, offset and cursor pages."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import TokenScope
from accounts.services import token_create
from runs.models import Batch, LogEntry, RunMode, RunStatus, Step, StepStatus, TriggerType
from tests.factories import LoopFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

T0 = timezone.now() - timedelta(days=1)


def make_runs(loop, count, *, start=T0, **kwargs):
    return [
        RunFactory(loop=loop, created_at=start + timedelta(seconds=i), **kwargs)
        for i in range(count)
    ]


def ids(response):
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["data"]]


def error_fields(response) -> list[str]:
    return [e["field"] for e in response.json()["error"]["details"]]


def test_list_is_newest_first_with_the_list_envelope_and_no_steps(api, loop):
    runs = make_runs(loop, 3)
    response = api.get("/api/v1/runs")
    body = response.json()
    assert ids(response) == [r.pk for r in reversed(runs)]
    assert body["limit"] == 10
    assert body["offset"] == 0
    assert body["hasMore"] is False
    assert body["nextCursor"] is None
    first = body["data"][0]
    assert first["loopId"] == loop.pk
    assert first["loopSlug"] == "greeting"
    assert first["version"] == 1
    assert first["triggerType"] == "api_token"
    assert first["input"] == {"name": "Khaya"}
    assert "steps" not in first or first["steps"] is None


def test_limit_100_is_allowed_and_101_is_422_naming_limit(api, loop):
    make_runs(loop, 101)
    page = api.get("/api/v1/runs", params={"limit": 100}).json()
    assert len(page["data"]) == 100
    assert page["hasMore"] is True
    assert page["nextCursor"]
    response = api.get("/api/v1/runs", params={"limit": 101})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["details"]] == ["limit"]
    assert "limit" in response.json()["error"]["message"]
    assert api.get("/api/v1/runs", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/runs", params={"offset": -1}).status_code == 422
    default = api.get("/api/v1/runs").json()
    assert len(default["data"]) == 10


def test_offset_pages_and_cursor_pages_agree(api, loop):
    runs = list(reversed(make_runs(loop, 25)))
    by_offset = []
    for offset in (0, 10, 20):
        by_offset += ids(api.get("/api/v1/runs", params={"limit": 10, "offset": offset}))
    by_cursor, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/runs", params=params).json()
        by_cursor += [r["id"] for r in page["data"]]
        cursor = page["nextCursor"]
        assert page["hasMore"] is (cursor is not None)
        if cursor is None:
            break
    assert by_offset == by_cursor == [r.pk for r in runs]


def test_cursor_pages_never_repeat_or_skip_while_new_runs_arrive(api, loop):
    old = list(reversed(make_runs(loop, 30)))
    seen, cursor = [], None
    for round_ in range(10):
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/runs", params=params).json()
        seen += [r["id"] for r in page["data"]]
        # new runs arrive between pages, newer than everything listed
        make_runs(loop, 3, start=timezone.now() + timedelta(minutes=round_))
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [r.pk for r in old]


@pytest.mark.parametrize("sort", ["durationMs", "-durationMs", "startedAt", "-completedAt"])
def test_cursor_pages_follow_a_sort_with_nulls_and_ties(api, loop, sort):
    runs = make_runs(loop, 6)
    for i, run in enumerate(runs[:4]):
        # ties (two runs per value) and two runs without a value at all
        run.duration_ms = (i // 2) * 100
        run.started_at = T0 + timedelta(minutes=i // 2)
        run.completed_at = run.started_at
        run.save(update_fields=["duration_ms", "started_at", "completed_at"])
    whole = ids(api.get("/api/v1/runs", params={"sort": sort, "limit": 100}))
    paged, cursor = [], None
    while True:
        params = {"sort": sort, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/runs", params=params).json()
        paged += [r["id"] for r in page["data"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert paged == whole
    assert sorted(whole) == sorted(r.pk for r in runs)
    assert set(whole[-2:]) == {runs[4].pk, runs[5].pk}  # no value: last either way


def test_sort_on_each_field_and_unknown_sort_is_422(api, loop):
    a, b, c = make_runs(loop, 3)
    for run, ms, status in ((a, 300, "failed"), (b, 100, "succeeded"), (c, 200, "cancelled")):
        run.duration_ms, run.status = ms, status
        run.save(update_fields=["duration_ms", "status"])
    assert ids(api.get("/api/v1/runs", params={"sort": "durationMs"})) == [b.pk, c.pk, a.pk]
    assert ids(api.get("/api/v1/runs", params={"sort": "-durationMs"})) == [a.pk, c.pk, b.pk]
    assert ids(api.get("/api/v1/runs", params={"sort": "status"})) == [c.pk, a.pk, b.pk]
    assert ids(api.get("/api/v1/runs", params={"sort": "createdAt"})) == [a.pk, b.pk, c.pk]
    response = api.get("/api/v1/runs", params={"sort": "name"})
    assert response.status_code == 422
    assert error_fields(response) == ["sort"]


def test_a_cursor_from_another_sort_or_forged_is_422(api, loop):
    make_runs(loop, 3)
    cursor = api.get("/api/v1/runs", params={"limit": 1}).json()["nextCursor"]
    response = api.get("/api/v1/runs", params={"cursor": cursor, "sort": "durationMs"})
    assert response.status_code == 422
    assert error_fields(response) == ["cursor"]
    assert api.get("/api/v1/runs", params={"cursor": "nonsense!"}).status_code == 422


def test_filters_status_loop_trigger_type_mode_batch(api, org, loop):
    other_loop = LoopFactory(organization=org, slug="other")
    batch = Batch.objects.create(organization=org, loop=loop, count=1)
    failed = RunFactory(loop=loop, status=RunStatus.FAILED)
    waiting = RunFactory(loop=loop, status=RunStatus.WAITING, trigger_type=TriggerType.USER)
    test_run = RunFactory(loop=other_loop, mode=RunMode.TEST, trigger_type=TriggerType.SYSTEM)
    batched = RunFactory(loop=loop, batch=batch)

    def listed(**params):
        return set(ids(api.get("/api/v1/runs", params=params)))

    assert listed(status="failed,waiting") == {failed.pk, waiting.pk}
    assert listed(status="failed") == {failed.pk}
    assert listed(loop="other") == {test_run.pk}
    assert listed(loop=other_loop.pk) == {test_run.pk}
    assert listed(triggerType="user") == {waiting.pk}
    assert listed(triggerType="system") == {test_run.pk}
    assert listed(mode="test") == {test_run.pk}
    assert listed(batch=batch.pk) == {batched.pk}
    assert listed(status="succeeded", loop="greeting") == {batched.pk}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "done"),
        ("status", "failed,nope"),
        ("triggerType", "robot"),
        ("mode", "fast"),
        ("stepStatus", "succeeded"),
        ("loop", "no-such-loop"),
        ("batch", "bat_nope"),
        ("triggeredBy", "nobody"),
        ("createdAfter", "yesterday"),
        ("createdBefore", "2026-13-45T00:00:00Z"),
        ("createdAfter", "2026-01-01T00:00:00"),
    ],
)
def test_unknown_filter_values_are_422_naming_the_field(api, loop, field, value):
    response = api.get("/api/v1/runs", params={field: value})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"] == [{"field": field, "message": error["message"]}]
    assert field in error["message"]


def test_created_range_filter(api, loop):
    runs = make_runs(loop, 5)
    params = {
        "createdAfter": (T0 + timedelta(seconds=1)).isoformat(),
        "createdBefore": (T0 + timedelta(seconds=4)).isoformat(),
    }
    assert ids(api.get("/api/v1/runs", params=params)) == [runs[3].pk, runs[2].pk, runs[1].pk]
    after = {"createdAfter": (T0 + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    assert ids(api.get("/api/v1/runs", params=after)) == [runs[4].pk, runs[3].pk]


def test_step_status_filter_finds_runs_with_a_failed_or_rejected_step(api, loop):
    plain, with_failed, with_rejected = make_runs(loop, 3)
    Step.objects.create(run=plain, order=0, key="a", name="A", status=StepStatus.SUCCEEDED)
    Step.objects.create(run=with_failed, order=0, key="a", name="A", status=StepStatus.FAILED)
    Step.objects.create(run=with_rejected, order=0, key="a", name="A", status=StepStatus.REJECTED)
    assert ids(api.get("/api/v1/runs", params={"stepStatus": "failed"})) == [with_failed.pk]
    assert ids(api.get("/api/v1/runs", params={"stepStatus": "rejected"})) == [with_rejected.pk]


def test_triggered_by_filter_accepts_a_token_id_or_a_member(api, org, loop, owner):
    token, _ = token_create(organization=org, name="ci", scope=TokenScope.TRIGGER)
    by_token = RunFactory(loop=loop, triggered_by_token=token)
    by_user = RunFactory(loop=loop, triggered_by_user=owner, trigger_type=TriggerType.USER)
    RunFactory(loop=loop)
    assert ids(api.get("/api/v1/runs", params={"triggeredBy": token.pk})) == [by_token.pk]
    assert ids(api.get("/api/v1/runs", params={"triggeredBy": "olivia"})) == [by_user.pk]
    assert ids(api.get("/api/v1/runs", params={"triggeredBy": str(owner.pk)})) == [by_user.pk]


def test_another_orgs_runs_are_never_visible(api, loop, other_org, anon_api):
    foreign_loop = LoopFactory(organization=other_org, slug="greeting")
    foreign = RunFactory(loop=foreign_loop)
    mine = RunFactory(loop=loop)
    assert ids(api.get("/api/v1/runs")) == [mine.pk]
    for path in (
        f"/api/v1/runs/{foreign.pk}",
        f"/api/v1/runs/{foreign.pk}/logs",
        f"/api/v1/loops/{foreign_loop.pk}/runs",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    # the loop filter does not find the other org's loop by id either
    assert api.get("/api/v1/runs", params={"loop": foreign_loop.pk}).status_code == 422
    # and the other org's token sees only its own
    headers = {"Authorization": f"Bearer {make_token(other_org)}"}
    theirs = anon_api.get("/api/v1/runs", headers=headers)
    assert ids(theirs) == [foreign.pk]


def test_loop_runs_are_the_50_newest(api, org, loop):
    runs = make_runs(loop, 55)
    RunFactory(loop=LoopFactory(organization=org, slug="other"))
    for ident in (loop.slug, loop.pk):
        listed = ids(api.get(f"/api/v1/loops/{ident}/runs"))
        assert listed == [r.pk for r in reversed(runs)][:50]


def test_one_run_has_its_ordered_steps(api, loop):
    run = RunFactory(loop=loop)
    second = Step.objects.create(run=run, order=1, key="b", name="B", status="succeeded")
    first = Step.objects.create(
        run=run, order=0, key="a", name="A", status="succeeded", output=[1, 2], line=3
    )
    data = api.get(f"/api/v1/runs/{run.pk}").json()["data"]
    assert [s["id"] for s in data["steps"]] == [first.pk, second.pk]
    step = data["steps"][0]
    assert step["output"] == [1, 2]
    assert step["line"] == 3
    assert step["order"] == 0
    assert set(step) >= {
        "id", "order", "name", "kind", "status", "input", "output", "error", "attempts",
        "startedAt", "finishedAt", "durationMs", "metadata", "iteration", "parentId", "line",
    }  # fmt: skip


def test_step_output_is_served_in_chunks(api, loop):
    run = RunFactory(loop=loop)
    big = "x" * 150_000
    step = Step.objects.create(run=run, order=0, key="a", name="A", status="succeeded", output=big)
    url = f"/api/v1/runs/{run.pk}/steps/{step.pk}/output"
    text, offset = "", 0
    while True:
        chunk = api.get(url, params={"offset": offset, "length": 65536}).json()
        assert chunk["offset"] == offset
        assert chunk["total"] == len(big) + 2
        text += chunk["data"]
        offset += chunk["length"]
        if not chunk["hasMore"]:
            break
    assert text == f'"{big}"'
    assert api.get(url, params={"length": 0}).status_code == 422
    assert api.get(f"/api/v1/runs/{run.pk}/steps/stp_nope/output").status_code == 404


def test_logs_are_paginated(api, loop):
    run = RunFactory(loop=loop)
    for i in range(5):
        LogEntry.objects.create(run=run, loop=loop, level="info", message=f"line {i}")
    page = api.get(f"/api/v1/runs/{run.pk}/logs", params={"limit": 3}).json()
    assert [e["message"] for e in page["data"]] == ["line 0", "line 1", "line 2"]
    assert page["hasMore"] is True
    rest = api.get(f"/api/v1/runs/{run.pk}/logs", params={"limit": 3, "offset": 3}).json()
    assert [e["message"] for e in rest["data"]] == ["line 3", "line 4"]
    assert rest["hasMore"] is False
    assert set(page["data"][0]) == {"time", "level", "message", "stepId"}


def test_batch_counts_by_status(api, org, loop, other_org):
    batch = Batch.objects.create(organization=org, loop=loop, count=3)
    RunFactory(loop=loop, batch=batch, status=RunStatus.PENDING)
    RunFactory(loop=loop, batch=batch, status=RunStatus.SUCCEEDED)
    RunFactory(loop=loop, batch=batch, status=RunStatus.SUCCEEDED)
    data = api.get(f"/api/v1/batches/{batch.pk}").json()["data"]
    assert data["id"] == batch.pk
    assert data["loopId"] == loop.pk
    assert data["count"] == 3
    assert data["counts"]["succeeded"] == 2
    assert data["counts"]["pending"] == 1
    assert data["counts"]["failed"] == 0
    foreign = Batch.objects.create(
        organization=other_org, loop=LoopFactory(organization=other_org), count=0
    )
    assert api.get(f"/api/v1/batches/{foreign.pk}").status_code == 404
