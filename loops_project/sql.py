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

from functools import cache

from django.db import connection
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


def _cursor():
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    if connection.vendor == "postgresql":
        import psycopg

        return psycopg.Cursor(connection.connection), {"prepare": True}
    return connection.cursor(), {}


def execute(sql: str, params: list) -> int:
    """Run one statement; returns its row count."""
    cursor, options = _cursor()
    with connection.wrap_database_errors, cursor:
        cursor.execute(sql, params, **options)
        return cursor.rowcount


def fetch_one(sql: str, params: list) -> tuple | None:
    cursor, options = _cursor()
    with connection.wrap_database_errors, cursor:
        cursor.execute(sql, params, **options)
        return cursor.fetchone()


def instance(model: type[Model], fields: tuple[Field, ...], values) -> Model:
    """An instance from its columns' values, as the ORM builds one (backend and field
    converters, then from_db; fields left out are deferred)."""
    values = list(values)
    for i, field in enumerate(fields):
        col = field.get_col(model._meta.db_table)
        for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
            values[i] = convert(values[i], col, connection)
    if len(fields) == len(model._meta.concrete_fields):
        return model.from_db(connection.alias, None, values)
    return model.from_db(connection.alias, [f.attname for f in fields], values)


@cache
def _insert_sql(model: type[Model]) -> str:
    fields = model._meta.concrete_fields
    names = ", ".join(quote(f.column) for f in fields)
    return f"INSERT INTO {table(model)} ({names}) VALUES ({', '.join(['%s'] * len(fields))})"


def insert(obj: Model) -> None:
    """INSERT a new instance whose primary key is already set (no signals are sent: the models
    written this way have no receivers)."""
    fields = obj._meta.concrete_fields
    params = [prep(f, f.pre_save(obj, True)) for f in fields]
    execute(_insert_sql(type(obj)), params)
    obj._state.adding = False
    obj._state.db = connection.alias
