"""Bulk action pages (runs.bulk): from a runs list's filters, the dry-run count and the start
of a job; then the job's page, live, with Abort. Starting and aborting need the editor role."""

import hashlib
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_http_methods

from accounts.audit import Actor
from accounts.models import Role
from accounts.permissions import current_membership, current_org, require_role
from loops.access import get_loop_for
from loops_project.errors import DomainError, Invalid
from runs import bulk
from runs.forms import RunFilterForm
from runs.models import BulkAction, BulkJob
from runs.views import ago

VERBS = {  # action: (verb, past participle)
    BulkAction.CANCEL: ("Cancel", "cancelled"),
    BulkAction.RESUME: ("Resume", "resumed"),
    BulkAction.RESTART: ("Restart", "restarted"),
}
UNDER_WAY = {BulkAction.CANCEL: "Cancelling", BulkAction.RESUME: "Resuming",
             BulkAction.RESTART: "Restarting"}  # fmt: skip
NOTES = {
    BulkAction.CANCEL: "Runs still going stop (a running one at its next step); runs that have "
    "ended are left as they are.",
    BulkAction.RESUME: "Failed and cancelled runs continue from their last checkpoint; the "
    "others are left as they are.",
    BulkAction.RESTART: "Each run that has ended starts again as a new run with the same input "
    "on its loop's active version; runs still going are left as they are.",
}
LABELS = {
    "status": "status", "loop": "loop", "triggerType": "trigger", "mode": "mode",
    "batch": "batch", "createdAfter": "created from", "createdBefore": "created before",
    "stepStatus": "with a step", "triggeredBy": "triggered by",
}  # fmt: skip
SNAKE_TO_API = {snake: name for name, snake in bulk.FILTERS.items()}


def _list_query(data: QueryDict) -> list[tuple[str, str]]:
    """The runs list's own query (its filter form's fields and the loop), as given."""
    names = [*RunFilterForm.base_fields, "loop"]
    return [(name, data[name]) for name in names if data.get(name)]


def _filter_of(data: QueryDict, org) -> dict:
    """The API filter a runs list's query stands for: its form's filters and, on a loop's
    list, the loop (another organization's loop is a 404)."""
    form = RunFilterForm(data)
    if not form.is_valid():
        raise Invalid("Some filters are not valid: " + "; ".join(
            f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()
        ))  # fmt: skip
    kwargs = form.selector_kwargs()
    filter = {SNAKE_TO_API[key]: value for key, value in kwargs.items() if value}
    if data.get("loop"):
        filter["loop"] = get_loop_for(org, data["loop"]).slug
    return filter


def _list_url(query: list[tuple[str, str]]) -> str:
    params = dict(query)
    loop = params.pop("loop", None)
    base = reverse("loops:runs", args=[loop]) if loop else reverse("runs:list")
    return f"{base}?{urlencode(params)}" if params else base


def filter_words(filter: dict) -> str:
    """A filter in words, for the pages: "status failed · loop greeting"."""
    if not filter:
        return "Every run of the organization"
    parts = []
    for name, value in filter.items():
        if name == "hasErrors":
            parts.append("has errors")
            continue
        if name in ("createdAfter", "createdBefore"):
            when = parse_datetime(str(value))
            if when is not None:
                value = f"{timezone.localtime(when):%Y-%m-%d %H:%M}"
        parts.append(f"{LABELS.get(name, name)} {value}")
    return "Runs with " + " · ".join(parts)


@login_required
@require_http_methods(["GET"])
def bulk_preview(request: HttpRequest) -> HttpResponse:
    """The dry run: how many runs the list's filters match, and the button that starts the
    job (asking first)."""
    org = require_role(request, Role.EDITOR)
    action = request.GET.get("action", "")
    query = _list_query(request.GET)
    context = {"action": action, "hidden": query, "back": _list_url(query)}
    try:
        if action not in BulkAction.values:
            raise Invalid("Choose a bulk action: cancel, resume or restart.")
        filter = _filter_of(request.GET, org)
        count = bulk.bulk_count(organization=org, filter=filter)
    except DomainError as exc:
        context["error"] = exc.message
    else:
        verb = VERBS[BulkAction(action)][0]
        plural = "run" if count == 1 else "runs"
        context.update(
            count=count, verb=verb, plural=plural, note=NOTES[BulkAction(action)],
            question=f"{verb} {count:,} matching {plural}?", filter_words=filter_words(filter),
        )  # fmt: skip
    if request.htmx:
        return render(request, "runs/bulk_preview.html#preview", context)
    return render(request, "runs/bulk_preview.html", context)


@login_required
@require_http_methods(["POST"])
def bulk_start(request: HttpRequest) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    query = _list_query(request.POST)
    try:
        job = bulk.bulk_job_create(
            organization=org, action=request.POST.get("action", ""),
            filter=_filter_of(request.POST, org), actor=Actor.from_request(request),
        )  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(_list_url(query))
    doing = UNDER_WAY[BulkAction(job.action)]
    messages.success(request, f"{doing} {job.total:,} matching runs in the background.")
    return redirect(job)


def _live_token(job: BulkJob) -> str:
    state = (job.status, job.total, job.done, job.failed)
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


@login_required
@require_http_methods(["GET"])
def bulk_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """A job's progress, live (every second while it runs); Abort for editors."""
    org = current_org(request)
    job = bulk.get_bulk_job_for(org, job_id)
    if bulk.bulk_job_revive(job):
        job.refresh_from_db()
    token = _live_token(job)
    if request.htmx and request.GET.get("since") == token:
        return HttpResponse(status=204)  # nothing changed: the page stays as it is
    verb, past = VERBS[BulkAction(job.action)]
    context = {
        "job": job, "verb": verb, "past": past, "token": token, "polls": job.is_running,
        "can_abort": job.is_running and current_membership(request).allows(Role.EDITOR),
        "percent": job.processed * 100 // job.total if job.total else 100,
        "failures": bulk.failure_lines(job), "filter_words": filter_words(job.filter),
        "created_ago": ago(job.created_at), "completed_ago": ago(job.completed_at),
    }  # fmt: skip
    if request.htmx and request.htmx.target == "bulk-live":
        # 286 tells htmx to stop polling: an ended job does not change any more.
        return render(request, "runs/bulk_detail.html#live", context,
                      status=200 if job.is_running else 286)  # fmt: skip
    return render(request, "runs/bulk_detail.html", context)


@login_required
@require_http_methods(["POST"])
def bulk_abort(request: HttpRequest, job_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    job = bulk.get_bulk_job_for(org, job_id)
    try:
        job = bulk.bulk_job_abort(job=job, actor=Actor.from_request(request))
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        _, past = VERBS[BulkAction(job.action)]
        messages.success(
            request, f"Aborted after {job.processed:,} of {job.total:,} runs: those already "
            f"{past} stay so, the others are left as they are.",
        )  # fmt: skip
    return redirect(job)
