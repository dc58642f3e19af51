"""The HTTP contract of respond, events, resume, restart and cancel (codes and shapes)."""

import pytest

from loops.services import loop_deploy
from runs.engine.executor import execute_run
from runs.models import Run, RunEvent, RunStatus
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

WAITS_CODE = """\
class HealthLoop(Loop):
    def run(self, event, step):
        kind = event.body["kind"]
        if kind == "approval":
            return step.approve("Ship it?", "Deploy to production")
        if kind == "input":
            return step.ask("Your name", "What is your name?")
        return step.wait_for_event("Go signal", "go")
"""


@pytest.fixture
def waits(org):
    return LoopFactory(organization=org, slug="waits", code=WAITS_CODE)


def waiting_run(loop, kind: str) -> Run:
    run = run_trigger(loop=loop, input={"kind": kind}, trigger_type="api_token")
    # Executed here; a worker cluster of the test session, if one runs, may take it first.
    execute_run(run.pk)
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=60)
    run.refresh_from_db()
    assert run.pending["kind"] == kind
    return run


def error_code(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]["code"]


def test_pending_is_shown_on_a_waiting_run(api, waits):
    run = waiting_run(waits, "approval")
    data = api.get(f"/api/v1/runs/{run.pk}").json()["data"]
    assert data["status"] == "waiting"
    assert data["pending"]["kind"] == "approval"
    assert data["pending"]["stepName"] == "Ship it?"
    assert data["pending"]["prompt"] == "Deploy to production"


def test_approve_answers_202_with_id_and_status(api, waits):
    run = waiting_run(waits, "approval")
    response = api.post(f"/api/v1/runs/{run.pk}/respond", json={"action": "approve"})
    assert response.status_code == 202, response.text
    assert response.json() == {"data": {"id": run.pk, "status": response.json()["data"]["status"]}}
    again = api.post(f"/api/v1/runs/{run.pk}/respond", json={"action": "approve"})
    assert error_code(again, 409) == "not_waiting_for_person"


def test_reject_with_a_reason_is_202(api, waits):
    run = waiting_run(waits, "approval")
    response = api.post(
        f"/api/v1/runs/{run.pk}/respond", json={"action": "reject", "reason": "Not today"}
    )
    assert response.status_code == 202
    step = run.steps.get()
    assert step.status == "rejected"
    assert step.output["reason"] == "Not today"


def test_an_action_that_does_not_match_the_wait_is_400(api, waits):
    approval = waiting_run(waits, "approval")
    question = waiting_run(waits, "input")
    response = api.post(f"/api/v1/runs/{approval.pk}/respond", json={"action": "input", "input": 1})
    assert error_code(response, 400) == "action_mismatch"
    response = api.post(f"/api/v1/runs/{question.pk}/respond", json={"action": "approve"})
    assert error_code(response, 400) == "action_mismatch"
    response = api.post(f"/api/v1/runs/{question.pk}/respond", json={"action": "input"})
    assert error_code(response, 400) == "input_required"
    assert [e["field"] for e in response.json()["error"]["details"]] == ["input"]
    response = api.post(f"/api/v1/runs/{question.pk}/respond", json={"action": "shrug"})
    assert error_code(response, 400) == "invalid_action"
    response = api.post(f"/api/v1/runs/{question.pk}/respond", json={})
    assert error_code(response, 422) == "validation_error"
    response = api.post(
        f"/api/v1/runs/{question.pk}/respond", json={"action": "input", "input": "Ana"}
    )
    assert response.status_code == 202
    assert question.steps.get().output == "Ana"


def test_respond_to_a_run_not_waiting_for_a_person_is_409(api, waits, loop):
    event_run = waiting_run(waits, "event")
    response = api.post(f"/api/v1/runs/{event_run.pk}/respond", json={"action": "approve"})
    assert error_code(response, 409) == "not_waiting_for_person"
    done = RunFactory(loop=loop, status=RunStatus.SUCCEEDED)
    response = api.post(f"/api/v1/runs/{done.pk}/respond", json={"action": "approve"})
    assert error_code(response, 409) == "not_waiting_for_person"


def test_events_resume_a_matching_wait_or_are_kept(api, waits):
    run = waiting_run(waits, "event")
    early = api.post(f"/api/v1/runs/{run.pk}/events", json={"type": "other", "payload": 1})
    assert early.status_code == 202
    assert early.json()["data"]["consumed"] is False
    assert early.json()["data"]["type"] == "other"
    response = api.post(f"/api/v1/runs/{run.pk}/events", json={"type": "go", "payload": {"x": 1}})
    assert response.status_code == 202
    assert response.json()["data"]["consumed"] is True
    assert run.steps.get().output == {"x": 1}
    assert RunEvent.objects.filter(run=run).count() == 2
    assert error_code(api.post(f"/api/v1/runs/{run.pk}/events", json={}), 422)


def test_events_to_an_ended_run_are_409(api, loop):
    done = RunFactory(loop=loop, status=RunStatus.FAILED)
    response = api.post(f"/api/v1/runs/{done.pk}/events", json={"type": "go"})
    assert error_code(response, 409) == "run_ended"


def test_cancel_is_202_then_409(api, waits):
    run = waiting_run(waits, "event")
    response = api.post(f"/api/v1/runs/{run.pk}/cancel")
    assert response.status_code == 202
    assert response.json()["data"]["status"] == "cancelled"
    assert response.json()["data"]["id"] == run.pk
    assert error_code(api.post(f"/api/v1/runs/{run.pk}/cancel"), 409) == "run_ended"


def test_resume_a_cancelled_run_is_202_and_a_succeeded_run_is_409(api, waits, loop):
    run = waiting_run(waits, "event")
    api.post(f"/api/v1/runs/{run.pk}/cancel")
    response = api.post(f"/api/v1/runs/{run.pk}/resume")
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["status"] in ("pending", "running", "waiting")  # a worker may already run it
    assert data["attempt"] == 2
    assert data["version"] == 1
    done = RunFactory(loop=loop, status=RunStatus.SUCCEEDED)
    assert error_code(api.post(f"/api/v1/runs/{done.pk}/resume"), 409) == "not_resumable"
    waiting = waiting_run(waits, "approval")
    assert error_code(api.post(f"/api/v1/runs/{waiting.pk}/resume"), 409) == "not_resumable"


def test_restart_is_201_with_a_new_run_on_the_active_version(api, loop):
    original = RunFactory(loop=loop, status=RunStatus.FAILED, input={"name": "Zed"})
    loop_deploy(loop=loop, code=loop.active_version.code.replace("Hello", "Hi"))
    response = api.post(f"/api/v1/runs/{original.pk}/restart")
    assert response.status_code == 201
    new = response.json()["data"]
    assert new["id"] != original.pk
    assert new["restartedFrom"] == original.pk
    assert new["input"] == {"name": "Zed"}
    assert new["version"] == 2
    assert new["status"] in ("pending", "running", "succeeded")  # a worker may already run it
    original.refresh_from_db()
    assert original.status == RunStatus.FAILED


def test_control_of_another_orgs_run_or_an_unknown_run_is_404(api, other_org):
    foreign = RunFactory(loop=LoopFactory(organization=other_org), status=RunStatus.WAITING)
    for run_id in (foreign.pk, "run_unknown"):
        for action, body in (
            ("respond", {"action": "approve"}),
            ("events", {"type": "go"}),
            ("resume", None),
            ("restart", None),
            ("cancel", None),
        ):
            response = api.post(f"/api/v1/runs/{run_id}/{action}", json=body)
            assert error_code(response, 404) == "not_found", action
    foreign.refresh_from_db()
    assert foreign.status == RunStatus.WAITING


SCAN_CODE = """\
class HealthLoop(Loop):
    def run(self, event, step):
        return step.wait_for_scan("Face check", subject={"name": "Ana"})
"""


def test_scan_result_is_202_once_then_409(api, org):
    scanning = LoopFactory(organization=org, slug="scanning", code=SCAN_CODE)
    run = waiting_run(scanning, "scan")
    scan_id = run.pending["scanId"]
    scan = api.get(f"/api/v1/scans/{scan_id}").json()["data"]
    assert (scan["id"], scan["runId"], scan["status"]) == (scan_id, run.pk, "pending")
    assert scan["link"].startswith("http")
    response = api.post(f"/api/v1/scans/{scan_id}/result", json=[1, 2])
    assert error_code(response, 422) == "invalid_result"
    response = api.post(f"/api/v1/scans/{scan_id}/result", content=b"{oops")
    assert error_code(response, 400) == "invalid_json"
    response = api.post(f"/api/v1/scans/{scan_id}/result", json={"heartRate": 72})
    assert response.status_code == 202
    assert response.json()["data"]["result"] == {"heartRate": 72}
    assert response.json()["data"]["status"] == "completed"
    again = api.post(f"/api/v1/scans/{scan_id}/result", json={"heartRate": 80})
    assert error_code(again, 409) == "scan_closed"
    assert api.get("/api/v1/scans/scan_unknown").status_code == 404
