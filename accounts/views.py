from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods

from accounts.access import get_membership_for
from accounts.middleware import SESSION_KEY


@login_required
@require_http_methods(["GET"])
def home(request: HttpRequest) -> HttpResponse:
    return redirect("loops:list")


@login_required
@require_http_methods(["POST"])
def switch_org(request: HttpRequest, org: str) -> HttpResponse:
    membership = get_membership_for(request.user, org)
    request.session[SESSION_KEY] = membership.organization_id
    return redirect("loops:list")
