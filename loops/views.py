import difflib
import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from accounts.audit import Actor
from accounts.models import Role
from accounts.permissions import current_membership, current_org, require_role
from loops.access import get_loop_for, get_schedule_for, get_version_for
from loops.forms import (
    STARTER_CODE,
    CodeForm,
    CronPreviewForm,
    LoopCreateForm,
    LoopSettingsForm,
    ScheduleForm,
    TestRunForm,
    TriggerForm,
)
from loops.models import Loop, TestInput
from loops.schedules import next_times, schedule_create, schedule_delete, schedule_update, zone
from loops.selectors import duration_percentiles, loops_with_stats, runs_per_day
from loops.services import loop_create, loop_deploy, loop_rollback, loop_update
from loops_project.errors import DomainError, Invalid
from runs.models import LogEntry, LogLevel, RunMode, TriggerType
from runs.selectors import without_values
from runs.services import run_trigger
from runs.views import ago, decorate, fmt_ms, query_int

__all__ = ["current_org"]  # other page modules import it from here


def _tabs(loop: Loop, tab: str) -> dict:
    return {"loop": loop, "tab": tab}


@login_required
@require_http_methods(["GET"])
def loop_list(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    loops = list(loops_with_stats(org))
    for loop in loops:
        loop.last_run_ago = ago(loop.last_run_at)
    return render(request, "loops/list.html", {"loops": loops})


def _code_error(exc: DomainError) -> dict:
    """A program's error as the editor shows it: the line in a tag beside the message, so the
    message loses its own "Line N: " (it read "Line 3 Line 3: …")."""
    line = (exc.details or {}).get("line") if isinstance(exc.details, dict) else None
    message = exc.message
    if line is not None:
        message = message.removeprefix(f"Line {line}: ")
    return {"message": message, "line": line}


@login_required
@require_http_methods(["GET", "POST"])
def loop_new(request: HttpRequest) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    form = LoopCreateForm(initial={"code": STARTER_CODE, "note": "First version"})
    error = None
    if request.method == "POST":
        form = LoopCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                loop = loop_create(
                    organization=org, slug=data["slug"], name=data["name"],
                    description=data["description"], code=data["code"], author=request.user,
                    note=data["note"], actor=Actor.from_request(request),
                )  # fmt: skip
            except DomainError as exc:
                error = _code_error(exc)
                if (exc.details or {}).get("field") == "slug":
                    form.add_error("slug", exc.message)
                    error = None
            else:
                messages.success(request, f"Created {loop.name} and deployed version 1.")
                return redirect(loop)
    return render(request, "loops/new.html", {"form": form, "error": error})


def _overview_context(request: HttpRequest, loop: Loop, **extra) -> dict:
    org = loop.organization
    trigger_url = request.build_absolute_uri(f"/api/loop/{org.slug}/{loop.slug}")
    curl = (
        f"curl -X POST {trigger_url} \\\n"
        '  -H "Authorization: Bearer $LOOPS_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -d \'{"name": "Ana"}\''
    )
    recent = without_values(loop.runs.select_related("version")).order_by("-created_at")
    runs = decorate(list(recent[:10]))
    return {
        **_tabs(loop, "overview"), "runs": runs, "trigger_url": trigger_url, "curl": curl,
        "chart": runs_per_day(loop),
        "percentiles": {k: fmt_ms(v) if k != "count" else v
                        for k, v in duration_percentiles(loop).items()},
        "trigger_form": TriggerForm(), "versions_count": loop.versions.count(),
        "schedules": loop.schedules.all(),
        "settings_form": LoopSettingsForm(initial={"concurrency_limit": loop.concurrency_limit}),
        "org_limit": org.effective_concurrency_limit(),
        "can_edit": current_membership(request).allows(Role.EDITOR), **extra,
    }  # fmt: skip


@login_required
@require_http_methods(["GET"])
def overview(request: HttpRequest, slug: str) -> HttpResponse:
    loop = get_loop_for(current_org(request), slug)
    return render(request, "loops/overview.html", _overview_context(request, loop))


@login_required
@require_http_methods(["POST"])
def loop_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """The loop's settings card on its overview page; errors show on the page (422)."""
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    form = LoopSettingsForm(request.POST)
    if form.is_valid():
        try:
            loop_update(loop=loop, concurrency_limit=form.cleaned_data["concurrency_limit"],
                        actor=Actor.from_request(request))  # fmt: skip
        except DomainError as exc:
            form.add_error("concurrency_limit", exc.message)
        else:
            limit = loop.concurrency_limit
            if limit is None:
                messages.success(request, f"{loop.name} has no concurrency limit of its own.")
            else:
                messages.success(request, f"{loop.name} runs at most {limit:,} at once.")
            return redirect(loop)
    context = _overview_context(request, loop, settings_form=form)
    return render(request, "loops/overview.html", context, status=422)


@login_required
@require_http_methods(["POST"])
def trigger(request: HttpRequest, slug: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    form = TriggerForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(form.errors.get("input", ["The input is not valid."])))
        return redirect(loop)
    try:
        run = run_trigger(
            loop=loop, input=form.cleaned_data["input"], trigger_type=TriggerType.USER,
            user=request.user,
        )  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(loop)
    messages.success(request, "Run started.")
    return redirect(run)


@login_required
@require_http_methods(["POST"])
def pause(request: HttpRequest, slug: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    loop_update(loop=loop, paused=not loop.paused, actor=Actor.from_request(request))
    messages.success(request, f"{loop.name} is {'paused' if loop.paused else 'active again'}.")
    return redirect(loop)


# --- Editor -------------------------------------------------------------------------------------


def _editor_context(request, loop: Loop, form: CodeForm, **extra) -> dict:
    test_inputs = loop.test_inputs.all()
    return {
        **_tabs(loop, "editor"), "form": form, "test_inputs": test_inputs,
        "test_form": TestRunForm(test_inputs=test_inputs, initial={"input": {"name": "Ana"}}),
        "can_edit": current_membership(request).allows(Role.EDITOR), **extra,
    }  # fmt: skip


@login_required
@require_http_methods(["GET", "POST"])
def editor(request: HttpRequest, slug: str) -> HttpResponse:
    org = current_org(request)
    loop = get_loop_for(org, slug)
    if request.method == "POST":
        require_role(request, Role.EDITOR)
        form = CodeForm(request.POST)
        if form.is_valid():
            try:
                version = loop_deploy(
                    loop=loop, code=form.cleaned_data["code"], author=request.user,
                    note=form.cleaned_data["note"], actor=Actor.from_request(request),
                )  # fmt: skip
            except DomainError as exc:
                error = _code_error(exc)
                context = _editor_context(request, loop, form, error=error)
                return render(request, "loops/editor.html", context, status=422)
            messages.success(request, f"Deployed version {version.number}.")
            return redirect(loop)
        return render(request, "loops/editor.html", _editor_context(request, loop, form))
    source = loop.active_version
    number = query_int(request.GET.get("version"))
    if number is not None:
        source = get_version_for(loop, number)
    form = CodeForm(initial={"code": source.code if source else STARTER_CODE})
    line = request.GET.get("line", "")
    return render(request, "loops/editor.html", _editor_context(
        request, loop, form, source=source, goto_line=query_int(line),
    ))  # fmt: skip


@login_required
@require_http_methods(["POST"])
def test_run(request: HttpRequest, slug: str) -> HttpResponse:
    """Run the unsaved draft in test mode. From the editor (HTMX) the result appears beside
    the code, so the draft stays where it is; without JavaScript it opens the run."""
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    form = TestRunForm(request.POST, test_inputs=loop.test_inputs.all())
    error = None
    run = None
    if not form.is_valid():
        error = {"message": "; ".join(e for errs in form.errors.values() for e in errs)}
    else:
        saved = form.cleaned_data["test_input"]
        data = loop.test_inputs.get(pk=saved).input if saved else form.cleaned_data["input"]
        try:
            run = run_trigger(
                loop=loop, input=data, trigger_type=TriggerType.USER, mode=RunMode.TEST,
                user=request.user, test_code=form.cleaned_data["code"],
            )  # fmt: skip
        except DomainError as exc:
            error = _code_error(exc)
    if request.htmx:
        return render(request, "loops/editor.html#test-result", {"run": run, "error": error})
    if run is None:
        messages.error(request, error["message"])
        return redirect("loops:editor", slug=loop.slug)
    return redirect(run)


# --- Versions -----------------------------------------------------------------------------------


def _diff(a: str, b: str, a_name: str, b_name: str) -> list[tuple[str, str]]:
    lines = difflib.unified_diff(
        a.splitlines(), b.splitlines(), fromfile=a_name, tofile=b_name, lineterm="", n=3
    )
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    return [
        ("file" if line.startswith(("+++", "---")) else kinds.get(line[:1], "ctx"), line)
        for line in lines
    ]


@login_required
@require_http_methods(["GET"])
def versions(request: HttpRequest, slug: str) -> HttpResponse:
    org = current_org(request)
    loop = get_loop_for(org, slug)
    all_versions = list(loop.versions.order_by("-number"))
    diff = None
    a = b = None
    if len(all_versions) >= 2:
        numbers = {v.number: v for v in all_versions}
        b = numbers.get(query_int(request.GET.get("b")), loop.active_version or all_versions[0])
        a = numbers.get(query_int(request.GET.get("a")))
        if a is None:
            # The active version against the one before it; after a rollback, against the
            # newest (what the rollback took away).
            newest = all_versions[0]
            older = [v for v in all_versions if v.number < b.number]
            a = newest if newest != b else (older[0] if older else all_versions[-1])
        diff = _diff(a.code, b.code, f"v{a.number}", f"v{b.number}")
    context = {**_tabs(loop, "versions"), "versions": all_versions, "diff": diff, "a": a, "b": b}
    if request.htmx:
        return render(request, "loops/versions.html#diff", context)
    return render(request, "loops/versions.html", context)


@login_required
@require_http_methods(["POST"])
def rollback(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    get_version_for(loop, number)
    try:
        loop_rollback(loop=loop, number=number, actor=Actor.from_request(request))
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Version {number} is active again.")
    return redirect("loops:versions", slug=loop.slug)


# --- Logs ---------------------------------------------------------------------------------------


def filter_logs(loop: Loop, *, run: str, level: str, text: str) -> QuerySet:
    qs = LogEntry.objects.filter(loop=loop).select_related("step").order_by("-time", "-id")
    if run:
        qs = qs.filter(run_id=run)
    if level in LogLevel.values:
        qs = qs.filter(level=level)
    if text:
        qs = qs.filter(message__icontains=text)
    return qs


@login_required
@require_http_methods(["GET"])
def logs(request: HttpRequest, slug: str) -> HttpResponse:
    org = current_org(request)
    loop = get_loop_for(org, slug)
    filters = {k: request.GET.get(k, "").strip() for k in ("run", "level", "text")}
    page = Paginator(filter_logs(loop, **filters), 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {**_tabs(loop, "logs"), "page": page, "filters": filters,
               "levels": LogLevel.values, "query": query.urlencode()}  # fmt: skip
    if request.htmx:
        return render(request, "loops/logs.html#results", context)
    return render(request, "loops/logs.html", context)


# --- Schedules ----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def schedules(request: HttpRequest, slug: str) -> HttpResponse:
    org = current_org(request)
    loop = get_loop_for(org, slug)
    form = ScheduleForm(initial={"timezone": "UTC", "enabled": True, "input": {}})
    if request.method == "POST":
        require_role(request, Role.EDITOR)
        form = ScheduleForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                schedule_create(loop=loop, cron=data["cron"], timezone_name=data["timezone"],
                                input=data["input"], enabled=data["enabled"],
                                actor=Actor.from_request(request))  # fmt: skip
            except DomainError as exc:
                field = (exc.details or {}).get("field", "")
                form.add_error(field if field in form.fields else None, exc.message)
            else:
                messages.success(request, "Schedule created.")
                return redirect("loops:schedules", slug=loop.slug)
    rows = []
    for schedule in loop.schedules.all():
        try:
            local = zone(schedule.timezone)
            upcoming = [
                t.astimezone(local).strftime("%a %-d %b, %H:%M")
                for t in (
                    next_times(schedule.cron, schedule.timezone, 3) if schedule.enabled else []
                )
            ]
        except Invalid:
            upcoming = []
        rows.append((schedule, upcoming))
    return render(request, "loops/schedules.html", {
        **_tabs(loop, "schedules"), "rows": rows, "form": form,
        "can_edit": current_membership(request).allows(Role.EDITOR),
    })  # fmt: skip


@login_required
@require_http_methods(["GET"])
def cron_preview(request: HttpRequest, slug: str) -> HttpResponse:
    org = current_org(request)
    get_loop_for(org, slug)
    form = CronPreviewForm(request.GET)
    times, errors, tz, cron = [], [], "UTC", ""
    if form.is_valid():
        cron, tz = " ".join(form.cleaned_data["cron"].split()), form.cleaned_data["timezone"]
        if cron:
            try:
                local = zone(tz)
                # Formatted here: the template's date filter would turn them back into UTC.
                times = [
                    (t.astimezone(local).strftime("%a %-d %b %Y, %H:%M"), t.strftime("%H:%M"))
                    for t in next_times(cron, tz, 5)
                ]
            except Invalid as exc:
                errors = [exc.message]
    else:
        errors = [e for field_errors in form.errors.values() for e in field_errors]
    return render(request, "loops/schedules.html#preview", {"times": times, "errors": errors,
                                                            "tz": tz, "cron": cron})  # fmt: skip


@login_required
@require_http_methods(["POST"])
def schedule_toggle(request: HttpRequest, slug: str, schedule_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    schedule = get_schedule_for(org, schedule_id)
    if schedule.loop.slug != slug:
        raise Http404("No such schedule.")
    schedule_update(schedule=schedule, enabled=not schedule.enabled,
                    actor=Actor.from_request(request))  # fmt: skip
    messages.success(request, f"Schedule {'enabled' if schedule.enabled else 'paused'}.")
    return redirect("loops:schedules", slug=slug)


@login_required
@require_http_methods(["POST"])
def delete_schedule(request: HttpRequest, slug: str, schedule_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    schedule = get_schedule_for(org, schedule_id)
    if schedule.loop.slug != slug:
        raise Http404("No such schedule.")
    schedule_delete(schedule=schedule, actor=Actor.from_request(request))
    messages.success(request, "Schedule deleted.")
    return redirect("loops:schedules", slug=slug)


@login_required
@require_http_methods(["POST"])
def test_input_delete(request: HttpRequest, slug: str, input_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    loop = get_loop_for(org, slug)
    test_input = TestInput.objects.filter(loop=loop, pk=input_id).first()
    if test_input is None:
        raise Http404("No such test input.")
    test_input.delete()
    messages.success(request, f"Deleted test input “{test_input.name}”.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("loops:editor", args=[loop.slug]))
    return redirect("loops:editor", slug=loop.slug)


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
