from functools import cache

from django.http import Http404

from accounts.models import Organization
from loops.models import Loop, LoopVersion, Schedule
from loops_project import sql

LOOP_FIELDS = sql.fields_of(Loop)
# A trigger needs the active version, not its program text.
VERSION_FIELDS = sql.fields_of(LoopVersion, exclude=("code",))


@cache
def _loop_lookup(by: str) -> str:
    # Every trigger starts here: a prepared statement of its own (loops_project.sql).
    return (
        f"SELECT {sql.column_list(LOOP_FIELDS, 'l')}, "  # noqa: S608 - model names; values are parameters
        f"{sql.column_list(VERSION_FIELDS, 'v')} "
        f"FROM {sql.table(Loop)} l LEFT JOIN {sql.table(LoopVersion)} v "
        f"ON v.{sql.column(LoopVersion, 'id')} = l.{sql.column(Loop, 'active_version')} "
        f"WHERE l.{sql.column(Loop, 'organization')} = %s AND l.{sql.column(Loop, by)} = %s"
    )


def loop_lookup_field(ident: str) -> str:
    """A loop is named by its public id or by its slug."""
    return "id" if ident.startswith("loop_") else "slug"


def get_loop_for(org: Organization, ident: str) -> Loop:
    """A loop of the organization by public id or slug, with its active version (without the
    code); 404 for missing and foreign alike."""
    row = sql.fetch_one(_loop_lookup(loop_lookup_field(ident)), [org.pk, ident])
    if row is None:
        raise Http404("No such loop.")
    loop = sql.instance(Loop, LOOP_FIELDS, row[: len(LOOP_FIELDS)])
    if loop.active_version_id is not None:
        loop.active_version = sql.instance(LoopVersion, VERSION_FIELDS, row[len(LOOP_FIELDS) :])
    loop.organization = org
    return loop


def get_version_for(loop: Loop, number: int) -> LoopVersion:
    version = loop.versions.filter(number=number).first()
    if version is None:
        raise Http404("No such version.")
    return version


def get_schedule_for(org: Organization, schedule_id: str) -> Schedule:
    schedule = (
        Schedule.objects.select_related("loop")
        .filter(pk=schedule_id, loop__organization=org)
        .first()
    )
    if schedule is None:
        raise Http404("No such schedule.")
    return schedule
