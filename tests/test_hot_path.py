"""The worker's hot path asks the database nothing it already knows: a one-step run costs the
claim, the step's start and end, and the run's end."""

import pytest
from django.db import connection

from loops.models import Loop
from runs import tasks
from runs.models import RunStatus
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db

# Statements per one-step run: PostgreSQL takes its claim in two (the claims' lock, then the
# choice, the claim and the turns served in one); SQLite in three. Then the step's start, its
# end, and the run's end. The last claim, which finds nothing, costs what its choice costs.
PER_RUN = {"postgresql": 5, "sqlite": 6}
NOTHING_LEFT = {"postgresql": 2, "sqlite": 1}


def statements_of(action) -> list[str]:
    seen = []

    def count(execute, sql, params, many, context):
        if not sql.lstrip().upper().startswith(("SAVEPOINT", "RELEASE")):
            seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        action()
    return seen


def test_a_one_step_run_costs_the_fewest_statements(loop):
    loop = Loop.objects.select_related("active_version").get(pk=loop.pk)
    RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": "warm"})
    tasks.work()  # the worker has compiled the program (once per version)
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
