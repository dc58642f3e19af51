"""The two statements a step costs: its row inserted as it starts, updated as it ends.

They run once per step, so they are prepared statements of their own (loops_project.sql).

Durability differs on purpose. The end of a step is committed durably: that row is the saved
result a replay relies on. The start only marks the step `running` for the timeline and is
where a cancelled run stops; on PostgreSQL it commits without waiting for the WAL flush
(`synchronous_commit` off for that one transaction). Losing it in a database crash loses
nothing: the step had not finished, so it runs again, and the end's durable commit flushes the
WAL up to and including the start.
"""

# ruff: noqa: S608

from functools import cache

from django.db import connection

from loops_project import sql
from runs.models import Run, RunStatus, Step


@cache
def _insert_sql(columns: tuple[str, ...], vendor: str, relaxed: bool) -> str:
    fields = [Step._meta.get_field(name) for name in columns]
    names = ", ".join(sql.quote(field.column) for field in fields)
    values = ", ".join(sql.cast(field) for field in fields)
    owned = (
        f"EXISTS (SELECT 1 FROM {sql.table(Run)} WHERE id = %s AND status = %s "
        "AND execution_id = %s)"
    )
    if vendor == "postgresql" and relaxed:
        return (
            "WITH durability AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"INSERT INTO {sql.table(Step)} ({names}) SELECT {values} FROM durability "
            f"WHERE {owned}"
        )
    return f"INSERT INTO {sql.table(Step)} ({names}) SELECT {values} WHERE {owned}"


@cache
def _update_sql(columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f"{sql.column(Step, name)} = %s" for name in columns)
    return f"UPDATE {sql.table(Step)} SET {assignments} WHERE id = %s"


def _params(values: dict, columns: tuple[str, ...]) -> list:
    return [sql.prep(Step._meta.get_field(name), values[name]) for name in columns]


def insert_step_if_owned(row: dict, *, run_id: str, execution_id: str) -> bool:
    """Insert a step row while the execution `execution_id` still owns the run (one
    statement: the ownership check and the insert); False when it no longer does."""
    columns = tuple(name for name, value in row.items() if value is not None)
    # Inside a transaction of the caller's, the setting would cover all of it: commit durably.
    statement = _insert_sql(columns, connection.vendor, relaxed=not connection.in_atomic_block)
    params = [*_params(row, columns), run_id, RunStatus.RUNNING, execution_id]
    return sql.execute(statement, params) == 1


def update_step(step_id: str, values: dict) -> None:
    """Record the end of a step, durably."""
    columns = tuple(values)
    sql.execute(_update_sql(columns), [*_params(values, columns), step_id])
