from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.fields.json import KeyTextTransform
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Organization
from loops.models import Loop, LoopVersion
from loops_project import ids


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ENDED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class TriggerType(models.TextChoices):
    USER = "user", "User"
    API_TOKEN = "api_token", "API token"
    SYSTEM = "system", "System"


class RunMode(models.TextChoices):
    LIVE = "live", "Live"
    TEST = "test", "Test"


class Batch(models.Model):
    id = ids.PublicIdField(ids.batch_id)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    loop = models.ForeignKey(Loop, on_delete=models.CASCADE, related_name="batches")
    count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return self.id


class RunQuerySet(models.QuerySet):
    def for_org(self, org: Organization) -> "RunQuerySet":
        return self.filter(organization=org)


class Run(models.Model):
    id = ids.PublicIdField(ids.run_id)
    # Runs are the one table written in bulk (a batch writes 100,000 rows in one statement),
    # so their references have no database-level foreign key: each is one more query per row
    # at commit (2.5 s for a batch of 100,000 with four of them). Runs are created only by the
    # services, from a loop already fetched within its organization, and Django still carries
    # out on_delete (CASCADE, PROTECT, SET_NULL). References that are mostly empty have a
    # partial index (only the rows that have one; see Meta).
    #
    # The composite indexes in Meta lead with organization and loop; an index of their own
    # would only slow down inserts.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="runs", db_index=False,
        db_constraint=False,
    )  # fmt: skip
    loop = models.ForeignKey(
        Loop, on_delete=models.CASCADE, related_name="runs", db_index=False, db_constraint=False
    )
    # The version the run is pinned to; null for a test run of draft code (kept in test_code).
    # Never filtered on; versions are history and are not deleted on their own (PROTECT).
    version = models.ForeignKey(
        LoopVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="runs",
        db_index=False, db_constraint=False,
    )  # fmt: skip
    test_code = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING, db_index=False
    )
    trigger_type = models.CharField(max_length=16, choices=TriggerType.choices)
    mode = models.CharField(max_length=8, choices=RunMode.choices, default=RunMode.LIVE)
    triggered_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", db_index=False, db_constraint=False,
    )  # fmt: skip
    triggered_by_token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        db_constraint=False,
    )  # fmt: skip
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    error_type = models.CharField(max_length=200, blank=True)
    error_step = models.CharField(max_length=200, blank=True)
    error_traceback = models.TextField(blank=True)
    pending = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    cpu_time_ms = models.PositiveBigIntegerField(default=0)
    attempt = models.PositiveIntegerField(default=1)
    total_steps = models.PositiveIntegerField(default=0)
    # Bytes the run's executions have stored (step inputs and outputs, logs, its output),
    # held against LOOPS_MAX_RUN_BYTES.
    stored_bytes = models.PositiveBigIntegerField(default=0)
    restarted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="restarts",
        db_index=False, db_constraint=False,
    )  # fmt: skip
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="runs",
        db_index=False, db_constraint=False,
    )  # fmt: skip
    parent_step = models.ForeignKey(
        "runs.Step", null=True, blank=True, on_delete=models.CASCADE, related_name="child_runs",
        db_index=False, db_constraint=False,
    )  # fmt: skip
    # How many step.run_loop calls lie between this run and the run started otherwise (0),
    # kept on the row so that starting a child checks LOOPS_MAX_CHILD_DEPTH without walking
    # up the chain of parents.
    depth = models.PositiveSmallIntegerField(default=0)
    # NULL (not "") for "no key", so the partial index holds only keyed runs.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    # The name of the run's execution, answered as workflowInstanceId.
    task_id = models.CharField(max_length=40, blank=True)
    # The worker clusters that take it (LOOPS_QUEUE): clusters of another queue never claim it.
    queue = models.CharField(max_length=100, default="loops")
    # Crash safety: a running run whose lease has expired is taken up again.
    execution_id = models.CharField(max_length=40, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    executions = models.PositiveIntegerField(default=0)
    # Executions that ended with their worker's death (lease expired): at
    # LOOPS_MAX_LOST_EXECUTIONS the run fails instead of going back to the queue.
    lost_executions = models.PositiveSmallIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at", "-id"], name="run_org_created"),
            models.Index(
                fields=["organization", "status", "-created_at", "-id"], name="run_org_status"
            ),
            models.Index(fields=["loop", "-created_at", "-id"], name="run_loop_created"),
            # Only a batch's runs: a single trigger does not pay for this index.
            models.Index(
                fields=["batch", "status"],
                name="run_batch_status",
                condition=Q(batch__isnull=False),
            ),
            models.Index(
                fields=["organization", "trigger_type", "-created_at"], name="run_org_trigger"
            ),
            # The queue: pending runs, oldest first within a loop (the fair claim, runs.state).
            models.Index(
                fields=["queue", "loop", "created_at", "id"],
                name="run_pending",
                condition=Q(status="pending"),
            ),
            # Running runs: the slots they hold, and their leases (taken up when they expire).
            models.Index(
                fields=["organization", "loop"], name="run_running", condition=Q(status="running")
            ),
            models.Index(
                fields=["lease_expires_at"], name="run_lease", condition=Q(status="running")
            ),
            models.Index(
                fields=["loop", "idempotency_key", "created_at"],
                name="run_idempotency",
                condition=Q(idempotency_key__isnull=False),
            ),
            # The inbox (runs.inbox): runs waiting for a person, by organization and by when
            # the wait began (pending's `since`), oldest first; its COUNT is the nav badge.
            models.Index(
                F("organization"),
                KeyTextTransform("since", "pending"),
                F("id"),
                name="run_waiting_person",
                condition=Q(status="waiting", pending__kind__in=["input", "approval"]),
            ),
            # Mostly empty references: only the rows that have one are indexed.
            *(
                models.Index(
                    fields=[name], name=f"run_{name}", condition=Q(**{f"{name}__isnull": False})
                )
                for name in ("triggered_by_user", "parent_step", "restarted_from")
            ),
        ]

    def __str__(self) -> str:
        return self.id

    def get_absolute_url(self) -> str:
        return reverse("runs:detail", args=[self.id])

    @property
    def is_ended(self) -> bool:
        return self.status in ENDED_STATUSES

    @property
    def code(self) -> str:
        return self.version.code if self.version_id else self.test_code

    @property
    def error(self) -> str | None:
        return self.error_message or None if self.status == RunStatus.FAILED else None

    @property
    def error_detail(self) -> str:
        """The error's own words, without what the error card shows beside them (its step and
        its type): "boom" for "Step 'Transform' failed: ValueError: boom"."""
        text = self.error_message
        if self.error_step:
            text = text.removeprefix(f"Step '{self.error_step}' failed: ")
        if self.error_type:
            text = text.removeprefix(f"{self.error_type}: ")
        return text

    def stops_when_rejected(self) -> bool:
        """Whether rejecting the approval this run waits for ends it (`step.approve`'s
        `on_reject="stop"`, the default) rather than returning to the program."""
        waiting = self.steps.filter(status="waiting", kind="approval").first()
        return waiting is not None and (waiting.input or {}).get("onReject", "stop") == "stop"


class StepKind(models.TextChoices):
    DO = "do"
    SLEEP = "sleep"
    EVENT = "event"
    SCAN = "scan"
    INPUT = "input"
    APPROVAL = "approval"
    HTTP = "http"
    CHILD = "child"
    EACH = "each"


class StepStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    WAITING = "waiting", "Waiting"
    REJECTED = "rejected", "Rejected"
    SKIPPED = "skipped", "Skipped"


# The error of a step that was running or waiting when its run was cancelled: stored as
# "failed" (the API's step statuses), shown as cancelled by the pages.
CANCELLED_STEP_ERROR = {"message": "The run was cancelled", "type": "Cancelled"}


class Step(models.Model):
    id = ids.PublicIdField(ids.step_id)
    # No database-level foreign key: its check would lock the run's row on every checkpoint
    # INSERT. Steps are only written by the engine for a run it has claimed (the guarded INSERT
    # checks that run in the same statement), and Django still cascades deletes.
    run = models.ForeignKey(
        Run,
        on_delete=models.CASCADE,
        related_name="steps",
        db_index=False,
        db_constraint=False,
    )
    # Steps are read by run (the unique (run, key) index); every extra index would be paid
    # by each checkpoint's INSERT and UPDATE.
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="children",
        db_index=False,
    )
    order = models.PositiveIntegerField()
    # Name plus occurrence ("Fetch#2"): the identity of a step across replays.
    key = models.CharField(max_length=300)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=StepKind.choices, default=StepKind.DO)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    run_attempt = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    iteration = models.PositiveIntegerField(null=True, blank=True)
    iteration_item = models.JSONField(null=True, blank=True)
    page = models.PositiveIntegerField(null=True, blank=True)
    line = models.PositiveIntegerField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "order"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="unique_step_key"),
        ]
        indexes = [
            # For the runs list's stepStatus filter; partial, so checkpoints of steps that
            # succeed never touch it.
            models.Index(
                fields=["run"],
                name="step_failed_or_rejected",
                condition=Q(status__in=["failed", "rejected"]),
            ),
            # Nested steps (a step.each's) by their parent: deleting steps (a retry from a
            # step, runs.patches) checks each deleted row's children here instead of reading
            # every step of every run (the self foreign key's check). Partial: top-level steps,
            # most of them, never touch it.
            models.Index(fields=["parent"], name="step_parent", condition=Q(parent__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} · {self.name}"

    @property
    def cancelled(self) -> bool:
        """Ended by its run's cancellation, not by an error of its own."""
        return self.status == StepStatus.FAILED and self.error == CANCELLED_STEP_ERROR

    @property
    def shown_status(self) -> str:
        return "cancelled" if self.cancelled else self.status


class LogLevel(models.TextChoices):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogEntry(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="logs", db_index=False)
    loop = models.ForeignKey(Loop, on_delete=models.CASCADE, related_name="+", db_index=False)
    step = models.ForeignKey(
        Step, null=True, blank=True, on_delete=models.SET_NULL, related_name="logs"
    )
    time = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    message = models.TextField()

    class Meta:
        ordering = ["time", "id"]
        indexes = [
            models.Index(fields=["run", "time"], name="log_run_time"),
            models.Index(fields=["loop", "-time"], name="log_loop_time"),
        ]
        verbose_name_plural = "log entries"

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:60]}"


class RunEvent(models.Model):
    """An event posted to a run. Kept until a wait_for_event of its type consumes it."""

    id = ids.PublicIdField(ids.event_id)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=200)
    payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    consumed_by = models.OneToOneField(
        Step, null=True, blank=True, on_delete=models.SET_NULL, related_name="consumed_event"
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["run", "type", "created_at"], name="event_run_type")]

    def __str__(self) -> str:
        return f"{self.type} → {self.run_id}"


class ScanStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    COMPLETED = "completed", "Completed"
    EXPIRED = "expired", "Expired"


class ScanRequest(models.Model):
    """A FACIAL_SCAN request: a person opens its link, the result resumes the run."""

    id = ids.PublicIdField(ids.scan_id)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="scans")
    step = models.OneToOneField(Step, on_delete=models.CASCADE, related_name="scan")
    subject = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ScanStatus.choices, default=ScanStatus.PENDING)
    result = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id

    def get_absolute_url(self) -> str:
        return reverse("scan_page", args=[self.id])


class Webhook(models.Model):
    id = ids.PublicIdField(ids.hook_id)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhooks"
    )
    loop = models.ForeignKey(
        Loop, null=True, blank=True, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=500)
    # Events that fire this hook ("run.succeeded", "run.failed", …); empty means all of them.
    events = models.JSONField(default=list, blank=True)
    secret = models.CharField(max_length=100, editable=False)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    id = ids.PublicIdField(ids.delivery_id)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    event = models.CharField(max_length=50)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    # One row per event and webhook: each attempt updates it (the attempt count, the last
    # attempt's answer and time), so the deliveries list shows one row in its latest state.
    attempt = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    delivered_at = models.DateTimeField(null=True, blank=True)  # the last attempt's time
    # When the next attempt may start (a new delivery: now; a retry: after its backoff); none
    # once the delivery ended. A sender claims an attempt by moving it past the attempt's
    # longest time (runs.webhooks): if the sender dies, the attempt is due again then.
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # The queue (LOOPS_QUEUE) whose worker clusters send it: its run's, as its timers were.
    queue = models.CharField(max_length=100, default="loops", db_default="loops")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["webhook", "-created_at"], name="delivery_hook_created"),
            models.Index(
                fields=["queue", "next_attempt_at"],
                name="delivery_due",
                condition=models.Q(status="pending"),
            ),
            # The senders' pick (runs.webhooks.due_deliveries): each webhook's oldest first.
            models.Index(
                fields=["queue", "webhook", "next_attempt_at"],
                name="delivery_due_hook",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook}"


class TimerKind(models.TextChoices):
    STEP = "step", "A step's time"  # a sleep ends, a wait times out, a retry is due
    WEBHOOK = "webhook", "Webhook retry"
    APPROVAL = "approval", "Approval reminder or escalation"  # target: the waiting step's id


class Timer(models.Model):
    """Something due at a time. The clock of every worker cluster of its queue (runs.clock)
    fires each timer once, within a second of its due time; a fired timer is deleted."""

    id = models.BigAutoField(primary_key=True)
    due_at = models.DateTimeField()
    kind = models.CharField(max_length=16, choices=TimerKind.choices)
    target = models.CharField(max_length=40)  # the step's or the delivery's id
    # The worker clusters whose clock fires it (LOOPS_QUEUE): those of the queue that set it,
    # as a run's queue says whose workers execute it.
    queue = models.CharField(max_length=100, default="loops")

    class Meta:
        indexes = [
            models.Index(fields=["queue", "due_at"], name="timer_queue_due"),
            models.Index(fields=["target"], name="timer_target"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.target} at {self.due_at:%Y-%m-%d %H:%M:%S}"


class Turn(models.Model):
    """When an organization or a loop (by its public id) last had a run started: of the runs
    that may start, the fair claim serves the scope that has waited longest (runs.state)."""

    scope = models.CharField(max_length=40, primary_key=True)
    claimed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.scope} at {self.claimed_at:%Y-%m-%d %H:%M:%S}"


class BulkAction(models.TextChoices):
    CANCEL = "cancel", "Cancel"
    RESUME = "resume", "Resume"
    RESTART = "restart", "Restart"


class BulkStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    ABORTED = "aborted", "Aborted"


class BulkJob(models.Model):
    """An action on every run a runs-list filter matched when the job was created (runs.bulk).
    Those runs are its items; django-q2 tasks work through them in chunks."""

    id = ids.PublicIdField(ids.bulk_id)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    action = models.CharField(max_length=16, choices=BulkAction.choices)
    # The filter as the API names it (GET /api/v1/runs), empty values left out.
    filter = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=BulkStatus.choices, default=BulkStatus.RUNNING)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Why runs were not acted on: {error code: how many} (run_ended, not_resumable …).
    failures = models.JSONField(default=dict, blank=True)
    # Who started it, as the audit names them; a restart's new runs are the user's or token's.
    created_by_type = models.CharField(max_length=8)
    created_by_name = models.CharField(max_length=150, blank=True)
    created_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    created_by_token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Runs per chunk, fixed when the job is made (runs.bulk.CHUNK_SIZES).
    chunk_size = models.PositiveIntegerField(default=1000)
    # The keyset cursor: the last item (BulkJobItem.id) done. A chunk moves it in the same
    # transaction that acts on its runs, so a chunk done again starts after it.
    cursor = models.BigIntegerField(default=0)
    # The one task that may work on the job now (runs.tasks.bulk_work's argument): a copy of
    # a task delivered twice, or one replaced after it stalled, finds another name and stops.
    task_token = models.CharField(max_length=32, blank=True)
    # The last chunk's time: a running job whose work has stalled is given a new task.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="bulk_org_created"),
            # The running jobs: each has a task in the workers' queue (runs.dispatch).
            models.Index(
                fields=["organization"], name="bulk_running", condition=models.Q(status="running")
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(done__lte=models.F("total") - models.F("failed")),
                name="bulk_counts_within_total",
            ),
        ]

    def __str__(self) -> str:
        return self.id

    def get_absolute_url(self) -> str:
        return reverse("runs:bulk_detail", args=[self.id])

    @property
    def is_running(self) -> bool:
        return self.status == BulkStatus.RUNNING

    @property
    def processed(self) -> int:
        return self.done + self.failed


class BulkJobItem(models.Model):
    """A run a bulk job acts on: the filter's runs when the job was created, oldest first.
    Each chunk deletes its items. No foreign keys in the database: a job's 100,000 items are
    written by one INSERT … SELECT, and a run deleted meanwhile is reported, not cascaded."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(
        BulkJob, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    run_id = models.CharField(max_length=ids.ID_LENGTH)

    class Meta:
        indexes = [models.Index(fields=["job", "id"], name="bulk_item_job")]

    def __str__(self) -> str:
        return f"{self.job_id} · {self.run_id}"
