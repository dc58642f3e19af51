"""Writes that concern organizations, memberships and tokens."""

import logging
import secrets
import smtplib
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import CharField, DateTimeField
from django.utils import timezone

from accounts.audit import Actor, record
from accounts.models import (
    ApiToken,
    Invitation,
    Membership,
    Organization,
    Role,
    TokenScope,
)
from loops_project import sql
from loops_project.errors import Conflict, Forbidden, Invalid
from loops_project.prepared import Compiled, Parameter, compile_query

logger = logging.getLogger(__name__)

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


def _audit(actor: Actor | None, organization, action: str, kind: str, ident: str,
           details: dict) -> None:  # fmt: skip
    if actor is not None:
        record(organization=organization, actor=actor, action=action, object_type=kind,
               object_id=ident, details=details)  # fmt: skip


@transaction.atomic
def token_create(
    *,
    organization: Organization,
    name: str,
    scope: str = TokenScope.FULL,
    expires_at: datetime | None = None,
    created_by=None,
    actor: Actor | None = None,
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
    _audit(actor, organization, "token.create", "token", token.pk,
           {"name": name, "scope": token.scope, "prefix": token.prefix})  # fmt: skip
    return token, raw


TOKEN_FIELDS = sql.fields_of(ApiToken)
ORGANIZATION_FIELDS = sql.fields_of(Organization)


@cache
def _token_lookup() -> Compiled:
    """The active token with a given hash, with its organization. Every API request starts
    here: compiled once, and prepared on the connection (loops_project.sql)."""
    return compile_query(
        ApiToken.objects.active(Parameter("now", DateTimeField()))
        .filter(token_hash=Parameter("token_hash", CharField()))
        .values_list(
            *(f.attname for f in TOKEN_FIELDS),
            *(f"organization__{f.attname}" for f in ORGANIZATION_FIELDS),
        )
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
    now = timezone.now()
    lookup = _token_lookup()
    row = sql.fetch_one(lookup.sql, lookup.bind(now=now, token_hash=token_hash))
    if row is None:
        return None
    token = sql.instance(ApiToken, TOKEN_FIELDS, row[: len(TOKEN_FIELDS)])
    token.organization = sql.instance(Organization, ORGANIZATION_FIELDS, row[len(TOKEN_FIELDS) :])
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
def invitation_create(
    *, organization: Organization, identifier: str, role: str, invited_by=None,
    actor: Actor | None = None,
) -> tuple[Invitation, str]:  # fmt: skip
    """Invite a username or e-mail address to the organization; return the invitation and its
    link secret, which is never stored or shown again.

    Whether an account by that name exists is never looked up here: the inviter learns nothing
    about accounts outside the organization, and nobody joins until they accept. A new invitation
    replaces one still open for the same person.
    """
    identifier = identifier.strip()
    if not identifier:
        raise Invalid("Enter a username or an e-mail address.", code="invalid_identifier",
                      details={"field": "identifier"})  # fmt: skip
    members = Membership.objects.filter(organization=organization)
    if (
        members.filter(user__username__iexact=identifier).exists()
        or members.filter(user__email__iexact=identifier).exists()
    ):
        # Only members are compared: the admin sees them all on the members page anyway.
        raise Conflict(f"{identifier} is already a member.", code="already_member")
    now = timezone.now()
    Invitation.objects.for_org(organization).open().filter(identifier__iexact=identifier).update(
        revoked_at=now
    )
    raw = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization,
        identifier=identifier,
        role=Role(role),
        token_hash=Invitation.hash(raw),
        invited_by=invited_by,
        created_at=now,
        expires_at=now + timedelta(days=settings.LOOPS_INVITATION_DAYS),
    )
    _audit(actor, organization, "member.invite", "invitation", invitation.pk,
           {"identifier": identifier, "role": invitation.role})  # fmt: skip
    return invitation, raw


def invitation_send(*, invitation: Invitation, link: str) -> bool:
    """E-mail the link when the invitation names an address; whether an e-mail was sent.

    Only what the inviter typed decides it, never whether an account has that address.
    """
    if not settings.LOOPS_INVITATION_EMAILS:
        return False
    try:
        validate_email(invitation.identifier)
    except ValidationError:
        return False
    inviter = invitation.invited_by.get_username() if invitation.invited_by else "An admin"
    body = (
        f"{inviter} invited you to join {invitation.organization.name} on Loops as "
        f"{invitation.get_role_display().lower()}.\n\n"
        f"Log in with the account that has this e-mail address and open:\n{link}\n\n"
        f"The invitation expires on {invitation.expires_at:%d %B %Y}."
    )
    subject = f"Join {invitation.organization.name} on Loops"
    try:
        send_mail(subject, body, None, [invitation.identifier])
    except (OSError, smtplib.SMTPException):
        # The inviter has the link on screen; a mail server that is down must not lose it.
        logger.warning("Could not e-mail invitation %s", invitation.pk, exc_info=True)
        return False
    return True


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user) -> Membership:
    """The invited person joins the organization with the invited role."""
    locked = (
        Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    )
    if not locked.is_for(user):
        raise Forbidden("This invitation is for another account.", code="not_yours")
    if not locked.is_pending:
        raise Conflict(locked.closed_message(), code="not_pending")
    if Membership.objects.filter(organization=locked.organization, user=user).exists():
        raise Conflict(
            f"You are already a member of {locked.organization.name}.", code="already_member"
        )
    membership = Membership.objects.create(
        organization=locked.organization, user=user, role=Role(locked.role)
    )
    locked.accepted_at = timezone.now()
    locked.accepted_by = user
    locked.save(update_fields=["accepted_at", "accepted_by"])
    return membership


@transaction.atomic
def invitation_decline(*, invitation: Invitation, user) -> Invitation:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not locked.is_for(user):
        raise Forbidden("This invitation is for another account.", code="not_yours")
    if not locked.is_pending:
        raise Conflict(locked.closed_message(), code="not_pending")
    locked.declined_at = timezone.now()
    locked.save(update_fields=["declined_at"])
    return locked


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor | None = None) -> Invitation:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is None and locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        _audit(actor, locked.organization_id, "member.invite_revoke", "invitation", locked.pk,
               {"identifier": locked.identifier})  # fmt: skip
    return locked


@transaction.atomic
def membership_change_role(
    *, membership: Membership, role: str, actor: Actor | None = None
) -> Membership:
    role = Role(role)
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if locked.role == Role.OWNER and role != Role.OWNER and _owner_count(locked.organization) <= 1:
        raise Conflict("An organization needs at least one owner.", code="last_owner")
    before = locked.role
    locked.role = role
    locked.save(update_fields=["role"])
    if before != role:
        _audit(actor, locked.organization_id, "member.role", "member", locked.pk,
               {"user": locked.user.get_username(), "before": before, "after": role})  # fmt: skip
    return locked


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor | None = None) -> None:
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if locked.role == Role.OWNER and _owner_count(locked.organization) <= 1:
        raise Conflict("An organization needs at least one owner.", code="last_owner")
    _audit(actor, locked.organization_id, "member.remove", "member", locked.pk,
           {"user": locked.user.get_username(), "role": locked.role})  # fmt: skip
    locked.delete()


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: Actor | None = None) -> ApiToken:
    if token.revoked_at is None:
        token.revoke()
        _audit(actor, token.organization_id, "token.revoke", "token", token.pk,
               {"name": token.name, "prefix": token.prefix})  # fmt: skip
    return token
