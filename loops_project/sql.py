"""SQL of its own for the few statements on the hottest paths: every trigger, every step.

On these paths the ORM's query building costs more than the database's work (a token lookup:
~1 ms of Python on these machines, 0.2 ms in PostgreSQL). Statements here are built once
from the models' metadata (table and column names only; every value is a parameter) and, on
PostgreSQL, bound server-side and prepared on the connection: parsed and planned once, not
per request. They run in the caller's transaction like any ORM query, with Django's error
translation and connection health check; instances are built as the ORM builds them.
Everything else goes through the ORM.
"""

# ruff: noqa: S608

import functools
from functools import cache

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Field, Model


def quote(name: str) -> str:
    return connection.ops.quote_name(name)


def table(model: type[Model]) -> str:
    return quote(model._meta.db_table)


def column(model: type[Model], name: str) -> str:
    return quote(model._meta.get_field(name).column)


def fields_of(model: type[Model], *, exclude: tuple[str, ...] = ()) -> tuple[Field, ...]:
    return tuple(f for f in model._meta.concrete_fields if f.name not in exclude)


def column_list(fields: tuple[Field, ...], alias: str) -> str:
    return ", ".join(f"{alias}.{quote(f.column)}" for f in fields)


def cast(field: Field) -> str:
    """A placeholder typed as the field's column, for where PostgreSQL cannot infer the type
    of a server-side bound parameter (a SELECT list)."""
    if connection.vendor != "postgresql":
        return "%s"
    return f"CAST(%s AS {field.db_type(connection)})"


def prep(field: Field, value):
    """A value as the field saves it (JSON, enums, time zones)."""
    return field.get_db_prep_save(value, connection)


def _cursor(db, health_check: bool = True):
    if health_check:
        db.close_if_health_check_failed()
    db.ensure_connection()
    if db.vendor == "postgresql":
        return psycopg.Cursor(db.connection), {"prepare": True}
    return db.cursor(), {}  # Django's cursor: it applies the execute wrappers itself


def _run(db, cursor, sql: str, params: list, options: dict) -> None:
    """Execute through the connection's execute wrappers (connection.execute_wrapper), as
    Django's own cursors do, so that what watches the ORM's queries sees these too."""

    def execute(sql, params, many, context):
        return cursor.execute(sql, params, **options)

    if not options:  # Django's own cursor
        cursor.execute(sql, params)
        return
    for wrapper in reversed(db.execute_wrappers):
        execute = functools.partial(wrapper, execute)
    execute(sql, params, False, {"connection": db, "cursor": cursor})


def execute(sql: str, params: list, *, health_check: bool = True) -> int:
    """Run one statement; returns its row count. Without the health check (a round trip), a
    connection lost since the last request fails the statement instead of being replaced."""
    db = connections[DEFAULT_DB_ALIAS]
    cursor, options = _cursor(db, health_check)
    with db.wrap_database_errors, cursor:
        _run(db, cursor, sql, params, options)
        return cursor.rowcount


def fetch_one(sql: str, params: list, *, health_check: bool = True) -> tuple | None:
    db = connections[DEFAULT_DB_ALIAS]
    cursor, options = _cursor(db, health_check)
    with db.wrap_database_errors, cursor:
        _run(db, cursor, sql, params, options)
        return cursor.fetchone()


def fetch_one_in_transaction(*statements: tuple[str, list]) -> tuple | None:
    """Run `statements` in a transaction of their own and return the last one's first row.

    On PostgreSQL outside a transaction, BEGIN, the statements and COMMIT go in one round trip
    (a psycopg pipeline): the server still runs them one after the other, so a statement that
    waits for a lock holds back the ones after it and takes its snapshot once it has the lock.
    Elsewhere (SQLite, or inside the caller's transaction) they run one by one in an atomic
    block."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor != "postgresql" or db.in_atomic_block:
        with transaction.atomic():
            for sql, params in statements[:-1]:
                execute(sql, params)
            return fetch_one(*statements[-1])
    cursor, options = _cursor(db)
    pg = db.connection
    with db.wrap_database_errors, cursor:
        try:
            with pg.pipeline():
                pg.execute("BEGIN")
                for sql, params in statements:
                    _run(db, cursor, sql, params, options)
                pg.execute("COMMIT")
            return cursor.fetchone()
        except BaseException:
            # A failed statement leaves the transaction aborted (the rest of the pipeline was
            # skipped): end it, so that the connection is usable again.
            if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not pg.closed:
                pg.execute("ROLLBACK")
            raise


@cache
def _converters(model: type[Model], fields: tuple[Field, ...], vendor: str) -> tuple:
    # The backend's converters, then the field's, as the ORM's compiler applies them.
    db = connections[DEFAULT_DB_ALIAS]
    found = []
    for i, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        converters = db.ops.get_db_converters(col) + col.get_db_converters(db)
        if converters:
            found.append((i, col, converters))
    return tuple(found)


def instance(model: type[Model], fields: tuple[Field, ...], values) -> Model:
    """An instance from its columns' values, as the ORM builds one (backend and field
    converters, then from_db; fields left out are deferred)."""
    db = connections[DEFAULT_DB_ALIAS]
    values = list(values)
    for i, col, converters in _converters(model, fields, db.vendor):
        for convert in converters:
            values[i] = convert(values[i], col, db)
    if len(fields) == len(model._meta.concrete_fields):
        return model.from_db(DEFAULT_DB_ALIAS, None, values)
    return model.from_db(DEFAULT_DB_ALIAS, [f.attname for f in fields], values)


def _insert_fields(obj: Model) -> tuple[Field, ...]:
    pk = obj._meta.pk
    unset_pk = getattr(obj, pk.attname) is None  # auto-increment: left to the database
    return tuple(f for f in obj._meta.concrete_fields if not (unset_pk and f is pk))


@cache
def _insert_sql(shapes: tuple[tuple[type[Model], tuple[Field, ...]], ...]) -> str:
    """One INSERT per instance; several are chained as data-modifying CTEs (PostgreSQL)."""
    inserts = [
        f"INSERT INTO {table(model)} ({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
        for model, fields in shapes
    ]
    *first, last = inserts
    ctes = ", ".join(f"i{n} AS ({statement})" for n, statement in enumerate(first))
    return f"WITH {ctes} {last}" if ctes else last


def insert_statement(obj: Model) -> tuple[str, list]:
    """The INSERT of one new instance and its parameters, for a statement of the caller's."""
    db = connections[DEFAULT_DB_ALIAS]
    fields = _insert_fields(obj)
    return _insert_sql(((type(obj), fields),)), [
        f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields
    ]


def saved(obj: Model) -> None:
    """Mark an instance written by a statement of the caller's as saved."""
    obj._state.adding = False
    obj._state.db = DEFAULT_DB_ALIAS


def insert(*objs: Model) -> None:
    """INSERT new instances, in one statement (so one round trip and, outside a transaction,
    one commit for all of them) on PostgreSQL; one after the other in a transaction elsewhere.
    No signals are sent: the models written this way have no receivers."""
    db = connections[DEFAULT_DB_ALIAS]
    shapes = tuple((type(obj), _insert_fields(obj)) for obj in objs)
    params = [
        [f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields]
        for obj, (_, fields) in zip(objs, shapes, strict=True)
    ]
    if db.vendor == "postgresql":
        execute(_insert_sql(shapes), [value for values in params for value in values])
    else:
        with transaction.atomic():
            for shape, values in zip(shapes, params, strict=True):
                execute(_insert_sql((shape,)), values)
    for obj in objs:
        saved(obj)
