from collections.abc import Callable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connections
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from accounts.audit import Actor
from loops.admin import json_block, report
from loops_project.errors import DomainError
from runs.models import (
    Batch,
    BulkJob,
    LogEntry,
    Run,
    RunEvent,
    ScanRequest,
    Step,
    Webhook,
    WebhookDelivery,
)
from runs.services import run_cancel, run_restart, run_resume
from runs.webhooks import (
    EVENT_NAMES,
    delivery_redeliver,
    webhook_create,
    webhook_delete,
    webhook_set_active,
    webhook_update,
    webhook_url_refusal,
)

STATUS_COLOURS = {
    "pending": "#6b7280",
    "running": "#2563eb",
    "waiting": "#d97706",
    "succeeded": "#15803d",
    "completed": "#15803d",
    "failed": "#b91c1c",
    "rejected": "#b91c1c",
    "cancelled": "#4b5563",
    "expired": "#4b5563",
    "skipped": "#6b7280",
}


class LargeTablePaginator(Paginator):
    """On PostgreSQL an unfiltered list of a big table counts from the planner's estimate:
    an exact COUNT(*) of millions of runs or log lines would take seconds on every page."""

    estimate_above = 100_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not qs.query.where:
            connection = connections[qs.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                        [qs.model._meta.db_table],
                    )
                    row = cursor.fetchone()
                if row and row[0] > self.estimate_above:
                    return row[0]
        return super().count


def status_badge(status: str) -> str:
    return format_html(
        "<strong style='color: {}'>{}</strong>", STATUS_COLOURS.get(status, "inherit"), status
    )


class LeanChangelistMixin:
    """A changelist never reads the large values of its rows (inputs, outputs, tracebacks,
    program text): fifty runs of a few MiB each would otherwise be loaded whole."""

    changelist_defer: tuple[str, ...] = ()

    def get_queryset(self, request: HttpRequest):
        queryset = super().get_queryset(request)
        url_name = getattr(request.resolver_match, "url_name", "") or ""
        if url_name.endswith("_changelist"):
            queryset = queryset.defer(*self.changelist_defer)
        return queryset


class ReadOnlyMixin:
    """Rows written by the engine and services only; the admin shows them and runs actions."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj=None):
        return flatten_fieldsets(self.get_fieldsets(request, obj))

    def change_view(self, request: HttpRequest, object_id: str, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:
        # Nothing here is editable, and a full save could overwrite what a worker has just
        # written (a run's status, a delivery's attempt).
        return


def apply_to_each(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset, verb: str, service: Callable
) -> None:
    """Call a service for each selected row; a DomainError skips that row with its reason."""
    done, skipped = 0, {}
    for obj in queryset:
        try:
            service(obj)
        except DomainError as exc:
            skipped[exc.message] = skipped.get(exc.message, 0) + 1
        else:
            done += 1
    report(modeladmin, request, verb, done, skipped)


class RunRowsInline(admin.TabularInline):
    """Read-only rows of a run, the first `max_rows` of them: a long run can have thousands
    of steps or log lines, which belong on their own list (linked from the run's page)."""

    max_rows = 200
    can_delete = False
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest):
        qs = super().get_queryset(request)
        match = request.resolver_match
        object_id = match.kwargs.get("object_id") if match else None
        if object_id:
            run_id = unquote(object_id)  # the admin's URLs quote ids: "run_5F01…"
            first = qs.filter(run_id=run_id).order_by(*self.ordering)
            qs = qs.filter(pk__in=list(first.values_list("pk", flat=True)[: self.max_rows]))
        return qs


class StepInline(RunRowsInline):
    model = Step
    fk_name = "run"
    fields = [
        "order",
        "name",
        "kind",
        "step_status",
        "attempts",
        "started_at",
        "duration_ms",
        "line",
    ]
    readonly_fields = fields
    ordering = ["order"]
    show_change_link = True

    @admin.display(description="Status")
    def step_status(self, obj: Step) -> str:
        return status_badge(obj.status)


class LogEntryInline(RunRowsInline):
    model = LogEntry
    fields = ["time", "level", "step", "message"]
    readonly_fields = fields
    ordering = ["time", "id"]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("step")


@admin.register(Run)
class RunAdmin(LeanChangelistMixin, ReadOnlyMixin, admin.ModelAdmin):
    changelist_defer = (
        "input", "output", "pending", "error_traceback", "test_code", "version__code",
    )  # fmt: skip
    list_display = [
        "id",
        "loop",
        "organization",
        "version_number",
        "run_status",
        "trigger_type",
        "mode",
        "attempt",
        "created_at",
        "duration_ms",
    ]
    list_filter = ["status", "trigger_type", "mode", "organization", "created_at"]
    list_select_related = ["loop", "organization", "version"]
    search_fields = ["=id", "loop__slug", "loop__name", "error_message", "=idempotency_key"]
    raw_id_fields = ["loop", "version", "restarted_from", "batch", "parent_step"]
    show_full_result_count = False
    paginator = LargeTablePaginator
    list_per_page = 50
    inlines = [StepInline, LogEntryInline]
    actions = ["restart_runs", "resume_runs", "cancel_runs"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "organization",
                    "loop",
                    "version",
                    "run_status",
                    "trigger_type",
                    "mode",
                    "rows",
                    "triggered_by_user",
                    "triggered_by_token",
                    "attempt",
                ]
            },
        ),
        ("Data", {"fields": ["input_json", "output_json", "pending_json"]}),
        ("Error", {"fields": ["error_message", "error_type", "error_step", "error_traceback"]}),
        (
            "Timing",
            {
                "fields": [
                    "created_at",
                    "started_at",
                    "completed_at",
                    "duration_ms",
                    "cpu_time_ms",
                    "total_steps",
                    "executions",
                    "lost_executions",
                    "lease_expires_at",
                ]
            },
        ),
        (
            "Relations",
            {
                "fields": [
                    "restarted_from",
                    "batch",
                    "parent_step",
                    "idempotency_key",
                    "task_id",
                    "execution_id",
                    "test_code",
                ]
            },
        ),
    ]

    @admin.display(description="Status", ordering="status")
    def run_status(self, obj: Run) -> str:
        return status_badge(obj.status)

    @admin.display(description="Steps and logs")
    def rows(self, obj: Run) -> str:
        steps, logs = obj.steps.count(), obj.logs.count()
        shown = ""
        if max(steps, logs) > RunRowsInline.max_rows:
            shown = f" (the first {RunRowsInline.max_rows} of each are shown below)"
        return format_html(
            '<a href="{}?q={}">{} steps</a> · <a href="{}?q={}">{} log lines</a>{}',
            reverse("admin:runs_step_changelist"), obj.pk, steps,
            reverse("admin:runs_logentry_changelist"), obj.pk, logs, shown,
        )  # fmt: skip

    @admin.display(description="Version", ordering="version__number")
    def version_number(self, obj: Run) -> str:
        return f"v{obj.version.number}" if obj.version_id else "draft"

    @admin.display(description="Input")
    def input_json(self, obj: Run) -> str:
        return json_block(obj.input)

    @admin.display(description="Output")
    def output_json(self, obj: Run) -> str:
        return json_block(obj.output)

    @admin.display(description="Pending")
    def pending_json(self, obj: Run) -> str:
        return json_block(obj.pending)

    @admin.action(
        description="Restart selected runs (new runs, same input)", permissions=["change"]
    )
    def restart_runs(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self,
            request,
            queryset,
            "Restarted",
            lambda run: run_restart(
                run=run, user=request.user, trigger_type="user", actor=Actor.from_request(request)
            ),
        )

    @admin.action(
        description="Resume selected runs from their last checkpoint", permissions=["change"]
    )
    def resume_runs(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self,
            request,
            queryset,
            "Resumed",
            lambda run: run_resume(run=run, actor=Actor.from_request(request)),
        )

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self,
            request,
            queryset,
            "Cancelled",
            lambda run: run_cancel(run=run, actor=Actor.from_request(request)),
        )


@admin.register(Step)
class StepAdmin(LeanChangelistMixin, ReadOnlyMixin, admin.ModelAdmin):
    changelist_defer = (
        "input", "output", "error", "iteration_item", "metadata", "run__input", "run__output",
        "run__pending", "run__error_traceback", "run__test_code",
    )  # fmt: skip
    list_display = [
        "name",
        "run",
        "organization",
        "kind",
        "step_status",
        "order",
        "attempts",
        "started_at",
        "duration_ms",
    ]
    list_filter = ["status", "kind", "run__organization"]
    list_select_related = ["run__organization"]
    search_fields = ["=id", "=run__id", "name", "key"]
    raw_id_fields = ["run", "parent"]
    show_full_result_count = False
    paginator = LargeTablePaginator
    fields = [
        "id",
        "run",
        "parent",
        "order",
        "key",
        "name",
        "kind",
        "step_status",
        "line",
        "attempts",
        "run_attempt",
        "started_at",
        "finished_at",
        "wake_at",
        "duration_ms",
        "iteration",
        "page",
        "input_json",
        "output_json",
        "error_json",
        "metadata_json",
        "iteration_item_json",
    ]

    @admin.display(description="Organization", ordering="run__organization__name")
    def organization(self, obj: Step):
        return obj.run.organization

    @admin.display(description="Status", ordering="status")
    def step_status(self, obj: Step) -> str:
        return status_badge(obj.status)

    @admin.display(description="Input")
    def input_json(self, obj: Step) -> str:
        return json_block(obj.input)

    @admin.display(description="Output")
    def output_json(self, obj: Step) -> str:
        return json_block(obj.output)

    @admin.display(description="Error")
    def error_json(self, obj: Step) -> str:
        return json_block(obj.error)

    @admin.display(description="Metadata")
    def metadata_json(self, obj: Step) -> str:
        return json_block(obj.metadata)

    @admin.display(description="Iteration item")
    def iteration_item_json(self, obj: Step) -> str:
        return json_block(obj.iteration_item)


@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["time", "level", "short_message", "run", "loop", "organization"]
    list_filter = ["level", "loop__organization"]
    list_select_related = ["run", "loop__organization"]
    search_fields = ["=run__id", "message"]
    raw_id_fields = ["run", "loop", "step"]
    show_full_result_count = False
    paginator = LargeTablePaginator
    fields = ["id", "run", "loop", "step", "time", "level", "message"]

    @admin.display(description="Message")
    def short_message(self, obj: LogEntry) -> str:
        return obj.message[:120]

    @admin.display(description="Organization", ordering="loop__organization__name")
    def organization(self, obj: LogEntry):
        return obj.loop.organization


@admin.register(Batch)
class BatchAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "loop", "organization", "count", "created_at"]
    list_filter = ["organization"]
    list_select_related = ["loop", "organization"]
    search_fields = ["=id", "loop__slug", "loop__name"]
    raw_id_fields = ["loop"]
    fields = ["id", "organization", "loop", "count", "created_at"]


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["type", "run", "organization", "consumed", "created_at"]
    list_filter = ["run__organization", ("consumed_by", admin.EmptyFieldListFilter)]
    list_select_related = ["run__organization"]
    search_fields = ["=id", "=run__id", "type"]
    raw_id_fields = ["run", "consumed_by"]
    fields = ["id", "run", "type", "payload_json", "consumed_by", "created_at"]

    @admin.display(description="Organization", ordering="run__organization__name")
    def organization(self, obj: RunEvent):
        return obj.run.organization

    @admin.display(description="Consumed", boolean=True)
    def consumed(self, obj: RunEvent) -> bool:
        return obj.consumed_by_id is not None

    @admin.display(description="Payload")
    def payload_json(self, obj: RunEvent) -> str:
        return json_block(obj.payload)


@admin.register(ScanRequest)
class ScanRequestAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "run", "organization", "scan_status", "created_at", "completed_at"]
    list_filter = ["status", "organization"]
    list_select_related = ["run", "organization"]
    search_fields = ["=id", "=run__id"]
    raw_id_fields = ["run", "step"]
    fields = [
        "id",
        "organization",
        "run",
        "step",
        "scan_status",
        "subject_json",
        "result_json",
        "created_at",
        "completed_at",
    ]

    @admin.display(description="Status", ordering="status")
    def scan_status(self, obj: ScanRequest) -> str:
        return status_badge(obj.status)

    @admin.display(description="Subject")
    def subject_json(self, obj: ScanRequest) -> str:
        return json_block(obj.subject)

    @admin.display(description="Result")
    def result_json(self, obj: ScanRequest) -> str:
        return json_block(obj.result)


class WebhookForm(forms.ModelForm):
    class Meta:
        model = Webhook
        fields = ["organization", "loop", "url", "events", "active"]

    def clean_events(self) -> list:
        events = self.cleaned_data["events"] or []
        unknown = (
            [e for e in events if e not in EVENT_NAMES] if isinstance(events, list) else [events]
        )
        if unknown:
            raise ValidationError(f"Use a list of: {', '.join(sorted(EVENT_NAMES))}.")
        return events

    def clean(self):
        data = super().clean()
        loop, org = data.get("loop"), data.get("organization")
        if loop is not None and org is not None and loop.organization_id != org.pk:
            raise ValidationError("The loop belongs to another organization.")
        return data


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["url", "organization", "loop", "events", "active", "created_at"]
    list_filter = ["active", "organization"]
    list_select_related = ["organization", "loop"]
    search_fields = ["=id", "url", "organization__slug", "organization__name"]
    autocomplete_fields = ["organization", "loop"]
    readonly_fields = ["id", "created_at"]
    # The signing secret is never shown here (it is editable=False, so it is not in the form).
    fields = ["id", "organization", "loop", "url", "events", "active", "created_at"]
    actions = ["enable", "disable"]

    def save_model(self, request: HttpRequest, obj: Webhook, form, change: bool) -> None:
        refusal = webhook_url_refusal(obj.url) if "url" in form.changed_data else None
        if refusal:
            self.message_user(
                request, f"URL: saved, but deliveries to it will fail: {refusal}.", messages.WARNING
            )
        actor = Actor.from_request(request)
        if change:
            # Through the services (audited), from the row as it is: obj holds the form's values.
            hook = Webhook.objects.get(pk=obj.pk)
            webhook_update(webhook=hook, url=obj.url, events=obj.events, loop=obj.loop,
                           actor=actor)  # fmt: skip
            webhook_set_active(webhook=hook, active=obj.active, actor=actor)
            obj.refresh_from_db()
            return
        # webhook_create validates the events and generates the signing secret.
        hook = webhook_create(
            organization=obj.organization, url=obj.url, events=obj.events, loop=obj.loop,
            actor=actor,
        )  # fmt: skip
        if not obj.active:
            webhook_set_active(webhook=hook, active=False, actor=actor)
        obj.pk = hook.pk
        obj.refresh_from_db()
        obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Webhook) -> None:
        webhook_delete(webhook=obj, actor=Actor.from_request(request))

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        for hook in queryset:
            webhook_delete(webhook=hook, actor=Actor.from_request(request))

    @admin.action(description="Enable selected webhooks", permissions=["change"])
    def enable(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self, request, queryset, "Enabled",
            lambda hook: webhook_set_active(webhook=hook, active=True,
                                            actor=Actor.from_request(request)),
        )  # fmt: skip

    @admin.action(description="Disable selected webhooks", permissions=["change"])
    def disable(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self, request, queryset, "Disabled",
            lambda hook: webhook_set_active(webhook=hook, active=False,
                                            actor=Actor.from_request(request)),
        )  # fmt: skip


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "event",
        "webhook",
        "organization",
        "delivery_status",
        "status_code",
        "attempt",
        "created_at",
        "delivered_at",
    ]
    list_filter = ["status", "event", "webhook__organization"]
    list_select_related = ["webhook__organization"]
    search_fields = ["=id", "=run__id", "webhook__url"]
    raw_id_fields = ["webhook", "run"]
    show_full_result_count = False
    paginator = LargeTablePaginator
    actions = ["redeliver"]
    fields = [
        "id",
        "webhook",
        "run",
        "event",
        "delivery_status",
        "status_code",
        "attempt",
        "error",
        "response_excerpt",
        "payload_json",
        "created_at",
        "delivered_at",
    ]

    @admin.display(description="Organization", ordering="webhook__organization__name")
    def organization(self, obj: WebhookDelivery):
        return obj.webhook.organization

    @admin.display(description="Status", ordering="status")
    def delivery_status(self, obj: WebhookDelivery) -> str:
        return status_badge(obj.status)

    @admin.display(description="Payload")
    def payload_json(self, obj: WebhookDelivery) -> str:
        return json_block(obj.payload)

    @admin.action(description="Redeliver selected deliveries", permissions=["change"])
    def redeliver(self, request: HttpRequest, queryset) -> None:
        apply_to_each(
            self,
            request,
            queryset,
            "Queued for redelivery",
            lambda delivery: delivery_redeliver(delivery=delivery),
        )


@admin.register(BulkJob)
class BulkJobAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Bulk actions (runs.bulk), as they went; started from the runs pages or the API."""

    list_display = ["id", "organization", "action", "job_status", "total", "done", "failed",
                    "created_by_name", "created_at", "completed_at"]  # fmt: skip
    list_filter = ["action", "status", "organization"]
    list_select_related = ["organization"]
    search_fields = ["=id", "created_by_name"]
    date_hierarchy = "created_at"
    fields = ["id", "organization", "action", "status", "filter", "total", "done", "failed",
              "failures", "created_by_type", "created_by_name", "created_by_user",
              "created_by_token", "cursor", "heartbeat_at", "created_at",
              "completed_at"]  # fmt: skip

    @admin.display(description="Status", ordering="status")
    def job_status(self, obj: BulkJob) -> str:
        return status_badge(obj.status)
