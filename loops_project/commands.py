"""Shared lookups for management commands: a clear CommandError instead of a 404."""

from django.core.management.base import CommandError
from django.http import Http404

from accounts.access import get_org_by_ident
from accounts.models import Organization
from loops.access import get_loop_for
from loops.models import Loop


def org_or_error(ident: str) -> Organization:
    try:
        return get_org_by_ident(ident)
    except Http404:
        raise CommandError(f"No organization '{ident}'") from None


def loop_or_error(org: Organization, ident: str) -> Loop:
    try:
        return get_loop_for(org, ident)
    except Http404:
        raise CommandError(f"No loop '{ident}' in organization '{org.slug}'") from None
