"""The two statements a step costs: its row inserted as it starts, updated as it ends.

They run once per step, so they are written as SQL of their own rather than through the ORM:
the text is built once per column set, and on PostgreSQL it is bound server-side and prepared
on the connection (parsed and planned once, not per step).

Durability differs on purpose. The end of a step is committed durably: that row is the saved
result a replay relies on. The start only marks the step `running` for the timeline and is
where a cancelled run stops; on PostgreSQL it commits without waiting for the WAL flush
(`synchronous_commit` off for that one transaction). Losing it in a database crash loses
nothing: the step had not finished, so it runs again, and the end's durable commit flushes the
WAL up to and including the start.
"""

# SQL text here is built from the models' table and column names only; values are parameters.
# ruff: noqa: S608

from functools import cache

from django.db import connection

from runs.models import Run, RunStatus, Step

_quote = connection.ops.quote_name


@cache
def _insert_sql(columns: tuple[str, ...], vendor: str, relaxed: bool) -> str:
    fields = [Step._meta.get_field(name) for name in columns]
    if vendor == "postgresql":
        # Server-side binding types the values by their columns (a bare parameter in a
        # SELECT list would be text).
        values = [f"CAST(%s AS {field.db_type(connection)})" for field in fields]
    else:
        values = ["%s"] * len(fields)
    table, run_table = _quote(Step._meta.db_table), _quote(Run._meta.db_table)
    names = ", ".join(_quote(field.column) for field in fields)
    owned = (
        f"EXISTS (SELECT 1 FROM {run_table} WHERE id = %s AND status = %s AND execution_id = %s)"
    )
    if vendor == "postgresql" and relaxed:
        return (
            "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"INSERT INTO {table} ({names}) SELECT {', '.join(values)} FROM durability "
            f"WHERE {owned}"
        )
    return f"INSERT INTO {table} ({names}) SELECT {', '.join(values)} WHERE {owned}"


@cache
def _update_sql(columns: tuple[str, ...]) -> str:
    fields = [Step._meta.get_field(name) for name in columns]
    assignments = ", ".join(f"{_quote(field.column)} = %s" for field in fields)
    return f"UPDATE {_quote(Step._meta.db_table)} SET {assignments} WHERE id = %s"


def _prep(name: str, value):
    return Step._meta.get_field(name).get_db_prep_save(value, connection)


def _execute(sql: str, params: list) -> int:
    """Run one statement (prepared, on PostgreSQL) and return its row count."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount
    import psycopg

    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.rowcount


def insert_step_if_owned(row: dict, *, run_id: str, execution_id: str) -> bool:
    """Insert a step row while the execution `execution_id` still owns the run (one
    statement: the ownership check and the insert); False when it no longer does."""
    columns = tuple(name for name, value in row.items() if value is not None)
    params = [_prep(name, row[name]) for name in columns]
    # Inside a transaction of the caller's, the setting would cover all of it: commit durably.
    sql = _insert_sql(columns, connection.vendor, relaxed=not connection.in_atomic_block)
    return _execute(sql, [*params, run_id, RunStatus.RUNNING, execution_id]) == 1


def update_step(step_id: str, values: dict) -> None:
    """Record the end of a step, durably."""
    columns = tuple(values)
    params = [_prep(name, values[name]) for name in columns]
    _execute(_update_sql(columns), [*params, step_id])
