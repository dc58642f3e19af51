"""Patch and continue (API.md "Operator control"): retry a run from a step, complete a step
with a given output, fire a sleeping step's timer now. `full` tokens only; each call is
audited (runs.patches)."""

from typing import Any

from ninja import Field, Router, Schema, Status

from accounts.audit import Actor
from loops_project.api_base import ERRORS_FULL, ErrorOut, FullScopeAuth
from runs import patches
from runs.access import get_run_for, get_step_for
from runs.api import RunEnvelope
from runs.models import Run
from runs.schemas import run_payload

router = Router(tags=["runs"], auth=FullScopeAuth())

ANSWERS = {202: RunEnvelope, 409: ErrorOut, **ERRORS_FULL}


class RetryFromIn(Schema):
    stepId: str = Field(..., min_length=1, max_length=40, description="The step to retry from.")


class CompleteIn(Schema):
    output: Any = Field(
        ..., description="Any JSON value (null included): what the step returns from now on."
    )


def _answer(run: Run) -> Status:
    run = Run.objects.select_related("loop", "version").get(pk=run.pk)
    return Status(202, {"data": run_payload(run)})


@router.post(
    "/runs/{run_id}/retry-from", response=ANSWERS, summary="Retry a run from one of its steps"
)
def retry_from(request, run_id: str, payload: RetryFromIn):
    """A failed or cancelled run drops the checkpoints of `stepId` and of every step recorded
    after it (with the iterations nested under them), and resumes on its pinned version:
    earlier steps return their saved results, `stepId` and the rest run again. Child runs
    that dropped steps started are kept, detached (cancelled if still going). 409
    `not_retryable` when the run has not failed and is not cancelled."""
    run = get_run_for(request.auth.organization, run_id)
    step = get_step_for(run, payload.stepId)
    return _answer(patches.run_retry_from(run=run, step=step, actor=Actor.from_request(request)))


@router.post(
    "/runs/{run_id}/steps/{step_id}/complete",
    response=ANSWERS,
    summary="Complete a failed or waiting step with a given output",
)
def complete_step(request, run_id: str, step_id: str, payload: CompleteIn):
    """The step takes `output` as if it had returned it and the run carries on. A waiting
    step is resolved as an answer or event would resolve it (a child run it waits for is
    cancelled). A failed step of a failed or cancelled run succeeds with the output, the steps
    recorded after it are dropped, and the run resumes on its pinned version. The output is
    checked as any input (JSON Loops can store, at most LOOPS_MAX_INPUT_BYTES: 413 above).
    409 `not_completable` for any other step or run state (a step.each is never completed)."""
    run = get_run_for(request.auth.organization, run_id)
    step = get_step_for(run, step_id)
    actor = Actor.from_request(request)
    return _answer(patches.step_complete(run=run, step=step, output=payload.output, actor=actor))


@router.post(
    "/runs/{run_id}/steps/{step_id}/fire", response=ANSWERS, summary="Wake a sleeping step now"
)
def fire_step(request, run_id: str, step_id: str):
    """A waiting run's sleeping step (`step.sleep`, `step.sleep_until`, or a `step.do`
    waiting for its retry's delay) wakes now instead of at its time, and the run is queued.
    409 `not_sleeping` for any other step."""
    run = get_run_for(request.auth.organization, run_id)
    step = get_step_for(run, step_id)
    return _answer(patches.step_fire(run=run, step=step, actor=Actor.from_request(request)))
