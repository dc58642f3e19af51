"""The trigger URL's common case in one statement (PostgreSQL with django-q2's ORM broker).

`POST /api/loop/{org}/{loop}` with a bearer token, asynchronous and without an Idempotency-Key,
is most of an integration's traffic. The API's operation (runs.api.trigger) answers it with
four round trips (health check, token, loop, then the run with its queue row) and six model
instances. Here the token check, the loop lookup with its checks, the run, a worker's turn
(when too few are queued) and the token's last-used time are one prepared statement, which
writes the run only if every check of the operation passes (each compiled from the queryset or
Q that the operation's own lookups use: `_rows`): 2.3 million instructions of the web process
per trigger instead of 6.3 million (bench/trigger_instructions.py; a 401 costs 1.1 million),
and about 1.8 times the requests per second (bench/api_load.py, measured before the operation
grew). Anything else -- another backend or broker, a query string, an Idempotency-Key, a body
that is not JSON or too large, a token over its rate, and every refusal (401, 404, 409) -- goes
to the operation, which answers as it always does: this path either answers exactly what the
operation would have (the same row, the same 202) or steps aside having written nothing but the
token's last use.
"""

# ruff: noqa: S608 - table and column names from the models; every value is a parameter

from functools import cache

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, InterfaceError, OperationalError, connection
from django.db.models import CharField, DateTimeField
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ApiToken, Organization
from accounts.services import LAST_USED_GRANULARITY, token_hash_of
from loops.access import loop_lookup_field
from loops.models import Loop
from loops_project import ids, sql
from loops_project.api import api, count_request
from loops_project.api_base import trigger_body
from loops_project.errors import DomainError
from loops_project.prepared import Compiled, Parameter, compile_query
from runs import dispatch, reactions, state, webhooks
from runs.models import Run, RunStatus, TriggerType, Webhook
from runs.rules import TRIGGERABLE, check_input

RUN_FIELDS = sql.fields_of(Run)
# The run's columns that come from the token's and the loop's rows.
FROM_ROWS = {
    "organization": "l.organization",
    "loop": "l.id",
    "version": "l.version",
    "triggered_by_token": "l.token",
}
# The run's columns set per trigger; every other column takes its field's default, as in
# runs.services.run_trigger.
PER_TRIGGER = ("id", "created_at", "trigger_type", "input", "task_id", "queue")
PARAMETER = object()


@csrf_exempt
def trigger_url(request: HttpRequest, org: str, loop: str) -> HttpResponse:
    """POST /api/loop/{org}/{loop}: the common case here, everything else by the API's
    operation, which also documents the URL."""
    return answer(request, org, loop) or _operation()(request, org=org, loop=loop)


@cache
def _operation():
    patterns, _, _ = api.urls
    (view,) = [p.callback for p in patterns if p.name == "trigger"]
    return view


def answer(request: HttpRequest, org: str, loop: str) -> HttpResponse | None:
    """The operation's 202 for a trigger saved by the one statement, or None (nothing saved)."""
    if connection.vendor != "postgresql" or request.method != "POST":
        return None
    if request.META.get("QUERY_STRING") or "HTTP_IDEMPOTENCY_KEY" in request.META:
        return None  # live mode, timeouts and keys: the operation
    scheme, _, raw = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    token_hash = token_hash_of(raw) if scheme.lower() == "bearer" else None
    if token_hash is None:
        return None
    try:
        value = trigger_body(request)
        check_input(value)
    except DomainError:
        return None
    usage = count_request(request, token_hash)
    if usage is not None and usage["should_limit"]:
        return None
    if not dispatch.orm_broker_in_database():
        return None  # another broker: the turn is pushed after the run commits
    run_id, task_id, now = ids.run_id(), dispatch.new_execution_name(), timezone.now()
    per_trigger = {
        "id": run_id,
        "created_at": now,
        "trigger_type": TriggerType.API_TOKEN,
        "input": value,
        "task_id": task_id,
        "queue": dispatch.queue_key(),
    }
    statement = _statement(loop_lookup_field(loop))
    params = [
        *statement.bind(token_hash=token_hash, now=now, org=org, loop=loop),
        now, now - LAST_USED_GRANULARITY,
        *(sql.prep(f, per_trigger[f.name]) if f.name in per_trigger else default
          for f, written, default in _run_columns() if written is PARAMETER),
        *dispatch.turn_params(now),
    ]  # fmt: skip
    saved = _save(statement.sql, params, run_id)
    if saved is None:
        return None
    organization_id, loop_id, has_webhooks = saved
    if has_webhooks:  # the run's first status is announced, as the operation does
        reactions.after(
            state.Change(run_id, organization_id, loop_id, None, RunStatus.PENDING, True)
        )
    body = {"runId": run_id, "workflowInstanceId": task_id}
    return api.create_response(request, body, status=202)


def _save(statement: str, params: list, run_id: str) -> tuple | None:
    """Run the statement without the connection's health check (one round trip less per
    trigger); returns the run's organization and loop and whether the organization has
    webhooks, or None when nothing was saved. A connection found lost is replaced and the
    statement run again: safe, because the run's id is in it, so a first attempt that did
    commit before the connection went makes the second fail on the run's primary key."""
    try:
        return _saved(sql.fetch_one(statement, params, health_check=False))
    except (OperationalError, InterfaceError):
        connection.close()
    try:
        return _saved(sql.fetch_one(statement, params))
    except IntegrityError:
        run = Run.objects.filter(pk=run_id).values_list("organization_id", "loop_id").first()
        if run is not None:
            return (*run, webhooks.organization_has_webhooks(run[0]))
        raise


def _saved(row: tuple | None) -> tuple | None:
    if row is None or row[0] != 1:
        return None
    return row[1:]


@cache
def _run_columns() -> tuple:
    """How the statement writes each of the run's columns: (field, written, default), where
    written is an expression of the token's and the loop's rows, NULL for a NULL default, or
    PARAMETER: the field's default as saved, or the per-trigger value. A default computed per
    row (a callable) must be per-trigger."""
    columns = []
    for field in RUN_FIELDS:
        if field.name in FROM_ROWS:
            columns.append((field, FROM_ROWS[field.name], None))
        elif field.name in PER_TRIGGER:
            columns.append((field, PARAMETER, None))
        elif field.has_default() and callable(field.default):
            raise ImproperlyConfigured(f"Run.{field.name} has a per-row default: in PER_TRIGGER")
        else:
            default = sql.prep(field, field.get_default())
            columns.append((field, "NULL" if default is None else PARAMETER, default))
    return tuple(columns)


def _rows(loop_field: str) -> tuple[Compiled, Compiled]:
    """The token's row and the loop's, by the ORM path's own definitions: an active token
    (ApiToken.objects.active, as token_authenticate) of the organization the URL names
    (Organization.objects.named, as accounts.access.org_is_named), and a loop named by its id
    or slug (loops.access.loop_lookup_field, as get_loop_for) that may start a run
    (runs.rules.TRIGGERABLE, as check_triggerable)."""
    now = Parameter("now", DateTimeField())
    tokens = (
        ApiToken.objects.active(now)
        .filter(
            token_hash=Parameter("token_hash", CharField()),
            organization__in=Organization.objects.named(Parameter("org", CharField())),
        )
        .values("id", "organization")
    )
    loops = Loop.objects.filter(TRIGGERABLE, **{loop_field: Parameter("loop", CharField())}).values(
        "id", "organization", "active_version"
    )
    return compile_query(tokens), compile_query(loops)


@cache
def _statement(loop_field: str) -> Compiled:
    """The statement; its named parameters are the first ones (the token's and the loop's rows),
    the others follow in `answer`."""
    c = sql.column
    tokens, loops = _rows(loop_field)
    values = ", ".join(
        sql.cast(f) if written is PARAMETER else written for f, written, _ in _run_columns()
    )
    statement = (
        # The active token, if the URL names its organization.
        f"WITH t AS ({tokens.sql}), "
        # Its organization's loop, if it may start a run.
        "l AS (SELECT found.id, found.organization, found.active_version AS version, "
        f"t.id AS token FROM ({loops.sql}) found JOIN t ON found.organization = t.organization), "
        # The token's last use, at most once per LAST_USED_GRANULARITY (as token_authenticate).
        f"used AS (UPDATE {sql.table(ApiToken)} SET {c(ApiToken, 'last_used_at')} = %s "
        f"WHERE {c(ApiToken, 'id')} = (SELECT id FROM t) "
        f"AND ({c(ApiToken, 'last_used_at')} IS NULL OR {c(ApiToken, 'last_used_at')} < %s)), "
        f"run AS (INSERT INTO {sql.table(Run)} ({', '.join(c(Run, f.name) for f in RUN_FIELDS)}) "
        f"SELECT {values} FROM l RETURNING 1), "
        # A worker's turn, if too few are queued (runs.dispatch).
        f"turn AS ({dispatch.turn_statement('run')}) "
        # Whether the run was saved, and what announcing it needs (runs.reactions).
        "SELECT (SELECT COUNT(*) FROM run), l.organization, l.id, "
        f"EXISTS (SELECT 1 FROM {sql.table(Webhook)} w "
        f"WHERE w.{c(Webhook, 'organization')} = l.organization AND w.{c(Webhook, 'active')}) "
        "FROM l"
    )
    return Compiled(statement, tokens.params + loops.params)
