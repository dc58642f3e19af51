"""Login throttling (django-axes): which client address a login attempt is counted against."""

from axes.helpers import get_client_username
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_ip(request: HttpRequest) -> str:
    """The address a login attempt came from.

    Directly exposed, REMOTE_ADDR, which the client cannot choose. Behind LOOPS_TRUSTED_PROXIES
    = N proxies, each appending the address it saw to X-Forwarded-For, the Nth entry from the
    right: entries further left were written by the client and could be anything.
    """
    proxies = settings.LOOPS_TRUSTED_PROXIES
    if proxies:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def lockout_response(
    request: HttpRequest, original_response=None, credentials=None
) -> HttpResponse:
    """What a locked-out login attempt gets: the login page's look, with why and for how long."""
    minutes = settings.LOOPS_LOGIN_COOLOFF_MINUTES
    username = get_client_username(request, credentials) or ""
    context = {"username": username, "minutes": minutes}
    return render(request, "registration/locked_out.html", context, status=429)
