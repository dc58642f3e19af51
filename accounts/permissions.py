"""Role checks for the pages: a viewer reads, an editor deploys and runs, an admin manages
members, tokens and webhooks (an owner can do everything an admin can)."""

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest

from accounts.models import Membership, Organization


def current_membership(request: HttpRequest) -> Membership:
    membership = getattr(request, "membership", None)
    if not membership:
        raise Http404("You are not a member of any organization.")
    return membership


def current_org(request: HttpRequest) -> Organization:
    return current_membership(request).organization


def require_role(request: HttpRequest, role: str) -> Organization:
    """The current organization, if the person's role there allows `role`; otherwise 403."""
    membership = current_membership(request)
    if not membership.allows(role):
        raise PermissionDenied(f"This needs the {role} role.")
    return membership.organization
