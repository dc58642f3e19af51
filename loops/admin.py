import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import model_ngettext
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.text import slugify

from accounts.audit import Actor
from loops.forms import JsonInput, clean_timezone
from loops.models import Loop, LoopVersion, Schedule, TestInput
from loops.schedules import (
    check_room_for_schedule,
    next_times,
    schedule_create,
    schedule_delete,
    schedule_update,
)
from loops.services import loop_create, loop_rollback, loop_update
from loops_project.errors import DomainError
from runs.services import check_input


def json_block(value) -> str:
    """JSON pretty-printed for a read-only admin field."""
    if value is None:
        return "—"
    return format_html(
        "<pre style='white-space: pre-wrap; margin: 0'>{}</pre>",
        json.dumps(value, indent=2, ensure_ascii=False, default=str),
    )


def report(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    verb: str,
    done: int,
    skipped: dict[str, int],
) -> None:
    """Messages for a bulk action: how many were done ("Cancelled 2 runs."), how many were
    skipped and why."""
    noun = model_ngettext(modeladmin.opts, done)
    modeladmin.message_user(request, f"{verb} {done} {noun}.", messages.SUCCESS)
    for reason, count in skipped.items():
        modeladmin.message_user(request, f"Skipped {count}: {reason}", messages.WARNING)


class LoopVersionInline(admin.TabularInline):
    model = LoopVersion
    fields = ["number", "author_name", "note", "created_at"]
    readonly_fields = fields
    ordering = ["-number"]
    show_change_link = True
    can_delete = False
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # versions come from deploys

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ScheduleInline(admin.TabularInline):
    model = Schedule
    fields = ["cron", "timezone", "enabled", "next_run_at", "last_run_at"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # edited on the schedule's own page, through the services


class LoopForm(forms.ModelForm):
    class Meta:
        model = Loop
        fields = ["organization", "slug", "name", "description", "paused", "concurrency_limit"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    def clean_slug(self) -> str:
        slug = self.cleaned_data["slug"]
        if slugify(slug) != slug:
            raise ValidationError("Use lower-case letters, digits and hyphens.")
        return slug


@admin.register(Loop)
class LoopAdmin(admin.ModelAdmin):
    form = LoopForm
    list_display = [
        "name",
        "slug",
        "organization",
        "version_number",
        "state",
        "concurrency",
        "updated_at",
        "created_at",
    ]
    list_filter = [
        "paused",
        ("concurrency_limit", admin.EmptyFieldListFilter),
        "organization",
    ]
    list_select_related = ["organization", "active_version"]
    search_fields = ["=id", "slug", "name", "organization__slug", "organization__name"]
    autocomplete_fields = ["organization"]
    readonly_fields = ["id", "active_version", "created_at", "updated_at"]
    fields = [
        "id",
        "organization",
        "slug",
        "name",
        "description",
        "paused",
        "concurrency_limit",
        "active_version",
        "created_at",
        "updated_at",
    ]
    inlines = [LoopVersionInline, ScheduleInline]
    actions = ["rollback_to_previous", "pause_loops", "unpause_loops"]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        # The organization and slug name the loop in URLs and the API: fixed once created.
        return (
            self.readonly_fields if obj is None else [*self.readonly_fields, "organization", "slug"]
        )

    def save_model(self, request: HttpRequest, obj: Loop, form, change: bool) -> None:
        actor = Actor.from_request(request)
        if change:
            # The row as it is (obj holds the form's values already): the audit log's "before".
            loop_update(
                loop=Loop.objects.get(pk=obj.pk),
                name=obj.name,
                description=obj.description,
                paused=obj.paused,
                concurrency_limit=obj.concurrency_limit,
                actor=actor,
            )
            obj.refresh_from_db()
            return
        loop = loop_create(
            organization=obj.organization,
            slug=obj.slug,
            name=obj.name,
            description=obj.description,
            concurrency_limit=obj.concurrency_limit,
            actor=actor,
        )
        if obj.paused:
            loop_update(loop=loop, paused=True, actor=actor)
        obj.pk = loop.pk
        obj.refresh_from_db()
        obj._state.adding = False

    @admin.display(description="Version", ordering="active_version__number")
    def version_number(self, obj: Loop) -> str:
        return f"v{obj.active_version.number}" if obj.active_version_id else "not deployed"

    @admin.display(description="State", ordering="paused")
    def state(self, obj: Loop) -> str:
        return "paused" if obj.paused else "active"

    @admin.display(description="Concurrency limit", ordering="concurrency_limit")
    def concurrency(self, obj: Loop) -> str:
        return "none" if obj.concurrency_limit is None else f"{obj.concurrency_limit:,}"

    @admin.action(description="Roll back to the previous version", permissions=["change"])
    def rollback_to_previous(self, request: HttpRequest, queryset) -> None:
        done, skipped = 0, {}
        for loop in queryset.select_related("active_version"):
            previous = None
            if loop.active_version_id:
                previous = (
                    loop.versions.filter(number__lt=loop.active_version.number)
                    .order_by("-number")
                    .first()
                )
            if previous is None:
                reason = "no earlier version to roll back to"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            try:
                loop_rollback(loop=loop, number=previous.number, actor=Actor.from_request(request))
            except DomainError as exc:
                skipped[exc.message] = skipped.get(exc.message, 0) + 1
                continue
            done += 1
        report(self, request, "Rolled back", done, skipped)

    @admin.action(description="Pause selected loops", permissions=["change"])
    def pause_loops(self, request: HttpRequest, queryset) -> None:
        done = 0
        for loop in queryset.filter(paused=False):
            loop_update(loop=loop, paused=True, actor=Actor.from_request(request))
            done += 1
        report(self, request, "Paused", done, {})

    @admin.action(description="Unpause selected loops", permissions=["change"])
    def unpause_loops(self, request: HttpRequest, queryset) -> None:
        done = 0
        for loop in queryset.filter(paused=True):
            loop_update(loop=loop, paused=False, actor=Actor.from_request(request))
            done += 1
        report(self, request, "Unpaused", done, {})


@admin.register(LoopVersion)
class LoopVersionAdmin(admin.ModelAdmin):
    """Read-only: versions are created by deploys and never edited."""

    list_display = ["__str__", "number", "organization", "author_name", "note", "created_at"]
    list_filter = ["loop__organization"]
    list_select_related = ["loop__organization"]
    search_fields = ["=id", "loop__slug", "loop__name", "note", "author_name"]
    fields = ["id", "loop", "number", "author", "author_name", "note", "created_at", "code_block"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the history of a loop is kept

    @admin.display(description="Organization", ordering="loop__organization__name")
    def organization(self, obj: LoopVersion):
        return obj.loop.organization

    @admin.display(description="Code")
    def code_block(self, obj: LoopVersion) -> str:
        return format_html("<pre style='margin: 0'>{}</pre>", obj.code)


class ScheduleForm(forms.ModelForm):
    input = JsonInput(label="Input")

    class Meta:
        model = Schedule
        fields = ["loop", "cron", "timezone", "input", "enabled"]

    def clean_timezone(self) -> str:
        return clean_timezone(self.cleaned_data["timezone"])

    def clean_input(self):
        # Checked here as schedule_create and schedule_update check it, so that the admin
        # shows the error on the field instead of failing in save_model.
        try:
            check_input(self.cleaned_data["input"])
        except DomainError as exc:
            raise ValidationError(exc.message) from None
        return self.cleaned_data["input"]

    def clean(self):
        data = super().clean()
        try:
            if data.get("cron") and data.get("timezone"):
                next_times(data["cron"], data["timezone"])
            if self.instance._state.adding and data.get("loop"):
                check_room_for_schedule(data["loop"].organization_id)
        except DomainError as exc:
            raise ValidationError(exc.message) from None
        return data


class TestInputForm(forms.ModelForm):
    input = JsonInput(label="Input")

    class Meta:
        model = TestInput
        fields = ["loop", "name", "input"]


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = [
        "loop",
        "organization",
        "cron",
        "timezone",
        "enabled",
        "next_run_at",
        "last_run_at",
    ]
    list_filter = ["enabled", "loop__organization"]
    list_select_related = ["loop__organization"]
    search_fields = ["=id", "loop__slug", "loop__name", "cron"]
    autocomplete_fields = ["loop"]
    readonly_fields = ["id", "next_run_at", "last_run_at", "created_at", "queue"]

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return self.readonly_fields if obj is None else [*self.readonly_fields, "loop"]

    @admin.display(description="Organization", ordering="loop__organization__name")
    def organization(self, obj: Schedule):
        return obj.loop.organization

    def save_model(self, request: HttpRequest, obj: Schedule, form, change: bool) -> None:
        # The services compute next_run_at, which the scheduler relies on.
        actor = Actor.from_request(request)
        if change:
            # The row as it is (obj holds the form's values already): the audit log's "before".
            schedule_update(
                schedule=Schedule.objects.select_related("loop").get(pk=obj.pk), cron=obj.cron,
                timezone_name=obj.timezone, input=obj.input, input_given=True,
                enabled=obj.enabled, actor=actor,
            )  # fmt: skip
            obj.refresh_from_db()
            return
        schedule = schedule_create(
            loop=obj.loop,
            cron=obj.cron,
            timezone_name=obj.timezone,
            input=obj.input,
            enabled=obj.enabled,
            actor=actor,
        )
        obj.pk = schedule.pk
        obj.refresh_from_db()
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedule_delete(schedule=obj, actor=Actor.from_request(request))

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for schedule in queryset.select_related("loop"):
            schedule_delete(schedule=schedule, actor=Actor.from_request(request))


@admin.register(TestInput)
class TestInputAdmin(admin.ModelAdmin):
    form = TestInputForm
    list_display = ["name", "loop", "organization", "created_at"]
    list_filter = ["loop__organization"]
    list_select_related = ["loop__organization"]
    search_fields = ["=id", "name", "loop__slug", "loop__name"]
    autocomplete_fields = ["loop"]
    readonly_fields = ["id", "created_at"]

    @admin.display(description="Organization", ordering="loop__organization__name")
    def organization(self, obj: TestInput):
        return obj.loop.organization
