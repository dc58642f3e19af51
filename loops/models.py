from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils.timezone import now

from accounts.models import (
    CONCURRENCY_LIMIT_VALIDATORS,
    Organization,
    concurrency_limit_in_range,
)
from loops_project import ids


class LoopQuerySet(models.QuerySet):
    def for_org(self, org: Organization) -> "LoopQuerySet":
        return self.filter(organization=org)


class Loop(models.Model):
    id = ids.PublicIdField(ids.loop_id)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="loops")
    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=200)
    description = models.CharField(max_length=2000, blank=True)
    active_version = models.ForeignKey(
        "loops.LoopVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    paused = models.BooleanField(default=False)
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=CONCURRENCY_LIMIT_VALIDATORS,
        help_text="At most this many runs of the loop at once; empty for no limit of its own. "
        "Runs over the limit wait as pending and start as others end; waiting runs hold no slot.",
    )  # fmt: skip
    created_at = models.DateTimeField(default=now, editable=False)
    updated_at = models.DateTimeField(default=now)

    objects = LoopQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "slug"], name="unique_loop_slug"),
            concurrency_limit_in_range("loop_concurrency_limit_range"),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("loops:overview", args=[self.slug])


class LoopVersion(models.Model):
    """One deployed version of a loop's code. Immutable once created."""

    id = ids.PublicIdField(ids.version_id)
    loop = models.ForeignKey(Loop, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    code = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=150, blank=True)
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["loop", "number"], name="unique_version_number"),
        ]
        ordering = ["loop", "-number"]

    def __str__(self) -> str:
        return f"{self.loop} v{self.number}"


class Schedule(models.Model):
    """A cron schedule of a loop. The clock of the worker clusters of its queue (runs.clock)
    starts a `system` run of it when its next_run_at has come (loops.schedules)."""

    id = ids.PublicIdField(ids.schedule_id)
    loop = models.ForeignKey(Loop, on_delete=models.CASCADE, related_name="schedules")
    cron = models.CharField(max_length=100)
    timezone = models.CharField(max_length=64, default="UTC")
    input = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=now, editable=False)
    # The worker clusters that fire it and execute its runs (LOOPS_QUEUE): those of the queue
    # of the web process or command that made it, as for a run triggered there.
    queue = models.CharField(max_length=100, default="loops", editable=False)

    class Meta:
        ordering = ["loop", "created_at"]
        indexes = [
            models.Index(fields=["queue", "enabled", "next_run_at"], name="schedule_queue_due")
        ]

    def __str__(self) -> str:
        return f"{self.loop} @ {self.cron} ({self.timezone})"


class TestInput(models.Model):
    """A saved input for test runs from the editor ("Save as test input")."""

    __test__ = False  # a model, not a pytest test class

    id = ids.PublicIdField(ids.test_input_id)
    loop = models.ForeignKey(Loop, on_delete=models.CASCADE, related_name="test_inputs")
    name = models.CharField(max_length=100)
    input = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name
