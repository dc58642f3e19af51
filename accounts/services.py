"""Writes that concern organizations, memberships and tokens."""

import secrets
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, Membership, Organization, Role, TokenScope

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


def token_authenticate(raw: str) -> ApiToken | None:
    """The active token behind a bearer secret, or None (unknown, revoked or expired)."""
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = (
        ApiToken.objects.select_related("organization")
        .filter(token_hash=ApiToken.hash(raw))
        .first()
    )
    if token is None or not token.is_active:
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
