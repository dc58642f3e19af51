from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from loops.access import get_loop_for
from loops.models import Loop


def current_org(request: HttpRequest):
    if not request.membership:
        raise Http404("You are not a member of any organization.")
    return request.membership.organization


@login_required
@require_http_methods(["GET"])
def loop_list(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    loops = Loop.objects.for_org(org).select_related("active_version")
    return render(request, "loops/list.html", {"loops": loops})


@login_required
@require_http_methods(["GET"])
def overview(request: HttpRequest, slug: str) -> HttpResponse:
    loop = get_loop_for(current_org(request), slug)
    runs = loop.runs.select_related("version").order_by("-created_at")[:20]
    return render(request, "loops/overview.html", {"loop": loop, "runs": runs})
