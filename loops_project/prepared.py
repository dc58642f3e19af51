"""Querysets compiled once, for the statements of loops_project.sql.

The hottest statements (every API request's token lookup, the trigger URL's one statement) take
their conditions from the querysets that define them (`ApiToken.objects.active`,
`Organization.objects.named`, `runs.rules.TRIGGERABLE` …), so that the rule is written once.
Building a query costs more than the database's work on these paths, so each is compiled once,
with a `Parameter` wherever a request's value goes, and bound per request.
"""

from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Expression, Field, QuerySet


class Parameter(Expression):
    """A named value of a compiled queryset: one placeholder, bound per request as its field
    prepares a lookup's value."""

    def __init__(self, name: str, output_field: Field) -> None:
        super().__init__(output_field=output_field)
        self.name = name

    def __repr__(self) -> str:
        return f"Parameter({self.name!r})"

    def as_sql(self, compiler, connection):
        return "%s", [self]


@dataclass(frozen=True)
class Compiled:
    sql: str
    params: tuple  # a Parameter for each request's value, else a constant of the query

    def bind(self, **values) -> list:
        db = connections[DEFAULT_DB_ALIAS]
        return [
            p.output_field.get_db_prep_value(values[p.name], db, prepared=False)
            if isinstance(p, Parameter)
            else p
            for p in self.params
        ]


def compile_query(queryset: QuerySet) -> Compiled:
    """The queryset's SQL and parameters. Its default ordering is dropped: these statements
    look up rows or feed a statement of their own."""
    sql, params = queryset.order_by().query.sql_with_params()
    return Compiled(sql, tuple(params))
