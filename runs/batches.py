"""Bulk creation of a batch's runs: COPY on PostgreSQL, executemany elsewhere."""

import os
import time

from django.db import connections

from runs.models import Run

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# A ULID is 130 bits written as 26 base-32 characters: 13 groups of 10 bits, 2 characters each.
PAIRS = [CROCKFORD[i >> 5] + CROCKFORD[i & 31] for i in range(1024)]
SHIFTS = range(120, -1, -10)


def new_run_ids(count: int) -> list[str]:
    """`count` run ids in the form of loops_project.ids.run_id ("run_" + lower-case ULID: the
    time in ms, then 80 random bits), in increasing order: one random start, then + 1 for
    each next id (a monotonic ULID sequence), so the batch's runs sort in input order."""
    stamp = int(time.time() * 1000) << 80
    # The start leaves room for `count` increments without carrying into the time part.
    start = int.from_bytes(os.urandom(10)) % ((1 << 80) - count)
    ids = []
    for i in range(count):
        value = stamp | (start + i)
        ids.append("run_" + "".join([PAIRS[(value >> s) & 1023] for s in SHIFTS]))
    return ids


OUTGROWN_MIN_ROWS = 1_000  # smaller batches leave plans as they were


def insert_runs(template: Run, ids: list[str], inputs_json: list[str],
                using: str = "default") -> None:  # fmt: skip
    """Insert one run per id and input (JSON text), every other column as in `template`.

    The inputs' JSON text is the one made for the size check, so nothing is serialized twice
    and no model instance is built per run. On PostgreSQL the rows go through one COPY in the
    current transaction (5x faster than executemany, PERFORMANCE.md); elsewhere (SQLite) one
    executemany.

    Rows are written from the last id to the first: the list indexes end in (created_at DESC,
    id DESC), so with increasing ids each next row lands beside the previous one in every
    index (measured: half the index work of writing them in random order).
    """
    connection = connections[using]
    fields = [f for f in Run._meta.concrete_fields if f.attname not in ("id", "input")]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in ["id", "input", *(f.column for f in fields)])
    shared = tuple(f.get_db_prep_save(getattr(template, f.attname), connection) for f in fields)
    table = quote(Run._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for run_id, text in zip(reversed(ids), reversed(inputs_json), strict=True):
                    copy.write_row((run_id, text, *shared))
            return
        marks = ", ".join(["%s"] * (len(fields) + 2))
        rows = [(run_id, text, *shared) for run_id, text in zip(ids, inputs_json, strict=True)]
        for start in range(0, len(rows), 10_000):
            cursor.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608
                rows[start : start + 10_000],
            )


def analyze_if_outgrown(added: int, using: str = "default") -> None:
    """PostgreSQL: gather runs_run's statistics at once when a batch has outgrown them.

    Prepared statements (a worker's claims, steps and ends) keep the plan made at their first
    uses; one made while runs_run was small (a new install) scans the whole table once a big
    batch is in it, until autovacuum next analyzes it, a minute or more later (measured: 20-40
    ms a statement instead of under 1, a 100,000-run batch draining at 35 runs/s instead of
    ~150). ANALYZE takes ~0.2 s for 100,000 rows and makes every session plan them again."""
    connection = connections[using]
    if connection.vendor != "postgresql" or added < OUTGROWN_MIN_ROWS:
        return
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        (known,) = cursor.fetchone()
        if added > max(known, 0):
            cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")
