"""A loop triggered over real HTTP, executed by the real django-q2 worker cluster."""

import pytest

from runs.models import Run
from tests.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_greeting_through_api_succeeds_with_one_step(worker, api, org, loop):
    response = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={"name": "Khaya"})
    assert response.status_code == 202
    body = response.json()
    assert body["runId"].startswith("run_")
    assert body["workflowInstanceId"]

    def ended():
        run = api.get(f"/api/v1/runs/{body['runId']}").json()["data"]
        return run if run["status"] in ("succeeded", "failed") else None

    run = wait_until(ended, timeout=60)
    assert run["status"] == "succeeded"
    assert run["output"] == {"greeting": "Hello, Khaya!"}
    assert run["triggerType"] == "api_token"
    assert run["version"] == 1
    assert run["input"] == {"name": "Khaya"}
    assert [(s["name"], s["status"], s["attempts"]) for s in run["steps"]] == [
        ("Build greeting", "succeeded", 1)
    ]
    assert run["steps"][0]["output"] == "Hello, Khaya!"
    assert run["startedAt"]
    assert run["completedAt"]
    assert run["durationMs"] is not None


def test_live_mode_answers_200_with_the_ended_run(worker, api, org, loop):
    response = api.post(
        f"/api/loop/{loop.organization_id}/{loop.pk}?mode=live&timeout=60", json={"name": "Ana"}
    )
    assert response.status_code == 200
    assert response.json()["data"]["output"] == {"greeting": "Hello, Ana!"}
    assert Run.objects.get().status == "succeeded"


def test_a_trigger_without_a_body_runs_the_greeting_with_an_empty_object(worker, api, org, loop):
    """`curl -X POST` without `-d`: the input is {}, and `event.body.get("name")` works."""
    response = api.post(f"/api/loop/{org.slug}/{loop.slug}")
    assert response.status_code == 202
    run_id = response.json()["runId"]

    def ended():
        run = api.get(f"/api/v1/runs/{run_id}").json()["data"]
        return run if run["status"] in ("succeeded", "failed") else None

    run = wait_until(ended, timeout=60)
    assert (run["status"], run["input"], run["output"]) == (
        "succeeded", {}, {"greeting": "Hello, there!"}
    )  # fmt: skip
