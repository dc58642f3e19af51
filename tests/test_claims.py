"""Claims that race, as the workers of many machines do: limits hold, each claimer gets a run
of its own.

Eight threads with connections of their own claim at the same moment, against the database
only (an advisory lock on PostgreSQL, one writer at a time on SQLite)."""

import threading

import pytest
from django.db import connection

from accounts.models import Organization
from loops.models import Loop
from runs import dispatch, state
from runs.models import Run, RunStatus
from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

CLAIMERS = 8


def _race() -> list:
    start = threading.Barrier(CLAIMERS)
    claims, errors = [], []

    def claimer():
        try:
            start.wait()
            claims.append(state.claim_next())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [claim for claim in claims if claim is not None]


def _pending(loop: Loop, n: int) -> None:
    for _ in range(n):
        RunFactory(loop=loop, status=RunStatus.PENDING, queue=dispatch.queue_key())


@pytest.mark.parametrize("limit", ["loop", "organization"])
def test_racing_claims_never_pass_a_limit_of_one(org, limit):
    loop = LoopFactory(organization=org)
    if limit == "loop":
        Loop.objects.filter(pk=loop.pk).update(concurrency_limit=1)
    else:
        Organization.objects.filter(pk=org.pk).update(concurrency_limit=1)
    _pending(loop, 20)
    assert len(_race()) == 1
    assert Run.objects.filter(status=RunStatus.RUNNING).count() == 1


def test_racing_claimers_each_get_a_run_of_their_own(org):
    """None comes back empty while runs wait (an empty claim ends a worker's turn), and no run
    is taken twice."""
    _pending(LoopFactory(organization=org), 20)
    claims = _race()
    assert len(claims) == CLAIMERS
    assert len({claim.run.pk for claim in claims}) == CLAIMERS
    assert Run.objects.filter(status=RunStatus.RUNNING).count() == CLAIMERS
