from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from loops.views import current_org
from runs.access import get_run_for


@login_required
@require_http_methods(["GET"])
def detail(request: HttpRequest, run_id: str) -> HttpResponse:
    run = get_run_for(current_org(request), run_id)
    return render(request, "runs/detail.html", {"run": run, "steps": run.steps.order_by("order")})
