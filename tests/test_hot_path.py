"""The worker's hot path asks the database nothing it already knows, in as few round trips as
it can: a one-step run costs the claim, then the run's end, which carries the step (its start
and its end, held back meanwhile); each further step costs its start, with the end of the step
before it."""

import pytest
from django.db import connection

from loops.models import Loop
from runs import tasks
from runs.models import RunStatus, Step
from tests.engine_helpers import deploy, program
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

# Statements per one-step run: PostgreSQL takes its claim in two (the claims' lock, then the
# choice, the claim and the turns served in one), sent in one round trip with its BEGIN and
# COMMIT; SQLite in three. Then the run's end, which carries the step's row on PostgreSQL (a
# statement of its own on SQLite). The last claim, which finds nothing, costs what its choice
# costs.
CLAIM = {"postgresql": 2, "sqlite": 3}
PER_RUN = {"postgresql": 3, "sqlite": 5}
PER_FURTHER_STEP = {"postgresql": 1, "sqlite": 2}
NOTHING_LEFT = {"postgresql": 2, "sqlite": 1}


@pytest.fixture(autouse=True)
def _steps_ends_wait_for_the_next_write(settings):
    """However slowly this machine runs the program, held step writes wait for the next one."""
    settings.LOOPS_STEP_HOLD_SECONDS = 30


def statements_of(action) -> list[str]:
    seen = []

    def count(execute, sql, params, many, context):
        if not sql.lstrip().upper().startswith(("SAVEPOINT", "RELEASE")):
            seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        action()
    return seen


def compiled(loop) -> None:
    """A first run of the loop: the worker has compiled its program (once per version)."""
    RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": "warm"})
    tasks.work()


def test_a_one_step_run_costs_the_fewest_statements(loop):
    loop = Loop.objects.select_related("active_version").get(pk=loop.pk)
    compiled(loop)
    for n in range(10):
        RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": str(n)})

    done = []
    seen = statements_of(lambda: done.append(tasks.work()))

    assert done == [10]
    expected = 10 * PER_RUN[connection.vendor] + NOTHING_LEFT[connection.vendor]
    assert len(seen) == expected, "\n".join(s[:80] for s in seen)
    # Nothing is read again: no SELECT of a run, its loop, its version or its steps.
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "advisory" not in s]
    assert reads == []


def test_each_further_step_costs_its_start_alone(org):
    loop = deploy(org, program("for i in range(4):\n    step.do(f'Step {i}', lambda: i)\nreturn 4"))
    compiled(loop)
    run = RunFactory(loop=loop, status=RunStatus.PENDING, input={})

    done = []
    seen = statements_of(lambda: done.append(tasks.work()))

    assert done == [1]
    expected = (
        PER_RUN[connection.vendor]
        + 3 * PER_FURTHER_STEP[connection.vendor]
        + NOTHING_LEFT[connection.vendor]
    )
    assert len(seen) == expected, "\n".join(s[:80] for s in seen)
    # Every step's end was written, with its output.
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    steps = Step.objects.filter(run=run).order_by("order")
    assert [(s.status, s.output) for s in steps] == [("succeeded", i) for i in range(4)]


def test_without_holding_every_step_write_is_a_statement_of_its_own(loop, settings):
    settings.LOOPS_STEP_HOLD_SECONDS = 0
    loop = Loop.objects.select_related("active_version").get(pk=loop.pk)
    compiled(loop)
    run = RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": "once"})

    seen = statements_of(tasks.work)

    # The claim, the step's start, its end, the run's end.
    assert len(seen) == CLAIM[connection.vendor] + 3 + NOTHING_LEFT[connection.vendor], "\n".join(
        s[:80] for s in seen
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert Step.objects.get(run=run).status == "succeeded"
