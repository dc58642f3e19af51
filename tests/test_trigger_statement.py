"""The trigger URL's common case in one statement (runs/trigger_statement.py), held against the
API's operation that answers everything else: the same run, the same task, the same answers."""

import json
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.test import RequestFactory
from django.utils import timezone
from django_q.models import OrmQ

from accounts.models import ApiToken
from accounts.services import token_create
from loops_project import sql
from runs import dispatch, trigger_statement
from runs.models import Run
from tests.conftest import database_url_for_subprocess
from tests.factories import LoopFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
postgresql_only = pytest.mark.skipif(
    not ON_POSTGRESQL,
    reason="SQLite has no data-modifying CTEs: there the API's operation answers every trigger",
)
PER_RUN = {"id", "created_at", "task_id"}


def trigger_request(token: str, path: str = "/api/loop/acme/greeting", body: bytes = b"{}"):
    return RequestFactory().post(
        path, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def columns(run: Run) -> dict:
    return {f.attname: getattr(run, f.attname) for f in Run._meta.concrete_fields}


def test_the_statement_saves_the_run_and_task_the_operation_saves(api, token, loop):
    body = {"customer": "Ana", "items": [1, 2.5, None, "é"]}
    # No query string: the statement (on PostgreSQL); ?mode=async: the API's operation.
    quick = api.post("/api/loop/acme/greeting", json=body)
    general = api.post("/api/loop/acme/greeting?mode=async", json=body)

    assert quick.status_code == general.status_code == 202
    assert quick.headers["Content-Type"] == general.headers["Content-Type"]
    assert quick.json().keys() == general.json().keys() == {"runId", "workflowInstanceId"}
    runs = [Run.objects.get(pk=answer.json()["runId"]) for answer in (quick, general)]
    first, second = ({k: v for k, v in columns(run).items() if k not in PER_RUN} for run in runs)
    assert first == second
    assert first["input"] == body
    assert first["version_id"] == loop.active_version_id
    assert first["triggered_by_token_id"] == ApiToken.objects.get().pk
    for run, answer in zip(runs, (quick, general), strict=True):
        assert run.task_id == answer.json()["workflowInstanceId"]
    # Each queued a worker's turn (until every worker has one), on the same queue.
    turns = list(OrmQ.objects.all())
    assert [(t.task["func"], t.task["args"]) for t in turns] == [(dispatch.WORK_TASK, ())] * 2
    assert {t.key for t in turns} == {dispatch.queue_key()}
    assert ApiToken.objects.get().last_used_at is not None


def test_the_loop_and_organization_are_found_by_id_or_slug(api, org, loop):
    for path in (
        f"/api/loop/{org.pk}/{loop.pk}",
        f"/api/loop/acme/{loop.pk}",
        f"/api/loop/{org.pk}/greeting",
    ):
        response = api.post(path, json={"n": 1})
        assert response.status_code == 202, path
        assert Run.objects.get(pk=response.json()["runId"]).loop_id == loop.pk


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("revoked token", 401),
        ("expired token", 401),
        ("another organization's loop", 404),
        ("another organization in the URL", 404),
        ("unknown loop", 404),
        ("paused loop", 409),
        ("no deployed version", 409),
        ("body not JSON", 400),
        ("input too large", 413),
    ],
)
def test_every_refusal_is_the_operations_and_saves_nothing(
    live_server, org, other_org, loop, settings, case, status
):
    secret, path, body = make_token(org), "/api/loop/acme/greeting", b'{"n": 1}'
    if case == "revoked token":
        revoked, secret = token_create(organization=org, name="old")
        revoked.revoke()
    elif case == "expired token":
        _, secret = token_create(
            organization=org, name="past", expires_at=timezone.now() - timedelta(seconds=1)
        )
    elif case == "another organization's loop":
        LoopFactory(organization=other_org, slug="theirs")
        path = "/api/loop/acme/theirs"
    elif case == "another organization in the URL":
        path = "/api/loop/globex/greeting"
    elif case == "unknown loop":
        path = "/api/loop/acme/nothing"
    elif case == "paused loop":
        loop.paused = True
        loop.save()
    elif case == "no deployed version":
        LoopFactory(organization=org, slug="draft", code=False)
        path = "/api/loop/acme/draft"
    elif case == "body not JSON":
        body = b'{"n": NaN}'
    elif case == "input too large":
        settings.LOOPS_MAX_INPUT_BYTES = 100
        body = b'{"text": "' + b"x" * 200 + b'"}'

    named = path.split("/")[3:]  # the organization and the loop
    assert trigger_statement.answer(trigger_request(secret, path, body), *named) is None
    response = trigger_statement.trigger_url(trigger_request(secret, path, body), *named)
    assert response.status_code == status
    assert Run.objects.count() == 0
    assert OrmQ.objects.count() == 0


def test_a_refused_trigger_counts_once_against_the_tokens_rate(api, loop, settings):
    settings.LOOPS_API_RATE = "2/h"  # a minute's window can end mid-test
    loop.paused = True
    loop.save()
    assert api.post("/api/loop/acme/greeting", json={}).status_code == 409
    assert api.post("/api/loop/acme/greeting", json={}).status_code == 409
    response = api.post("/api/loop/acme/greeting", json={})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"


def test_a_trigger_over_the_rate_saves_nothing(api, loop, settings):
    settings.LOOPS_API_RATE = "1/h"
    assert api.post("/api/loop/acme/greeting", json={}).status_code == 202
    assert api.post("/api/loop/acme/greeting", json={}).status_code == 429
    assert Run.objects.count() == OrmQ.objects.count() == 1


@postgresql_only
def test_the_common_case_is_one_statement_on_postgresql(token, loop):
    response = trigger_statement.answer(trigger_request(token), "acme", "greeting")
    assert response.status_code == 202
    run = Run.objects.get()
    assert response.content == (
        f'{{"runId": "{run.pk}", "workflowInstanceId": "{run.task_id}"}}'.encode()
    )
    assert OrmQ.objects.get().task["func"] == dispatch.WORK_TASK


@postgresql_only
def test_a_connection_lost_since_the_last_request_is_replaced(token, loop):
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    with psycopg.connect(database_url_for_subprocess(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend])

    response = trigger_statement.answer(trigger_request(token), "acme", "greeting")

    assert response.status_code == 202
    assert connection.connection.info.backend_pid != backend
    assert Run.objects.count() == OrmQ.objects.count() == 1


@postgresql_only
def test_a_trigger_whose_answer_was_lost_with_the_connection_is_saved_once(
    token, loop, monkeypatch
):
    fetch_one = sql.fetch_one
    calls = []

    def commit_then_lose_the_connection(statement, params, **options):
        calls.append(options)
        row = fetch_one(statement, params, **options)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return row

    monkeypatch.setattr(sql, "fetch_one", commit_then_lose_the_connection)
    response = trigger_statement.answer(trigger_request(token), "acme", "greeting")

    assert response.status_code == 202
    # The statement again, on a new connection: it finds its run saved (then whether the
    # organization has webhooks, to announce it).
    assert calls[:2] == [{"health_check": False}, {}]
    run = Run.objects.get()
    assert json.loads(response.content)["runId"] == run.pk
    assert OrmQ.objects.count() == 1
