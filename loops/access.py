from django.http import Http404

from accounts.models import Organization
from loops.models import Loop, LoopVersion, Schedule


def get_loop_for(org: Organization, ident: str) -> Loop:
    """A loop of the organization by public id or slug; 404 for missing and foreign alike."""
    field = "pk" if ident.startswith("loop_") else "slug"
    loop = (
        Loop.objects.for_org(org)
        .select_related("active_version")
        .defer("active_version__code")  # a trigger needs the version, not its program text
        .filter(**{field: ident})
        .first()
    )
    if loop is None:
        raise Http404("No such loop.")
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
