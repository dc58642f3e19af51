from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from accounts.audit import Actor
from accounts.models import ApiToken, AuditEvent, Invitation, Membership, Organization
from accounts.services import (
    invitation_revoke,
    membership_change_role,
    membership_remove,
    token_create,
    token_revoke,
)
from loops.models import Loop


def count_of(model) -> Coalesce:
    """How many rows of the model belong to the organization of the outer query."""
    rows = model.objects.filter(organization=OuterRef("pk")).order_by().values("organization")
    return Coalesce(Subquery(rows.annotate(n=Count("pk")).values("n")), 0)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "id",
        "member_count",
        "loop_count",
        "effective_concurrency_limit",
        "created_at",
    ]
    list_filter = [("concurrency_limit", admin.EmptyFieldListFilter)]
    search_fields = ["=id", "slug", "name"]
    readonly_fields = ["id", "effective_concurrency_limit", "created_at"]
    fields = [
        "id",
        "slug",
        "name",
        "concurrency_limit",
        "effective_concurrency_limit",
        "created_at",
    ]
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest):
        # Subqueries, not joins: two joined counts would multiply members by loops.
        return (
            super()
            .get_queryset(request)
            .annotate(n_members=count_of(Membership), n_loops=count_of(Loop))
        )

    @admin.display(description="Members", ordering="n_members")
    def member_count(self, obj: Organization) -> int:
        return obj.n_members

    @admin.display(description="Loops", ordering="n_loops")
    def loop_count(self, obj: Organization) -> int:
        return obj.n_loops

    @admin.display(description="Effective concurrency limit")
    def effective_concurrency_limit(self, obj: Organization) -> str:
        limit = obj.effective_concurrency_limit()
        shown = "no limit" if limit is None else f"{limit:,} running at once"
        if obj.concurrency_limit is not None:
            return f"{shown} (this organization's override)"
        return f"{shown} (LOOPS_ORG_CONCURRENCY_LIMIT setting)"


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "organization"]
    list_select_related = ["user", "organization"]
    search_fields = ["user__username", "user__email", "organization__slug", "organization__name"]
    autocomplete_fields = ["user", "organization"]
    readonly_fields = ["id", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # Once made, a membership changes only its role (through the service, audited).
        return (
            self.readonly_fields if obj is None else [*self.readonly_fields, "user", "organization"]
        )

    def save_model(self, request: HttpRequest, obj: Membership, form, change: bool) -> None:
        if change:
            membership_change_role(membership=obj, role=obj.role, actor=Actor.from_request(request))
            return
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        membership_remove(membership=obj, actor=Actor.from_request(request))

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for membership in queryset:
            membership_remove(membership=membership, actor=Actor.from_request(request))


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ["organization", "name", "scope", "expires_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "organization",
        "masked_prefix",
        "scope",
        "token_status",
        "created_at",
        "last_used_at",
        "expires_at",
    ]
    list_filter = ["scope", "organization", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organization", "created_by"]
    search_fields = ["=id", "name", "prefix", "organization__slug", "organization__name"]
    autocomplete_fields = ["organization"]
    actions = ["revoke_tokens"]
    # The hash is never shown; the prefix is enough to recognise a token.
    readonly_fields = [
        "id",
        "organization",
        "masked_prefix",
        "scope",
        "token_status",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    fields = [
        "id",
        "organization",
        "name",
        "masked_prefix",
        "scope",
        "token_status",
        "expires_at",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]

    def get_form(self, request: HttpRequest, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApiTokenAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj=None):
        if obj is None:
            return ApiTokenAddForm.Meta.fields
        return self.fields

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            # Only what the form changed: last_used_at and revoked_at are written elsewhere.
            obj.save(update_fields=form.changed_data)
            return
        # The secret exists only here: token_create stores its hash and returns it once.
        token, raw = token_create(
            organization=obj.organization,
            name=obj.name,
            scope=obj.scope,
            expires_at=obj.expires_at,
            created_by=request.user,
            actor=Actor.from_request(request),
        )
        obj.pk = token.pk
        obj.refresh_from_db()
        obj._state.adding = False
        request.new_token_secret = raw  # for response_add, on this request object only

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue=None):
        # The secret goes out in this answer, not in a message: a message would wait for the
        # next page in a cookie or, when large, in the session table.
        raw = getattr(request, "new_token_secret", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Copy the new token",
            "token": obj,
            "secret": raw,
        }
        response: HttpResponse = TemplateResponse(
            request, "accounts/admin_token_created.html", context
        )
        add_never_cache_headers(response)
        return response

    @admin.display(description="Token")
    def masked_prefix(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="Status")
    def token_status(self, obj: ApiToken) -> str:
        return obj.status

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset) -> None:
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True):
            token_revoke(token=token, actor=Actor.from_request(request))
            revoked += 1
        noun = model_ngettext(self.opts, revoked)
        self.message_user(request, f"Revoked {revoked} {noun}.", messages.SUCCESS)
        skipped = queryset.count() - revoked
        if skipped:
            self.message_user(request, f"Skipped {skipped}: already revoked", messages.WARNING)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invitations are made on an organization's members page, where the link is shown once;
    here they are looked at and withdrawn."""

    list_display = [
        "identifier",
        "organization",
        "role",
        "invitation_status",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_by",
    ]
    list_filter = [
        "role",
        "organization",
        ("accepted_at", admin.EmptyFieldListFilter),
        ("revoked_at", admin.EmptyFieldListFilter),
    ]
    list_select_related = ["organization", "invited_by", "accepted_by"]
    search_fields = ["=id", "identifier", "organization__slug", "organization__name"]
    actions = ["revoke_invitations"]
    fields = [
        "id",
        "organization",
        "identifier",
        "role",
        "invitation_status",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "declined_at",
        "revoked_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Status")
    def invitation_status(self, obj: Invitation) -> str:
        return obj.status.label

    @admin.action(description="Revoke selected invitations", permissions=["change"])
    def revoke_invitations(self, request: HttpRequest, queryset) -> None:
        revoked = 0
        for invitation in queryset.open():
            invitation_revoke(invitation=invitation, actor=Actor.from_request(request))
            revoked += 1
        noun = model_ngettext(self.opts, revoked)
        self.message_user(request, f"Revoked {revoked} {noun}.", messages.SUCCESS)
        skipped = queryset.count() - revoked
        if skipped:
            self.message_user(
                request, f"Skipped {skipped}: accepted, declined or revoked", messages.WARNING
            )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read-only: entries are written with the actions they record and deleted
    only by the retention (LOOPS_AUDIT_RETENTION_DAYS)."""

    list_display = ["at", "organization", "actor_type", "actor_name", "action", "object_type",
                    "object_id", "ip"]  # fmt: skip
    list_filter = ["action", "actor_type", "organization"]
    list_select_related = ["organization"]
    search_fields = ["object_id", "actor_name", "action"]
    date_hierarchy = "at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
