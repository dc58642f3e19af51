"""Patch and continue on the run page: retry from a step, complete a step with an output, wake
a sleeping step now, send the event a run waits for. Editors and up (a viewer gets 403); each
calls runs.patches, which audits it.

The two forms that take JSON are posted by htmx where it runs: a mistake comes back as the
same form, with what was typed and the reason beside it; without JavaScript it is a message
above the page."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from accounts.audit import Actor
from accounts.models import Role
from accounts.permissions import require_role
from loops_project import strict_json
from loops_project.errors import DomainError, Invalid
from runs import patches
from runs.access import get_run_for, get_step_for
from runs.models import Run, StepKind


def _run_and_step(request: HttpRequest, run_id: str, step_id: str | None = None):
    run = get_run_for(require_role(request, Role.EDITOR), run_id)
    return run, get_step_for(run, step_id) if step_id else None


def _step_url(run: Run, step_id: str) -> str:
    return f"{run.get_absolute_url()}#step-{step_id}"


def _json(text: str, field: str, *, empty=None, required: bool = False):
    if not text.strip():
        if required:
            raise Invalid(f"Give the {field} as JSON (null for none).", details={"field": field})
        return empty
    return strict_json.parse(text, field=field)


def _done(request: HttpRequest, run: Run, message: str) -> HttpResponse:
    messages.success(request, message)
    if request.htmx:
        return HttpResponseClientRedirect(run.get_absolute_url())
    return redirect(run)


@login_required
@require_http_methods(["POST"])
def retry_from(request: HttpRequest, run_id: str, step_id: str) -> HttpResponse:
    run, step = _run_and_step(request, run_id, step_id)
    try:
        run = patches.run_retry_from(run=run, step=step, actor=Actor.from_request(request))
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(_step_url(run, step.pk))
    version = f" on v{run.version.number}" if run.version_id else ""
    return _done(request, run, f"Retrying from “{step.name}”{version}: its checkpoint and the "
                 "later ones were dropped, the steps before it keep their results.")  # fmt: skip


@login_required
@require_http_methods(["POST"])
def complete_step(request: HttpRequest, run_id: str, step_id: str) -> HttpResponse:
    run, step = _run_and_step(request, run_id, step_id)
    text = request.POST.get("output", "")
    try:
        output = _json(text, "output", required=True)
        patches.step_complete(run=run, step=step, output=output, actor=Actor.from_request(request))
    except DomainError as exc:
        if request.htmx:
            context = {"run": run, "step": step, "complete_error": exc.message, "output_text": text}
            return render(request, "runs/_step.html#complete-form", context)
        messages.error(request, f"“{step.name}” was not completed: {exc.message}")
        return redirect(_step_url(run, step.pk))
    return _done(request, run, f"“{step.name}” completed with your output; the run carries on.")


@login_required
@require_http_methods(["POST"])
def fire_step(request: HttpRequest, run_id: str, step_id: str) -> HttpResponse:
    run, step = _run_and_step(request, run_id, step_id)
    try:
        patches.step_fire(run=run, step=step, actor=Actor.from_request(request))
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(_step_url(run, step.pk))
    if step.kind == StepKind.DO:
        return _done(request, run, f"“{step.name}” is tried again now.")
    return _done(request, run, f"“{step.name}” woke now; the run carries on.")


@login_required
@require_http_methods(["POST"])
def send_event(request: HttpRequest, run_id: str) -> HttpResponse:
    run, _ = _run_and_step(request, run_id)
    kind = request.POST.get("type", "").strip()
    text = request.POST.get("payload", "")
    try:
        payload = _json(text, "payload")
        event = patches.run_event_send(
            run=run, type=kind, payload=payload, actor=Actor.from_request(request)
        )
    except DomainError as exc:
        if request.htmx:
            context = {"run": run, "can_run": True, "event_error": exc.message,
                       "event_type": kind, "payload_text": text}  # fmt: skip
            return render(request, "runs/detail.html#event-form", context)
        messages.error(request, f"The event was not sent: {exc.message}")
        return redirect(run)
    if event.consumed_by_id:
        return _done(request, run, f"Event “{kind}” sent; the run carries on.")
    return _done(request, run, f"Event “{kind}” sent; the run keeps it until it waits for one.")
