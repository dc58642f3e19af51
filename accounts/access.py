"""Access helpers: every lookup a person or token makes goes through these.

Each filters by organization and raises Http404 alike for missing and foreign objects, so
another organization's data is never visible and its existence never revealed.
"""

from django.http import Http404

from accounts.models import (
    ORGANIZATION_NAMED_BY,
    ApiToken,
    Invitation,
    Membership,
    Organization,
)


def org_is_named(org: Organization, ident: str) -> bool:
    """Whether `ident` names the organization (OrganizationQuerySet.named, for one at hand)."""
    return any(getattr(org, field) == ident for field in ORGANIZATION_NAMED_BY)


def get_org_by_ident(ident: str) -> Organization:
    """An organization by public id or slug (API paths accept either)."""
    org = Organization.objects.named(ident).first()
    if org is None:
        raise Http404("No such organization.")
    return org


def get_membership_for(user, org_ident: str) -> Membership:
    membership = (
        Membership.objects.select_related("organization")
        .filter(user=user, organization__in=Organization.objects.named(org_ident))
        .first()
        if user.is_authenticated
        else None
    )
    if membership is None:
        raise Http404("No such organization.")
    return membership


def get_token_for(org: Organization, token_id: str) -> ApiToken:
    token = ApiToken.objects.for_org(org).filter(pk=token_id).first()
    if token is None:
        raise Http404("No such token.")
    return token


def get_invitation_for(org: Organization, invitation_id: str) -> Invitation:
    """An invitation of the organization (for its admins)."""
    invitation = Invitation.objects.for_org(org).filter(pk=invitation_id).first()
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation


def get_invitation_for_user(user, invitation_id: str) -> Invitation:
    """An invitation addressed to the user; anyone else's is 404 like a missing one."""
    invitation = (
        Invitation.objects.addressed_to(user)
        .select_related("organization", "invited_by")
        .filter(pk=invitation_id)
        .first()
    )
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation


def get_invitation_by_secret(raw: str) -> Invitation:
    """The invitation behind a link's secret (which only its hash can find)."""
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=Invitation.hash(raw))
        .first()
        if 0 < len(raw) <= 100
        else None
    )
    if invitation is None:
        raise Http404("No such invitation.")
    return invitation
