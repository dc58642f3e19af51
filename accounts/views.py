from datetime import datetime, time

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods

from accounts.access import (
    get_invitation_by_secret,
    get_invitation_for,
    get_invitation_for_user,
    get_membership_for,
    get_token_for,
)
from accounts.audit import Actor
from accounts.audit_log import filter_audit
from accounts.forms import InviteForm, RoleForm, TokenForm, WebhookForm
from accounts.middleware import SESSION_KEY
from accounts.models import AUDIT_ACTIONS, ActorType, ApiToken, Invitation, Membership, Role
from accounts.permissions import current_membership, require_role
from accounts.services import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_revoke,
    invitation_send,
    membership_change_role,
    membership_remove,
    token_create,
    token_revoke,
)
from loops.access import get_loop_for
from loops.models import Loop
from loops_project.errors import DomainError
from runs.access import get_webhook_for
from runs.models import Webhook
from runs.webhooks import (
    delivery_redeliver,
    webhook_create,
    webhook_delete,
    webhook_send_test,
    webhook_set_active,
    webhook_update,
    webhook_url_refusal,
)


@login_required
@require_http_methods(["GET"])
def home(request: HttpRequest) -> HttpResponse:
    if not request.membership:
        return redirect("accounts:invitations")  # someone who belongs nowhere yet
    return redirect("loops:list")


@login_required
@require_http_methods(["POST"])
def switch_org(request: HttpRequest, org: str) -> HttpResponse:
    membership = get_membership_for(request.user, org)
    request.session[SESSION_KEY] = membership.organization_id
    messages.info(request, f"Switched to {membership.organization.name}.")
    return redirect("loops:list")


# --- Members ------------------------------------------------------------------------------------


def _get_member_for(org, membership_id: str) -> Membership:
    membership = (
        Membership.objects.select_related("user", "organization")
        .filter(organization=org, pk=membership_id)
        .first()
    )
    if membership is None:
        raise Http404("No such member.")
    return membership


@login_required
@require_http_methods(["GET", "POST"])
def members(request: HttpRequest) -> HttpResponse:
    me = current_membership(request)
    org = me.organization
    allow_owner = me.allows(Role.OWNER)
    form = InviteForm(allow_owner=allow_owner)
    invited = None
    if request.method == "POST":
        require_role(request, Role.ADMIN)
        form = InviteForm(request.POST, allow_owner=allow_owner)
        if form.is_valid():
            try:
                invitation, raw = invitation_create(
                    organization=org,
                    identifier=form.cleaned_data["identifier"],
                    role=form.cleaned_data["role"],
                    invited_by=request.user,
                    actor=Actor.from_request(request),
                )
            except DomainError as exc:
                form.add_error("identifier", exc.message)
            else:
                # The link is in this answer only: rendered, not redirected through the session.
                link = request.build_absolute_uri(reverse("accounts:invitation_link", args=[raw]))
                emailed = invitation_send(invitation=invitation, link=link)
                invited = {"invitation": invitation, "link": link, "emailed": emailed}
                form = InviteForm(allow_owner=allow_owner)
    rows = (
        Membership.objects.filter(organization=org)
        .select_related("user")
        .order_by("user__username")
    )
    can_manage = me.allows(Role.ADMIN)
    pending = (
        Invitation.objects.for_org(org).pending().select_related("invited_by")
        if can_manage
        else Invitation.objects.none()
    )
    response = render(request, "accounts/members.html", {
        "rows": rows, "form": form, "can_manage": can_manage, "invitations": pending,
        "invited": invited, "role_form": RoleForm(), "section": "members",
    })  # fmt: skip
    if invited:
        add_never_cache_headers(response)
    return response


@login_required
@require_http_methods(["POST"])
def invitation_revoke_view(request: HttpRequest, invitation_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    invitation = get_invitation_for(org, invitation_id)
    if invitation.role == Role.OWNER:
        require_role(request, Role.OWNER)
    invitation_revoke(invitation=invitation, actor=Actor.from_request(request))
    messages.success(request, f"The invitation to {invitation.identifier} was withdrawn.")
    return redirect("accounts:members")


# --- Invitations, as the invited person sees them ------------------------------------------------


@login_required
@require_http_methods(["GET"])
def invitations(request: HttpRequest) -> HttpResponse:
    rows = (
        Invitation.objects.addressed_to(request.user)
        .pending()
        .select_related("organization", "invited_by")
    )
    return render(request, "accounts/invitations.html", {"rows": rows})


@login_required
@require_http_methods(["GET"])
def invitation_link(request: HttpRequest, secret: str) -> HttpResponse:
    """Where an invitation's link leads: the invitation, if it is for the person logged in."""
    invitation = get_invitation_by_secret(secret)
    if not invitation.is_for(request.user):
        return render(request, "accounts/invitation.html", {"not_yours": True}, status=403)
    status = 200 if invitation.is_pending else 410
    return render(request, "accounts/invitation.html", {"invitation": invitation}, status=status)


@login_required
@require_http_methods(["POST"])
def invitation_accept_view(request: HttpRequest, invitation_id: str) -> HttpResponse:
    invitation = get_invitation_for_user(request.user, invitation_id)
    try:
        membership = invitation_accept(invitation=invitation, user=request.user)
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:invitations")
    request.session[SESSION_KEY] = membership.organization_id
    messages.success(
        request,
        f"Welcome to {invitation.organization.name}: you joined as "
        f"{membership.get_role_display().lower()}.",
    )
    return redirect("loops:list")


@login_required
@require_http_methods(["POST"])
def invitation_decline_view(request: HttpRequest, invitation_id: str) -> HttpResponse:
    invitation = get_invitation_for_user(request.user, invitation_id)
    try:
        invitation_decline(invitation=invitation, user=request.user)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.info(request, f"You declined the invitation to {invitation.organization.name}.")
    return redirect("accounts:invitations")


@login_required
@require_http_methods(["POST"])
def member_role(request: HttpRequest, membership_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    membership = _get_member_for(org, membership_id)
    form = RoleForm(request.POST)
    if form.is_valid():
        if Role.OWNER in (membership.role, form.cleaned_data["role"]):
            require_role(request, Role.OWNER)  # only an owner makes or unmakes owners
        try:
            membership_change_role(membership=membership, role=form.cleaned_data["role"],
                                   actor=Actor.from_request(request))  # fmt: skip
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, f"{membership.user.username} is now {form.cleaned_data['role']}."
            )
    return redirect("accounts:members")


@login_required
@require_http_methods(["POST"])
def member_remove(request: HttpRequest, membership_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    membership = _get_member_for(org, membership_id)
    if membership.role == Role.OWNER:
        require_role(request, Role.OWNER)
    try:
        membership_remove(membership=membership, actor=Actor.from_request(request))
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.username} was removed.")
    return redirect("accounts:members")


# --- API tokens ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    form = TokenForm()
    new_token = None
    if request.method == "POST":
        form = TokenForm(request.POST)
        if form.is_valid():
            expires = form.cleaned_data["expires_at"]
            token, raw = token_create(
                organization=org,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                expires_at=timezone.make_aware(datetime.combine(expires, time.max))
                if expires
                else None,
                created_by=request.user,
                actor=Actor.from_request(request),
            )
            # The secret is in this answer only: rendered here, never kept in the session (a
            # redirect would have to carry it there) nor anywhere else on the server.
            new_token = {"id": token.pk, "raw": raw}
            form = TokenForm()
    rows = ApiToken.objects.for_org(org).select_related("created_by")
    response = render(request, "accounts/tokens.html", {
        "rows": rows, "form": form, "new_token": new_token, "section": "tokens",
    })  # fmt: skip
    if new_token:
        add_never_cache_headers(response)  # no copy of the secret in any cache either
    return response


@login_required
@require_http_methods(["POST"])
def token_revoke_view(request: HttpRequest, token_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    token = get_token_for(org, token_id)
    token_revoke(token=token, actor=Actor.from_request(request))
    messages.success(request, f"Token “{token.name}” was revoked. It no longer works.")
    return redirect("accounts:tokens")


# --- Audit log ----------------------------------------------------------------------------------

AUDIT_PAGE = 50
AUDIT_FILTERS = ("action", "actor_type", "object_id", "after", "before")


@login_required
@require_http_methods(["GET"])
def audit(request: HttpRequest) -> HttpResponse:
    """The organization's audit log, newest first, for admins: filters by action (or its
    first part), actor type, object and time."""
    org = require_role(request, Role.ADMIN)
    filters = {name: request.GET.get(name, "").strip() for name in AUDIT_FILTERS}
    error = None
    try:
        qs = filter_audit(org, **filters).order_by("-at", "-id")
    except DomainError as exc:
        error, qs = exc.message, filter_audit(org).none()
    page = Paginator(qs, AUDIT_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page, "filters": filters, "error": error, "query": query.urlencode(),
        "filtered": any(filters.values()), "actor_types": ActorType.values,
        "actions": AUDIT_ACTIONS, "section": "audit",
    }  # fmt: skip
    if request.htmx:
        return render(request, "accounts/audit.html#results", context)
    return render(request, "accounts/audit.html", context)


# --- Webhooks -----------------------------------------------------------------------------------


def _chosen_loop(org, form: WebhookForm) -> Loop | None:
    slug = form.cleaned_data["loop"]
    return get_loop_for(org, slug) if slug else None


def _field_error(form: WebhookForm, exc: DomainError) -> None:
    field = (exc.details or {}).get("field")
    form.add_error(field if field in form.fields else None, exc.message)


def _warn_if_refused(request: HttpRequest, hook: Webhook) -> None:
    """Warn, once a webhook is saved, if deliveries to its URL would be refused now. The URL is
    kept: the guard decides again at each attempt, and the host may resolve elsewhere by then
    (a name not set up yet, a typo the person fixes next)."""
    refusal = webhook_url_refusal(hook.url)
    if refusal:
        messages.warning(request, f"URL: saved, but deliveries to it will fail: {refusal}.")


@login_required
@require_http_methods(["GET", "POST"])
def webhooks(request: HttpRequest) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    loops = Loop.objects.for_org(org)
    form = WebhookForm(loops=loops)
    if request.method == "POST":
        form = WebhookForm(request.POST, loops=loops)
        if form.is_valid():
            try:
                hook = webhook_create(
                    organization=org,
                    url=form.cleaned_data["url"],
                    events=form.cleaned_data["events"],
                    loop=_chosen_loop(org, form),
                    actor=Actor.from_request(request),
                )
            except DomainError as exc:
                _field_error(form, exc)
            else:
                messages.success(request, "Webhook created. Verify deliveries with its secret.")
                _warn_if_refused(request, hook)
                return redirect("accounts:webhook", hook_id=hook.pk)
    rows = Webhook.objects.filter(organization=org).select_related("loop")
    return render(request, "accounts/webhooks.html", {
        "rows": rows, "form": form, "section": "webhooks",
    })  # fmt: skip


@login_required
@require_http_methods(["GET", "POST"])
def webhook_detail(request: HttpRequest, hook_id: str) -> HttpResponse:
    """A webhook's page: its deliveries (polled while open), its settings to edit, its secret."""
    org = require_role(request, Role.ADMIN)
    hook = get_webhook_for(org, hook_id)
    deliveries = hook.deliveries.select_related("run")[:50]
    context = {
        "hook": hook, "deliveries": deliveries, "section": "webhooks",
        "max_attempts": settings.LOOPS_WEBHOOK_MAX_ATTEMPTS,
    }  # fmt: skip
    if request.htmx and request.method == "GET":
        return render(request, "accounts/webhook.html#deliveries", context)
    loops = Loop.objects.for_org(org)
    form = WebhookForm.of(hook, loops=loops)
    if request.method == "POST":
        form = WebhookForm(request.POST, loops=loops)
        if form.is_valid():
            try:
                webhook_update(
                    webhook=hook,
                    url=form.cleaned_data["url"],
                    events=form.cleaned_data["events"],
                    loop=_chosen_loop(org, form),
                    actor=Actor.from_request(request),
                )
            except DomainError as exc:
                _field_error(form, exc)
            else:
                messages.success(request, "Webhook saved.")
                _warn_if_refused(request, hook)
                return redirect("accounts:webhook", hook_id=hook.pk)
    return render(request, "accounts/webhook.html", {**context, "form": form})


@login_required
@require_http_methods(["POST"])
def webhook_set_active_view(request: HttpRequest, hook_id: str, active: bool) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    hook = webhook_set_active(
        webhook=get_webhook_for(org, hook_id), active=active, actor=Actor.from_request(request)
    )
    if hook.active:
        messages.success(request, "Webhook enabled: run status changes are sent to it again.")
    else:
        messages.success(request, "Webhook disabled: nothing is sent to it until it is enabled.")
    return redirect("accounts:webhook", hook_id=hook.pk)


@login_required
@require_http_methods(["POST"])
def webhook_delete_view(request: HttpRequest, hook_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    hook = get_webhook_for(org, hook_id)
    webhook_delete(webhook=hook, actor=Actor.from_request(request))
    messages.success(request, f"Webhook {hook.url} was deleted, with its deliveries.")
    return redirect("accounts:webhooks")


@login_required
@require_http_methods(["POST"])
def webhook_test_view(request: HttpRequest, hook_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    hook = get_webhook_for(org, hook_id)
    try:
        webhook_send_test(webhook=hook)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Test event (ping) sent: its delivery is listed below.")
    return redirect("accounts:webhook", hook_id=hook.pk)


@login_required
@require_http_methods(["POST"])
def webhook_redeliver(request: HttpRequest, hook_id: str, delivery_id: str) -> HttpResponse:
    org = require_role(request, Role.ADMIN)
    hook = get_webhook_for(org, hook_id)
    delivery = hook.deliveries.filter(pk=delivery_id).first()
    if delivery is None:
        raise Http404("No such delivery.")
    try:
        delivery_redeliver(delivery=delivery)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Delivery queued again.")
    return redirect("accounts:webhook", hook_id=hook.pk)
