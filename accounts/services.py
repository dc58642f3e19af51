"""Writes that concern organizations, memberships and tokens."""

import secrets
from datetime import datetime, timedelta
from functools import cache

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, Membership, Organization, Role, TokenScope
from loops_project import sql
from loops_project.errors import Conflict, Invalid

TOKEN_PREFIX = "lp_"  # noqa: S105 - a public prefix, not a secret
# Recording last use on every request would turn each API read into a write.
LAST_USED_GRANULARITY = timedelta(minutes=1)


@transaction.atomic
def organization_create(*, slug: str, name: str = "", owner=None) -> Organization:
    org = Organization.objects.create(slug=slug, name=name or slug)
    if owner is not None:
        Membership.objects.create(user=owner, organization=org, role=Role.OWNER)
    return org


def membership_set(*, organization: Organization, user, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


def token_create(
    *,
    organization: Organization,
    name: str,
    scope: str = TokenScope.FULL,
    expires_at: datetime | None = None,
    created_by=None,
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which is never stored or shown again."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        organization=organization,
        name=name,
        scope=TokenScope(scope),
        prefix=raw[:10],
        token_hash=ApiToken.hash(raw),
        expires_at=expires_at,
        created_by=created_by,
    )
    return token, raw


TOKEN_FIELDS = sql.fields_of(ApiToken)
ORGANIZATION_FIELDS = sql.fields_of(Organization)


@cache
def _token_lookup() -> str:
    # Every API request starts here: a prepared statement of its own (loops_project.sql).
    return (
        f"SELECT {sql.column_list(TOKEN_FIELDS, 't')}, "  # noqa: S608 - model names; values are parameters
        f"{sql.column_list(ORGANIZATION_FIELDS, 'o')} "
        f"FROM {sql.table(ApiToken)} t JOIN {sql.table(Organization)} o "
        f"ON o.{sql.column(Organization, 'id')} = t.{sql.column(ApiToken, 'organization')} "
        f"WHERE t.{sql.column(ApiToken, 'token_hash')} = %s"
    )


def token_hash_of(raw: str) -> str | None:
    """The hash a token is looked up by, or None for a secret that no token can have."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    return ApiToken.hash(raw)


def token_authenticate(raw: str) -> ApiToken | None:
    """The active token behind a bearer secret, or None (unknown, revoked or expired)."""
    token_hash = token_hash_of(raw)
    if token_hash is None:
        return None
    row = sql.fetch_one(_token_lookup(), [token_hash])
    if row is None:
        return None
    token = sql.instance(ApiToken, TOKEN_FIELDS, row[: len(TOKEN_FIELDS)])
    token.organization = sql.instance(Organization, ORGANIZATION_FIELDS, row[len(TOKEN_FIELDS) :])
    if not token.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def user_get_or_create(*, username: str, email: str = "", password: str | None = None):
    User = get_user_model()
    user, created = User.objects.get_or_create(username=username, defaults={"email": email})
    if created or password:
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
    return user


# --- Members (web pages) --------------------------------------------------------------------


def _owner_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization, role=Role.OWNER).count()


@transaction.atomic
def membership_invite(*, organization: Organization, identifier: str, role: str) -> Membership:
    """Add an existing user (by username or e-mail address) to the organization."""
    identifier = identifier.strip()
    User = get_user_model()
    user = (
        User.objects.filter(username__iexact=identifier).first()
        or User.objects.filter(email__iexact=identifier).first()
        if identifier
        else None
    )
    if user is None:
        raise Invalid(
            f"No user '{identifier}' exists. Ask them to get an account first.",
            code="user_not_found", details={"field": "identifier"},
        )  # fmt: skip
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise Conflict(f"{user.username} is already a member.", code="already_member")
    return Membership.objects.create(organization=organization, user=user, role=Role(role))


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str) -> Membership:
    role = Role(role)
    locked = Membership.objects.select_for_update().get(pk=membership.pk)
    if locked.role == Role.OWNER and role != Role.OWNER and _owner_count(locked.organization) <= 1:
        raise Conflict("An organization needs at least one owner.", code="last_owner")
    locked.role = role
    locked.save(update_fields=["role"])
    return locked


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    locked = Membership.objects.select_for_update().get(pk=membership.pk)
    if locked.role == Role.OWNER and _owner_count(locked.organization) <= 1:
        raise Conflict("An organization needs at least one owner.", code="last_owner")
    locked.delete()


def token_revoke(*, token: ApiToken) -> ApiToken:
    token.revoke()
    return token
