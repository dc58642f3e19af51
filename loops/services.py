"""Writes of loops and versions: create, deploy, rollback, pause, concurrency limit."""

import enum
from typing import Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify

from accounts.audit import Actor, record
from accounts.limits import check_room
from accounts.models import CONCURRENCY_LIMIT_MAX, Organization
from loops.models import Loop, LoopVersion, TestInput
from loops.validation import validate_code
from loops_project.errors import Conflict, Invalid, NotFound

SLUG_MAX_LENGTH = Loop._meta.get_field("slug").max_length
# Page paths that sit beside /loops/<slug>/.
RESERVED_SLUGS = frozenset({"new"})


def _check_length(field: str, value: str) -> None:
    limit = Loop._meta.get_field(field).max_length
    if len(value) > limit:
        raise Invalid(f"{field} is at most {limit} characters ({len(value)} given)",
                      code=f"invalid_{field}", details={"field": field})  # fmt: skip


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


# loop_update's "leave it as it is" for a field whose None means something (no limit).
UNCHANGED = _Unchanged.UNCHANGED
Unchanged = Literal[_Unchanged.UNCHANGED]


def _check_concurrency_limit(value: int | None) -> None:
    if value is None:
        return
    # bool is an int to Python, never a limit.
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= CONCURRENCY_LIMIT_MAX
    ):
        raise Invalid(
            f"concurrency limit must be a whole number from 1 to {CONCURRENCY_LIMIT_MAX:,}, "
            "or empty for no limit", code="invalid_concurrency_limit",
            details={"field": "concurrency_limit"},
        )  # fmt: skip


def _author_name(author) -> str:
    return getattr(author, "username", "") or ""


@transaction.atomic
def loop_create(
    *,
    organization: Organization,
    slug: str,
    name: str = "",
    description: str = "",
    code: str | None = None,
    author=None,
    author_name: str = "",
    note: str = "",
    concurrency_limit: int | None = None,
    actor: Actor | None = None,
) -> Loop:
    """Create a loop, and deploy its first version when code is given. `actor` (who asked)
    is recorded in the audit log; None is an internal call its caller accounts for."""
    if code is not None:
        validate_code(code, organization.pk)  # before anything is saved
    if not slug or slugify(slug) != slug or len(slug) > SLUG_MAX_LENGTH:
        raise Invalid(
            f"slug must be 1 to {SLUG_MAX_LENGTH} lower-case letters, digits and hyphens",
            code="invalid_slug", details={"field": "slug"},
        )  # fmt: skip
    _check_length("name", name)
    _check_length("description", description)
    _check_concurrency_limit(concurrency_limit)
    if slug in RESERVED_SLUGS:
        raise Invalid(f"'{slug}' is reserved; choose another slug", code="invalid_slug",
                      details={"field": "slug"})  # fmt: skip
    if Loop.objects.filter(organization=organization, slug=slug).exists():
        raise Conflict(f"A loop with slug '{slug}' already exists", code="slug_taken")
    check_room(
        Loop.objects.filter(organization=organization),
        settings.LOOPS_MAX_LOOPS_PER_ORG,
        "loops",
        hint="delete one first, or ask your administrator to raise LOOPS_MAX_LOOPS_PER_ORG",
    )
    try:
        with transaction.atomic():
            loop = Loop.objects.create(
                organization=organization, slug=slug, name=name or slug, description=description,
                concurrency_limit=concurrency_limit,
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"A loop with slug '{slug}' already exists", code="slug_taken") from None
    _audit(actor, loop, "loop.create", {"slug": slug, "name": loop.name})
    if code is not None:
        loop_deploy(loop=loop, code=code, author=author, author_name=author_name, note=note,
                    actor=actor)  # fmt: skip
    return loop


def _audit(actor: Actor | None, loop: Loop, action: str, details: dict) -> None:
    if actor is not None:
        record(organization=loop.organization_id, actor=actor, action=action,
               object_type="loop", object_id=loop.pk, details=details)  # fmt: skip


@transaction.atomic
def loop_deploy(
    *, loop: Loop, code: str, author=None, author_name: str = "", note: str = "",
    actor: Actor | None = None,
) -> LoopVersion:  # fmt: skip
    """Validate the code, save it as the next version and make that version active."""
    validate_code(code, loop.organization_id)
    # Lock the loop so that two deploys never take the same number.
    locked = Loop.objects.select_for_update().get(pk=loop.pk)
    number = (locked.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = LoopVersion.objects.create(
        loop=locked,
        number=number,
        code=code,
        author=author,
        author_name=author_name or _author_name(author),
        note=note[:500],
    )
    previous = locked.active_version.number if locked.active_version_id else None
    _activate(loop, version)
    _audit(
        actor, loop, "loop.deploy", {"version": number, "previous": previous, "note": note[:500]}
    )
    return version


def _activate(loop: Loop, version: LoopVersion) -> None:
    loop.active_version = version
    loop.updated_at = timezone.now()
    Loop.objects.filter(pk=loop.pk).update(active_version=version, updated_at=loop.updated_at)


@transaction.atomic
def loop_rollback(*, loop: Loop, number: int, actor: Actor | None = None) -> Loop:
    """Make an older (or any existing) version active again. History is never rewritten."""
    version = loop.versions.filter(number=number).first()
    if version is None:
        raise NotFound(f"Loop '{loop.slug}' has no version {number}", code="version_not_found")
    locked = Loop.objects.select_for_update().get(pk=loop.pk)
    previous = locked.active_version.number if locked.active_version_id else None
    _activate(loop, version)
    _audit(actor, loop, "loop.rollback", {"before": previous, "after": number})
    return loop


@transaction.atomic
def loop_update(
    *, loop: Loop, name: str | None = None, description: str | None = None,
    paused: bool | None = None, concurrency_limit: int | Unchanged | None = UNCHANGED,
    actor: Actor | None = None,
) -> Loop:  # fmt: skip
    """Change what is given. None leaves name, description and paused as they are; for
    concurrency_limit, None clears it (no limit of the loop's own) and UNCHANGED keeps it."""
    fields = []
    before = {f: getattr(loop, f) for f in ("name", "description", "paused", "concurrency_limit")}
    if name is not None:
        if not name.strip():
            raise Invalid("name must not be empty", code="invalid_name", details={"field": "name"})
        _check_length("name", name)
        loop.name = name
        fields.append("name")
    if description is not None:
        _check_length("description", description)
        loop.description = description
        fields.append("description")
    if paused is not None:
        loop.paused = paused
        fields.append("paused")
    if concurrency_limit is not UNCHANGED:
        _check_concurrency_limit(concurrency_limit)
        loop.concurrency_limit = concurrency_limit
        fields.append("concurrency_limit")
    changes = {f: [before[f], getattr(loop, f)] for f in fields if before[f] != getattr(loop, f)}
    if fields:
        loop.updated_at = timezone.now()
        loop.save(update_fields=[*fields, "updated_at"])
    if changes:
        action = "loop.update"
        if set(changes) == {"paused"}:
            action = "loop.pause" if loop.paused else "loop.unpause"
        _audit(actor, loop, action, {"changes": changes})
    return loop


MAX_PATH_PARTS = 10


def library_input_save(*, loop: Loop, name: str, value, path: str = "") -> TestInput:
    """Save a value to the loop's library of test inputs, placed at a dotted `path` in the
    input ("step.Fetch.output" gives {"step": {"Fetch": {"output": value}}}; "" the value
    itself)."""
    name = name.strip()
    if not name:
        raise Invalid("Give the test input a name", code="invalid_name",
                      details={"field": "name"})  # fmt: skip
    if len(name) > TestInput._meta.get_field("name").max_length:
        raise Invalid("name is at most 100 characters", code="invalid_name",
                      details={"field": "name"})  # fmt: skip
    parts = path.strip().split(".") if path.strip() else []
    if len(parts) > MAX_PATH_PARTS or any(not part.strip() for part in parts) or len(path) > 200:
        raise Invalid(
            f"path must be names separated by dots (at most {MAX_PATH_PARTS}), "
            "like step.Fetch.output",
            code="invalid_path", details={"field": "path"},
        )  # fmt: skip
    for part in reversed(parts):
        value = {part.strip(): value}
    return TestInput.objects.create(loop=loop, name=name, input=value)
