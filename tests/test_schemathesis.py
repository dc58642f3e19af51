"""Schemathesis against the API's own OpenAPI document, over real HTTP with a full token.

Every operation gets generated requests, ones that fit the schema and ones that do not; none
may answer a 5xx and every answer must match the documented schema of its status code.
(schemathesis' lazy pytest loader does not run on pytest 9 yet, so this drives its Python API:
one Hypothesis search per operation.)"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from loops.schedules import schedule_create
from loops.services import loop_update
from runs.engine.executor import execute_run
from runs.models import Run
from runs.services import run_trigger, run_trigger_batch
from runs.webhooks import webhook_create
from tests.conftest import wait_until
from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 15
APPROVAL_CODE = """\
class HealthLoop(Loop):
    def run(self, event, step):
        return step.approve("Ship it?", "Deploy to production")
"""


@pytest.fixture
def seeded(org, loop, settings) -> dict:
    """Path values that name seeded objects: an org, loops, a waiting run with its step, a
    batch, a webhook and a schedule."""
    # No worker runs here: live mode must not hold a request for the default 30 s.
    settings.LOOPS_LIVE_TIMEOUT_DEFAULT = 0
    settings.LOOPS_LIVE_TIMEOUT_MAX = 1
    gate = LoopFactory(organization=org, slug="gate", code=APPROVAL_CODE)
    loop_update(loop=LoopFactory(organization=org, slug="paused"), paused=True)
    run = run_trigger(loop=gate, input={}, trigger_type="api_token")
    execute_run(run.pk)  # or a worker cluster of the session, if one runs, takes it first
    wait_until(lambda: Run.objects.get(pk=run.pk).status == "waiting", timeout=60)
    RunFactory(loop=loop)
    batch = run_trigger_batch(loop=loop, inputs=[1, 2], trigger_type="api_token")
    hook = webhook_create(organization=org, url="https://example.com/hook")
    schedule = schedule_create(loop=loop, cron="0 * * * *")
    return {
        "org": "acme", "loop": "greeting", "number": 1, "run_id": run.pk,
        "step_id": run.steps.get().pk, "batch_id": batch.pk, "hook_id": hook.pk,
        "schedule_id": schedule.pk,
    }  # fmt: skip


def aim_at_seeded(case, seeded: dict) -> None:
    """About half of the cases name seeded objects, so that requests reach past the lookups;
    the other half explore unknown ids."""
    params = case.path_parameters or {}
    for name, value in seeded.items():
        if name in params and len(str(params[name])) % 2 == 0:
            params[name] = value


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(live_server, token, seeded, mode):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            aim_at_seeded(case, seeded)
            case.call_and_validate(
                base_url=live_server.url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=30,
            )

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
