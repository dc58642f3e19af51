"""Runs have no database foreign keys (bulk inserts); Django carries out on_delete instead."""

import pytest
from django.db.models import ProtectedError

from accounts.models import ApiToken
from runs.models import LogEntry, Run, Step
from tests.factories import LoopFactory, RunFactory, make_token


@pytest.mark.django_db
def test_deleting_a_run_deletes_its_steps_and_logs_and_unlinks_its_restarts(org):
    loop = LoopFactory(organization=org)
    run = RunFactory(loop=loop)
    restart = RunFactory(loop=loop, restarted_from=run)
    other = RunFactory(loop=loop)
    step = Step.objects.create(run=run, key="Charge", name="Charge", order=0)
    kept_step = Step.objects.create(run=other, key="Charge", name="Charge", order=0)
    LogEntry.objects.create(run=run, loop=loop, step=step, level="info", message="hi")

    run.delete()

    assert not Step.objects.filter(pk=step.pk).exists()
    assert not LogEntry.objects.filter(run_id=run.pk).exists()
    restart.refresh_from_db()
    assert restart.restarted_from_id is None
    assert Step.objects.filter(pk=kept_step.pk).exists()


@pytest.mark.django_db
def test_deleting_a_token_keeps_its_runs_without_the_reference(org):
    make_token(org, name="ci")
    token = ApiToken.objects.get(organization=org, name="ci")
    run = RunFactory(loop=LoopFactory(organization=org), triggered_by_token=token)

    token.delete()

    run.refresh_from_db()
    assert run.triggered_by_token_id is None


@pytest.mark.django_db
def test_a_version_that_runs_were_pinned_to_cannot_be_deleted(org):
    run = RunFactory(loop=LoopFactory(organization=org))

    with pytest.raises(ProtectedError):
        run.version.delete()
    assert Run.objects.filter(pk=run.pk, version=run.version).exists()
