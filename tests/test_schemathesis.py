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

from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

# Path values that name the seeded objects, used for about half of the generated cases so that
# requests reach past the lookups (the other half explores unknown ids).
SEEDED = {"org": "acme", "loop": "greeting", "number": 1}
EXAMPLES = 15


@pytest.fixture
def seeded(org, loop, settings):
    # No worker runs here: live mode must not hold a request for the default 30 s.
    settings.LOOPS_LIVE_TIMEOUT_DEFAULT = 0
    settings.LOOPS_LIVE_TIMEOUT_MAX = 1
    LoopFactory(organization=org, slug="paused").paused = True
    RunFactory(loop=loop)


def aim_at_seeded(case) -> None:
    params = case.path_parameters or {}
    for name, value in SEEDED.items():
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
            aim_at_seeded(case)
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
