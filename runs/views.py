import hashlib
import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.timesince import timesince
from django.views.decorators.http import require_http_methods

from accounts.audit import Actor
from accounts.models import Role
from accounts.permissions import current_membership, current_org, require_role
from loops.access import get_loop_for
from loops.services import library_input_save
from loops_project.errors import DomainError
from runs.access import get_run_for, get_step_for
from runs.formatting import formatted_html, steps_after, summary_rows
from runs.forms import RespondForm, RunFilterForm, SaveInputForm, SaveOutputForm
from runs.models import Run, Step, StepStatus, TriggerType
from runs.selectors import filter_runs, run_log_tail, value_head, without_values
from runs.services import run_cancel, run_respond, run_restart, run_resume

PAGE_SIZE = 25
LOG_TAIL = 200  # the run page shows this many of a run's last log lines; the Logs tab has all
CHUNK_CHARS = 20_000  # a huge value is shown this many characters at a time
ARRAY_PAGE = 20  # a long array is shown this many items at a time
# "Load all" / "Show all" send at most this much per request (then offer the rest): one click
# for a 1 MB string, and no request that a viewer can make cost seconds of a web worker.
ALL_CHARS = 2_000_000
ALL_ITEMS = 1_000


def query_int(value, *, maximum: int = 2**31 - 1) -> int | None:
    """A non-negative integer from a query string, or None for anything else (other digits
    than 0-9, more than fit a database integer)."""
    text = str(value or "")
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum)):
        return None
    number = int(text)
    return number if number <= maximum else None


def fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def ago(when) -> str:
    if when is None:
        return ""
    seconds = int((timezone.now() - when).total_seconds())
    if seconds < 60:
        return "just now" if seconds < 5 else f"{seconds} seconds ago"
    return f"{timesince(when, depth=1)} ago"


def _in_flight_since(obj):
    """When a run or step that has started and not ended started, else None."""
    ended = obj.completed_at if isinstance(obj, Run) else obj.finished_at
    if obj.duration_ms is not None or ended is not None:
        return None
    return obj.started_at


def decorate(runs):
    """Add display text that the templates need (durations) to runs or steps. A duration in
    flight is the time since the start, which the page ticks on (data-tick-from)."""
    for obj in runs:
        obj.ticking_since = _in_flight_since(obj)
        obj.duration_text = fmt_ms(
            int((timezone.now() - obj.ticking_since).total_seconds() * 1000)
            if obj.ticking_since
            else obj.duration_ms
        )
        if isinstance(obj, Run):
            obj.cpu_text = fmt_ms(obj.cpu_time_ms)
            obj.started_ago = ago(obj.started_at)
            obj.created_ago = ago(obj.created_at)
            obj.output_head, obj.output_truncated = value_head(obj, "output")
    return runs


# --- Runs list ----------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET"])
def run_list(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    org = current_org(request)
    loop = get_loop_for(org, slug) if slug else None
    form = RunFilterForm(request.GET or None)
    qs = without_values(
        Run.objects.for_org(org).select_related("loop", "version", "triggered_by_user")
    )
    error = None
    if form.is_bound and not form.is_valid():
        error = "Some filters are not valid: " + "; ".join(
            f"{name}: {' '.join(errs)}" for name, errs in form.errors.items()
        )
        qs = qs.none()
    elif form.is_bound:
        try:
            qs = filter_runs(qs, org, loop=loop.pk if loop else None, **form.selector_kwargs())
        except DomainError as exc:
            error, qs = exc.message, qs.none()
    elif loop:
        qs = qs.filter(loop=loop)
    qs = qs.order_by("-created_at", "-id")
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    decorate(page.object_list)
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("since", None)
    token = _list_token(page)
    if request.htmx and request.GET.get("since") == token:
        return HttpResponse(status=204)  # nothing changed: the list stays as the reader has it
    context = {
        "loop": loop, "tab": "runs", "form": form, "page": page, "error": error,
        "query": query.urlencode(), "filtered": form.is_bound and form.active,
        "show_loop": loop is None, "token": token,
    }  # fmt: skip
    if request.htmx and request.htmx.target == "results":
        return render(request, "runs/list.html#results", context)
    return render(request, "runs/list.html", context)


def _list_token(page) -> str:
    """What a runs list shows that can change by itself: its rows' states and its size."""
    state = [page.paginator.count] + [
        (r.pk, r.status, r.duration_ms, r.started_at) for r in page.object_list
    ]
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


@login_required
@require_http_methods(["GET"])
def run_row(request: HttpRequest, run_id: str) -> HttpResponse:
    run = get_run_for(current_org(request), run_id)
    show_loop = request.GET.get("loop") != "0"
    decorate([run])
    return render(request, "runs/list.html#row", {"run": run, "show_loop": show_loop})


@login_required
@require_http_methods(["GET"])
def run_card(request: HttpRequest, run_id: str) -> HttpResponse:
    """The compact live result of a test run, shown beside the editor."""
    run = get_run_for(current_org(request), run_id)
    decorate([run])
    # The first chunk only: the run's page has the whole output.
    pretty = _pretty(run.output)
    run.output_json = pretty[:CHUNK_CHARS] + ("\n…" if len(pretty) > CHUNK_CHARS else "")
    return render(request, "loops/editor.html#run-card", {"run": run})


# --- Values (input, output, error): formatted, raw, chunks --------------------------------------


def _pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _raw(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def value_block(value, *, url: str) -> dict:
    """What the template needs to show one JSON value with its Formatted and Raw views, without
    sending megabytes at once: text in chunks, long arrays 20 items at a time (in both views),
    and a download of the whole value."""
    raw = _raw(value)
    block = {
        "url": url, "is_null": value is None, "size": len(raw),
        # Live updates leave a value box whose key is unchanged as the reader left it.
        "key": hashlib.blake2b(raw.encode(), digest_size=8).hexdigest(),
    }  # fmt: skip
    if isinstance(value, list) and len(value) > ARRAY_PAGE:
        block.update(
            array=_items(value, 0, "items"), raw_array=_items(value, 0, "raw-items"),
            items_next=ARRAY_PAGE, items_left=len(value) - ARRAY_PAGE, truncated=True,
        )  # fmt: skip
        return block
    if len(raw) <= CHUNK_CHARS:
        block.update(formatted=formatted_html(value), raw=raw, truncated=False)
        return block
    pretty = _pretty(value)
    block.update(
        pretty=pretty[:CHUNK_CHARS], pretty_next=CHUNK_CHARS, pretty_left=len(pretty) - CHUNK_CHARS,
        raw=raw[:CHUNK_CHARS], raw_next=CHUNK_CHARS, raw_left=len(raw) - CHUNK_CHARS,
        truncated=True,
    )  # fmt: skip
    return block


def _items(value: list, start: int, view: str, count: int = ARRAY_PAGE) -> list[tuple]:
    """One page of an array's items as (index, html or text): formatted where an item is small
    enough, else its JSON (cut at CHUNK_CHARS; the download has all of it)."""
    items = []
    for index, item in enumerate(value[start : start + count], start=start):
        text = _raw(item) if view == "raw-items" else _pretty(item)
        if len(text) > CHUNK_CHARS:
            items.append((index, None, text[:CHUNK_CHARS] + "\n…"))
        elif view == "raw-items":
            items.append((index, None, text))
        else:
            items.append((index, formatted_html(item), None))
    return items


def _value_url(run: Run, field: str, step: Step | None = None) -> str:
    base = reverse("runs:value", args=[run.pk])
    return f"{base}?field={field}" + (f"&step={step.pk}" if step else "")


def _field_value(run: Run, step: Step | None, field: str):
    if step is None:
        values = {"input": run.input, "output": run.output}
    else:
        values = {
            "input": step.input, "output": step.output, "error": step.error,
            "iteration": {"index": step.iteration, "item": step.iteration_item},
            "body": (step.error or {}).get("body") if isinstance(step.error, dict) else None,
        }  # fmt: skip
        if step.kind == "each":
            values["items"] = _each_items(list(step.children.order_by("order")))
        if isinstance(step.output, list):
            values.update({f"page-{n}": page for n, page in enumerate(step.output, start=1)})
    if field not in values:
        raise Http404("No such field.")
    return values[field]


@login_required
@require_http_methods(["GET"])
def run_value(request: HttpRequest, run_id: str) -> HttpResponse:
    """One value of a run or step: whole (`full=1`, as a download with `download=1`), a chunk
    of its text from `start`, or a page of its items (`view=items|raw-items`; `all=1`: the
    rest of them)."""
    run = get_run_for(current_org(request), run_id)
    step_id = request.GET.get("step")
    step = get_step_for(run, step_id) if step_id else None
    field = request.GET.get("field", "")
    value = _field_value(run, step, field)
    view = request.GET.get("view", "pretty")
    start = query_int(request.GET.get("start")) or 0
    url = _value_url(run, field, step)
    if request.GET.get("full") == "1":
        text = _raw(value) if view == "raw" else _pretty(value)
        response = HttpResponse(text, content_type="application/json; charset=utf-8")
        if request.GET.get("download") == "1":
            name = f"{run.pk}-{step.name if step else 'run'}-{field}.json"
            response["Content-Disposition"] = content_disposition_header(True, name)
        return response
    if view in {"items", "raw-items"}:
        if not isinstance(value, list):
            raise Http404("Not an array.")
        count = ALL_ITEMS if request.GET.get("all") == "1" else ARRAY_PAGE
        nxt = start + count
        return render(request, "runs/detail.html#more-items", {
            "items": _items(value, start, view, count), "url": url, "view": view,
            "next": nxt if nxt < len(value) else None, "remaining": max(len(value) - nxt, 0),
        })  # fmt: skip
    text = _raw(value) if view == "raw" else _pretty(value)
    nxt = start + (ALL_CHARS if request.GET.get("all") == "1" else CHUNK_CHARS)
    return render(request, "runs/detail.html#more-text", {
        "text": text[start:nxt], "url": url, "view": view,
        "next": nxt if nxt < len(text) else None, "remaining": max(len(text) - nxt, 0),
    })  # fmt: skip


# --- Run detail ---------------------------------------------------------------------------------


def _step_tree(run: Run, steps: list[Step], only: str) -> list[dict]:
    """Steps as a tree (Step.parent), each with its child runs (Run.parent_step) and their
    steps nested under it. `only` keeps failed or rejected steps (and their ancestors)."""
    children_of: dict[str | None, list[Step]] = {}
    for step in steps:
        children_of.setdefault(step.parent_id, []).append(step)
    child_runs: dict[str, list[Run]] = {}
    for child in without_values(
        Run.objects.filter(parent_step__run=run).select_related("loop").order_by("created_at")
    ):
        child_runs.setdefault(child.parent_step_id, []).append(child)

    def block(value, field: str, step: Step) -> dict:
        return value_block(value, url=_value_url(run, field, step))

    def node(step: Step) -> dict | None:
        kids = [n for n in (node(s) for s in children_of.get(step.pk, [])) if n]
        runs = []
        for child in child_runs.get(step.pk, []):
            decorate([child])
            child_steps = decorate(list(child.steps.order_by("order")))
            nested = _step_tree(child, child_steps, only)
            if nested or not only:
                runs.append({"run": child, "steps": nested})
        keep = not only or step.shown_status == only or kids or runs
        if not keep:
            return None
        error = step.error if isinstance(step.error, dict) and not step.cancelled else None
        http_error = step.kind == "http" and error is not None and "status" in error
        paged = step.kind == "http" and step.page is not None and isinstance(step.output, list)
        entry = {
            "step": step, "children": _with_dividers(kids), "child_runs": runs,
            "summary": summary_rows(step, runs),
            "error": error,  # a cancelled step's badge says cancelled: no error section
            "http_error": http_error,
            "error_block": block(step.error, "error", step) if error and not http_error else None,
            "body": block(error.get("body"), "body", step)
            if http_error and "body" in error else None,
            "input": block(step.input, "input", step) if step.input is not None else None,
            "output": block(step.output, "output", step)
            if step.output is not None and not paged else None,
            "pages": [(number, block(page, f"page-{number}", step))
                      for number, page in enumerate(step.output, start=1)] if paged else [],
            "items": block(_each_items(children_of.get(step.pk, [])), "items", step)
            if step.kind == "each" else None,
            "iteration": block({"index": step.iteration, "item": step.iteration_item},
                               "iteration", step) if step.iteration is not None else None,
        }  # fmt: skip
        sections = ("error", "input", "output", "items", "iteration")
        entry["open_one"] = sum(bool(entry[k]) for k in sections) + len(entry["pages"]) == 1
        return entry

    return _with_dividers([n for n in (node(s) for s in children_of.get(None, [])) if n])


def _each_items(children: list[Step]) -> list:
    """A step.each's items, as its iterations' steps carry them (one per iteration)."""
    items: dict[int, object] = {}
    for child in children:
        if child.iteration is not None:
            items.setdefault(child.iteration, child.iteration_item)
    return [items[index] for index in sorted(items)]


def _with_dividers(nodes: list[dict]) -> list[dict]:
    """Mark the first step of each iteration after the first, where the timeline draws a line."""
    previous = None
    for entry in nodes:
        iteration = entry["step"].iteration
        entry["new_iteration"] = (
            iteration is not None and previous is not None and iteration != previous
        )
        previous = iteration if iteration is not None else previous
    return nodes


def _skipped_steps(run: Run, steps: list[Step]) -> list[str]:
    """Steps a run did not reach because a rejection stopped it (step.approve's on_reject
    "stop"): the ones its program calls below the rejected step, not recorded."""
    rejected = next((s for s in steps if s.status == StepStatus.REJECTED
                     and (s.input or {}).get("onReject", "stop") == "stop"), None)  # fmt: skip
    if rejected is None or not run.is_ended or not rejected.line:
        return []
    code = run.version.code if run.version else run.test_code
    recorded = {s.name for s in steps}
    return [name for name in steps_after(code, rejected.line) if name not in recorded]


def _breadcrumb(run: Run) -> list[tuple[Run, Step]]:
    chain = []
    current = run
    while current.parent_step_id and len(chain) < 10:
        step = (
            Step.objects.select_related("run__loop")
            .defer("input", "output", "error", "run__input", "run__output")
            .get(pk=current.parent_step_id)
        )
        chain.append((step.run, step))
        current = step.run
    return list(reversed(chain))


def _live_token(run: Run, steps: list[Step], log_total: int) -> str:
    state = [run.status, run.attempt, run.cpu_time_ms, run.duration_ms, log_total] + [
        (s.pk, s.status, s.attempts) for s in steps
    ]
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


@login_required
@require_http_methods(["GET"])
def detail(request: HttpRequest, run_id: str) -> HttpResponse:
    org = current_org(request)
    run = get_run_for(org, run_id)
    steps = decorate(list(run.steps.order_by("order")))
    decorate([run])
    logs, log_total = run_log_tail(run, LOG_TAIL)
    token = _live_token(run, steps, log_total)
    if request.htmx and request.GET.get("since") == token:
        return HttpResponse(status=204)  # nothing changed: htmx keeps the page as it is
    only = {"errors": StepStatus.FAILED, "rejected": StepStatus.REJECTED}.get(
        request.GET.get("steps", ""), ""
    )
    membership = current_membership(request)
    context = {
        "run": run, "tree": _step_tree(run, steps, only),
        "skipped": [] if only else _skipped_steps(run, steps),
        "steps_filter": request.GET.get("steps", ""),
        "counts": {
            "all": len(steps),
            "errors": sum(s.status == StepStatus.FAILED and not s.cancelled for s in steps),
            "rejected": sum(s.status == StepStatus.REJECTED for s in steps),
        },
        "input_block": value_block(run.input, url=_value_url(run, "input")),
        "output_block": value_block(run.output, url=_value_url(run, "output"))
        if run.output is not None else None,
        "breadcrumb": _breadcrumb(run), "token": token, "polls": not run.is_ended,
        "can_run": membership.allows(Role.EDITOR),
        "restarts": run.restarts.order_by("-created_at")[:5],
        "logs": logs, "log_total": log_total,
        "respond_form": RespondForm(), "save_form": SaveInputForm(),
        "tool_input_json": _pretty(run.pending["toolInput"])
        if (run.pending or {}).get("toolInput") is not None else None,
    }  # fmt: skip
    if request.htmx and request.htmx.target == "run-live":
        # 286 tells htmx to stop polling: an ended run does not change by itself.
        return render(
            request, "runs/detail.html#live", context, status=286 if run.is_ended else 200
        )
    return render(request, "runs/detail.html", context)


def _act(request: HttpRequest, run_id: str, action, success: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    run = get_run_for(org, run_id)
    try:
        result = action(run)
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(run)
    messages.success(request, success)
    return redirect(result)


@login_required
@require_http_methods(["POST"])
def restart(request: HttpRequest, run_id: str) -> HttpResponse:
    return _act(
        request, run_id,
        lambda run: run_restart(run=run, user=request.user, trigger_type=TriggerType.USER,
                                actor=Actor.from_request(request)),
        "Restarted: this is the new run.",
    )  # fmt: skip


@login_required
@require_http_methods(["POST"])
def resume(request: HttpRequest, run_id: str) -> HttpResponse:
    return _act(request, run_id, lambda run: run_resume(run=run, actor=Actor.from_request(request)),
                "Resumed from the last checkpoint.")  # fmt: skip


@login_required
@require_http_methods(["POST"])
def cancel(request: HttpRequest, run_id: str) -> HttpResponse:
    return _act(request, run_id, lambda run: run_cancel(run=run, actor=Actor.from_request(request)),
                "Run cancelled.")  # fmt: skip


@login_required
@require_http_methods(["POST"])
def respond(request: HttpRequest, run_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    run = get_run_for(org, run_id)
    form = RespondForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose answer, approve or reject.")
        return redirect(run)
    action = form.cleaned_data["action"]
    value = form.cleaned_data["value"]
    stops = action == "reject" and run.stops_when_rejected()
    try:
        run_respond(
            run=run, action=action, value=value, has_value=action == "input" and value != "",
            reason=form.cleaned_data["reason"] or None, actor=Actor.from_request(request),
        )  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        done = {"input": "Answer sent.", "approve": "Approved.", "reject": "Rejected."}
        then = "The run stops." if stops else "The run carries on."
        messages.success(request, f"{done[action]} {then}")
    return redirect(run)


@login_required
@require_http_methods(["POST"])
def save_test_input(request: HttpRequest, run_id: str) -> HttpResponse:
    org = require_role(request, Role.EDITOR)
    run = get_run_for(org, run_id)
    form = SaveInputForm(request.POST)
    if form.is_valid():
        library_input_save(loop=run.loop, name=form.cleaned_data["name"], value=run.input)
        messages.success(request, f"Saved as test input “{form.cleaned_data['name']}”.")
    else:
        messages.error(request, "Give the test input a name.")
    return redirect(run)


@login_required
@require_http_methods(["POST"])
def save_step_output(request: HttpRequest, run_id: str, step_id: str) -> HttpResponse:
    """Save Output to Library: a step's whole output (read here, not sent by the page) as a
    test input of the run's loop, placed at the path given."""
    org = require_role(request, Role.EDITOR)
    run = get_run_for(org, run_id)
    step = get_step_for(run, step_id)
    form = SaveOutputForm(request.POST)
    if step.output is None:
        messages.error(request, f"Step “{step.name}” has no output to save.")
    elif not form.is_valid():
        messages.error(
            request, "Give the test input a name (name: required, at most 100 characters)."
        )
    else:
        try:
            saved = library_input_save(loop=run.loop, name=form.cleaned_data["name"],
                                    value=step.output, path=form.cleaned_data["path"])  # fmt: skip
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, f"Saved the output of “{step.name}” as test input “{saved.name}”."
            )
    return redirect(f"{run.get_absolute_url()}#step-{step.pk}")
