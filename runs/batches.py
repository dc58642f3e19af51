"""Bulk creation of a batch's runs: COPY on PostgreSQL, bulk_create elsewhere."""

from django.db import connections

from runs.models import Run


def insert_runs(template: Run, ids: list[str], inputs: list, inputs_json: list[str],
                using: str = "default") -> None:  # fmt: skip
    """Insert one run per id and input, every other column as in `template`.

    On PostgreSQL the rows go through one COPY in the current transaction, with the inputs'
    JSON text already made by the size check (COPY is 5x faster than executemany,
    PERFORMANCE.md); other databases use bulk_create.
    """
    connection = connections[using]
    fields = [f for f in Run._meta.concrete_fields if f.attname not in ("id", "input")]
    if connection.vendor != "postgresql":
        shared = {f.attname: getattr(template, f.attname) for f in fields}
        runs = [Run(id=i, input=item, **shared) for i, item in zip(ids, inputs, strict=True)]
        Run.objects.using(using).bulk_create(runs, batch_size=2000)
        return
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in ["id", "input", *(f.column for f in fields)])
    shared = tuple(f.get_db_prep_save(getattr(template, f.attname), connection) for f in fields)
    with connection.cursor() as cursor:
        sql = f"COPY {quote(Run._meta.db_table)} ({columns}) FROM STDIN"
        with cursor.cursor.copy(sql) as copy:
            for run_id, text in zip(ids, inputs_json, strict=True):
                copy.write_row((run_id, text, *shared))
