"""The inbox page: every run of the organization waiting for a person, live, with filters,
decisions on many approvals at once and an inline answer to a question."""

import hashlib
import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from accounts.audit import Actor
from accounts.models import Membership, Role
from accounts.permissions import current_membership, require_role
from loops.models import Loop
from loops_project.errors import DomainError
from runs.access import get_run_for
from runs.approvals import approvals_decide
from runs.inbox import (
    NOBODY,
    filter_inbox,
    for_list,
    is_overdue,
    may_answer,
    mine,
    waiting_count,
    waiting_for_people,
    waiting_since,
)
from runs.services import run_respond
from runs.views import fmt_ms

PAGE_SIZE = 25
ME = "me"
AGES = [("", "Any time"), ("300", "5 minutes"), ("3600", "1 hour"), ("86400", "1 day"),
        ("604800", "1 week")]  # fmt: skip
FILTERS = ("loop", "kind", "assignee", "age")


class InboxFilterForm(forms.Form):
    """The inbox filters, in the query string (a filtered inbox is a link)."""

    loop = forms.ChoiceField(required=False)
    kind = forms.ChoiceField(
        required=False,
        choices=[("", "Any"), ("approval", "Approval"), ("input", "Question")],
    )
    assignee = forms.ChoiceField(required=False, label="Assigned to")
    age = forms.ChoiceField(required=False, choices=AGES, label="Waiting longer than")

    def __init__(self, *args, loops=(), members=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["loop"].choices = [("", "All loops")] + [(lp.slug, lp.name) for lp in loops]
        self.fields["assignee"].choices = [
            ("", "Anyone"),
            (ME, "Me"),
            (NOBODY, "Nobody (any editor)"),
            *((f"role:{r.value}", f"{r.label}s") for r in Role),
            *((f"user:{name}", name) for name in members),
        ]

    @property
    def active(self) -> bool:
        return self.is_bound and any(self.data.get(name) for name in self.fields)


def _query(data: QueryDict, *, page: bool = False) -> str:
    """The filters (and page) of a request as a query string, nothing else of it."""
    kept = QueryDict(mutable=True)
    for name in (*FILTERS, "page") if page else FILTERS:
        if data.get(name):
            kept[name] = data[name]
    return kept.urlencode()


def _items(runs, membership: Membership, selected: set[str]) -> list[dict]:
    now = timezone.now()
    editor = membership.allows(Role.EDITOR)
    username = membership.user.get_username()
    items = []
    for run in runs:
        pending = run.pending or {}
        assignees = pending.get("assignees") or []
        since = waiting_since(pending)
        can_answer = editor and may_answer(assignees, role=membership.role, username=username)
        tool_input = pending.get("toolInput")
        items.append({
            "run": run, "kind": pending.get("kind"), "step_name": pending.get("stepName"),
            "prompt": pending.get("prompt"), "tool": pending.get("tool"),
            "tool_input_json": json.dumps(tool_input, indent=2, ensure_ascii=False, default=str)
            if tool_input is not None else None,
            "since": since,
            "waited": fmt_ms(int((now - since).total_seconds() * 1000)) if since else "—",
            "overdue": is_overdue(pending, now), "escalated": bool(pending.get("escalated")),
            "assignees": assignees, "can_answer": can_answer,
            "checked": can_answer and run.pk in selected,
        })  # fmt: skip
    return items


def _token(page, items: list[dict]) -> str:
    """What the inbox shows that can change by itself: its items, their overdue marks, its
    size. Unchanged, a poll answers 204 and the page stays as the reader has it."""
    state = [page.paginator.count] + [
        (i["run"].pk, i["overdue"], i["escalated"], i["since"]) for i in items
    ]
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


@login_required
@require_http_methods(["GET"])
def inbox(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    org = membership.organization
    loops = Loop.objects.filter(organization=org).order_by("name").only("slug", "name")
    members = (
        Membership.objects.filter(organization=org)
        .order_by("user__username")
        .values_list("user__username", flat=True)
    )
    form = InboxFilterForm(request.GET or None, loops=loops, members=members)
    qs = for_list(waiting_for_people(org))
    error = None
    if form.is_bound and not form.is_valid():
        error = "Some filters are not valid: " + "; ".join(
            f"{name}: {' '.join(errs)}" for name, errs in form.errors.items()
        )
        qs = qs.none()
    elif form.is_bound:
        data = form.cleaned_data
        me = data["assignee"] == ME
        try:
            qs = filter_inbox(
                qs, org, loop=data["loop"] or None, kind=data["kind"] or None,
                assignee=None if me else data["assignee"] or None,
                older_than=int(data["age"]) if data["age"] else None,
                me=mine(role=membership.role, username=request.user.get_username())
                if me else None,
            )  # fmt: skip
        except DomainError as exc:
            error, qs = exc.message, qs.none()
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    items = _items(page.object_list, membership, set(request.GET.getlist("runs")))
    token = _token(page, items)
    if request.htmx and request.GET.get("since") == token:
        return HttpResponse(status=204)  # nothing changed: the reader's page stays as it is
    context = {
        "form": form, "page": page, "items": items, "error": error, "token": token,
        "query": _query(request.GET), "filtered": form.active,
        "can_decide": membership.allows(Role.EDITOR),
        "selectable": any(i["kind"] == "approval" and i["can_answer"] for i in items),
        # Unfiltered, the list's count is the navigation's: counted once.
        "inbox_waiting": None if form.active or error else page.paginator.count,
    }  # fmt: skip
    if request.htmx and request.htmx.target == "inbox-results":
        return render(request, "runs/inbox.html#results", context)
    return render(request, "runs/inbox.html", context)


@require_http_methods(["GET"])
def inbox_count(request: HttpRequest) -> HttpResponse:
    """The navigation's count of runs waiting for a person (polled by every page)."""
    membership = getattr(request, "membership", None) if request.user.is_authenticated else None
    if not membership:
        return HttpResponse(status=204)
    count = waiting_count(membership.organization)
    return render(request, "runs/inbox.html#nav-count", {"inbox_waiting": count})


def _back(request: HttpRequest) -> HttpResponse:
    query = _query(QueryDict(request.POST.get("query", "")), page=True)
    return redirect(reverse("inbox") + (f"?{query}" if query else ""))


@login_required
@require_http_methods(["POST"])
def inbox_decide(request: HttpRequest) -> HttpResponse:
    """Approve or reject the selected approvals with one reason (runs.approvals)."""
    org = require_role(request, Role.EDITOR)
    action = request.POST.get("action")
    run_ids = request.POST.getlist("runs")
    if action not in ("approve", "reject"):
        messages.error(request, "Choose Approve or Reject.")
        return _back(request)
    if not run_ids:
        messages.error(request, "Select one or more approvals first (the boxes on the left).")
        return _back(request)
    try:
        result = approvals_decide(
            organization=org, run_ids=run_ids, action=action,
            reason=request.POST.get("reason", "").strip()[:2000] or None,
            actor=Actor.from_request(request),
        )  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
        return _back(request)
    decided, skipped = result["decided"], result["skipped"]
    if decided:
        verb = "Approved" if action == "approve" else "Rejected"
        noun = "approval" if decided == 1 else "approvals"
        messages.success(request, f"{verb} {decided} {noun}; their runs carry on.")
    for item in skipped[:5]:
        messages.warning(request, f"Skipped {item['runId']}: {item['reason']}")
    if len(skipped) > 5:
        messages.warning(request, f"… and {len(skipped) - 5} more skipped.")
    return _back(request)


@login_required
@require_http_methods(["POST"])
def inbox_answer(request: HttpRequest, run_id: str) -> HttpResponse:
    """Answer one question (step.ask) from the inbox."""
    org = require_role(request, Role.EDITOR)
    run = get_run_for(org, run_id)
    value = request.POST.get("value", "")
    try:
        run_respond(run=run, action="input", value=value, has_value=value != "",
                    actor=Actor.from_request(request))  # fmt: skip
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Answer sent to {run.pk}; the run carries on.")
    return _back(request)
