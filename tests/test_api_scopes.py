"""Every operation of the API's own OpenAPI document, called with a `trigger` token, answers
what API.md says: "A trigger-scope token may only trigger runs and read runs; everything else
answers 403." An operation added later is full-scope until it is listed here."""

import pytest

from accounts.audit import Actor
from accounts.models import TokenScope
from loops.models import Loop, Schedule
from loops.schedules import schedule_create
from runs.bulk import bulk_job_create
from runs.models import Run, ScanRequest, Step, Webhook
from runs.services import run_trigger_batch
from runs.webhooks import webhook_create
from tests.factories import RunFactory, make_token

pytestmark = pytest.mark.django_db

# Triggering runs and reading them (with what belongs to a run: its logs, a step's output, its
# batch, its scan request).
TRIGGER_SCOPE = {
    ("post", "/api/loop/{org}/{loop}"),
    ("post", "/api/v1/loops/{loop}/runs"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/loops/{loop}/runs"),
    ("get", "/api/v1/runs/{run_id}"),
    ("get", "/api/v1/runs/{run_id}/logs"),
    ("get", "/api/v1/runs/{run_id}/steps/{step_id}/output"),
    ("get", "/api/v1/batches/{batch_id}"),
    ("get", "/api/v1/scans/{scan_id}"),
}


@pytest.fixture
def named(org, loop) -> dict:
    """A value, naming an object of the organization, for each path parameter."""
    run = RunFactory(loop=loop)
    step = Step.objects.create(
        run=run, order=0, key="Build greeting#1", name="Build greeting", status="succeeded",
        output={"greeting": "Hello"},
    )  # fmt: skip
    waits = Step.objects.create(
        run=run, order=1, key="Scan#1", name="Scan", kind="scan", status="waiting"
    )
    scan = ScanRequest.objects.create(organization=org, run=run, step=waits)
    batch = run_trigger_batch(loop=loop, inputs=[1], trigger_type="api_token")
    return {
        "org": org.slug, "loop": loop.slug, "number": 1, "run_id": run.pk, "step_id": step.pk,
        "batch_id": batch.pk, "scan_id": scan.pk,
        "hook_id": webhook_create(organization=org, url="https://example.com/hook").pk,
        "schedule_id": schedule_create(loop=loop, cron="0 * * * *").pk,
        "job_id": bulk_job_create(organization=org, action="cancel", filter={"status": "failed"},
                                  actor=Actor.system("tests")).pk,
    }  # fmt: skip


def operations(client) -> list[tuple[str, str, dict]]:
    """(method, path, its OpenAPI operation) for every operation the API documents."""
    schema = client.get("/api/openapi.json").json()
    return [
        (method, path, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]


def call(client, secret: str, method: str, path: str, named: dict):
    url = path.format(**named)
    body = "{}" if method in ("post", "patch", "put") else None
    return client.generic(
        method.upper(), url, body or "", content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip


def snapshot() -> dict:
    """What a call that is refused must leave as it was."""
    return {
        "runs": list(Run.objects.order_by("pk").values_list("pk", "status")),
        "loops": list(Loop.objects.order_by("pk").values_list("pk", "paused", "active_version")),
        "schedules": list(Schedule.objects.order_by("pk").values_list("pk", "enabled", "cron")),
        "webhooks": list(Webhook.objects.order_by("pk").values_list("pk", "url")),
        "scans": list(ScanRequest.objects.order_by("pk").values_list("pk", "status")),
    }


def test_a_trigger_token_gets_403_for_every_operation_but_triggering_and_reading_runs(
    client, org, named
):
    secret = make_token(org, scope=TokenScope.TRIGGER, name="trigger only")
    found = operations(client)
    assert {(method, path) for method, path, _ in found} >= TRIGGER_SCOPE
    assert len(found) > 2 * len(TRIGGER_SCOPE)  # loops, versions, schedules, control, webhooks

    for method, path, operation in found:
        if (method, path) in TRIGGER_SCOPE:
            continue
        before = snapshot()
        response = call(client, secret, method, path, named)
        assert response.status_code == 403, (method, path, response.content)
        assert response.json()["error"]["code"] == "forbidden", (method, path)
        assert "403" in operation["responses"], f"{method} {path} does not document its 403"
        assert snapshot() == before, (method, path)

    for method, path, _ in found:
        if (method, path) not in TRIGGER_SCOPE:
            continue
        response = call(client, secret, method, path, named)
        assert 200 <= response.status_code < 300, (method, path, response.content)


def test_a_full_token_is_not_refused_by_any_operation(client, org, named):
    secret = make_token(org, scope=TokenScope.FULL, name="full")
    for method, path, _ in operations(client):
        response = call(client, secret, method, path, named)
        assert response.status_code not in (401, 403), (method, path, response.content)


def test_a_trigger_token_of_another_organization_is_404_where_allowed_and_403_elsewhere(
    client, other_org, named
):
    """The scope is checked before anything of the call is looked up: a refused call reveals
    nothing about the object it names."""
    secret = make_token(other_org, scope=TokenScope.TRIGGER, name="theirs")
    for method, path, _ in operations(client):
        response = call(client, secret, method, path, named)
        if (method, path) in TRIGGER_SCOPE and "{" in path:
            assert response.status_code == 404, (method, path, response.content)
        elif (method, path) not in TRIGGER_SCOPE:
            assert response.status_code == 403, (method, path, response.content)
