import hashlib
import operator
from functools import reduce

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from loops_project import ids

# A concurrency limit (of an organization or of one loop) is how many of its runs may be
# `running` at once: 1 to this many, or none. Runs over it stay `pending` until others end; a
# `waiting` run (sleep, event, person, child) holds no slot. The engine's claim reads it.
CONCURRENCY_LIMIT_MAX = 10_000
CONCURRENCY_LIMIT_VALIDATORS = [MinValueValidator(1), MaxValueValidator(CONCURRENCY_LIMIT_MAX)]


def concurrency_limit_in_range(name: str) -> models.CheckConstraint:
    """The database's guard of a nullable `concurrency_limit` column: null or 1 to the max."""
    return models.CheckConstraint(
        condition=models.Q(concurrency_limit__isnull=True)
        | models.Q(concurrency_limit__gte=1, concurrency_limit__lte=CONCURRENCY_LIMIT_MAX),
        name=name,
        violation_error_message=(
            f"The concurrency limit is a whole number from 1 to {CONCURRENCY_LIMIT_MAX:,}, "
            "or empty for none."
        ),
    )


# An organization is named (in an API path, a page's URL, a command) by any of these fields.
ORGANIZATION_NAMED_BY = ("pk", "slug")


class OrganizationQuerySet(models.QuerySet):
    def for_user(self, user) -> "OrganizationQuerySet":
        if not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user)

    def named(self, ident) -> "OrganizationQuerySet":
        """The organization `ident` names: its public id or its slug (accounts.access has the
        same rule for an organization at hand)."""
        return self.filter(reduce(operator.or_, (Q(**{f: ident}) for f in ORGANIZATION_NAMED_BY)))


class Organization(models.Model):
    id = ids.PublicIdField(ids.org_id)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, validators=CONCURRENCY_LIMIT_VALIDATORS,
        help_text="At most this many runs of the organization at once, over all its loops. "
        "Empty: the LOOPS_ORG_CONCURRENCY_LIMIT setting. Runs over the limit wait as pending and "
        "start as others end; waiting runs hold no slot.",
    )  # fmt: skip
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [concurrency_limit_in_range("org_concurrency_limit_range")]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def default_concurrency_limit() -> int | None:
        """The limit of an organization without an override: the LOOPS_ORG_CONCURRENCY_LIMIT
        setting, where 0 (or less) means none."""
        default = settings.LOOPS_ORG_CONCURRENCY_LIMIT
        return default if default > 0 else None

    def effective_concurrency_limit(self) -> int | None:
        """How many of the organization's runs may be running at once; None for no limit.
        Its own override when set, else default_concurrency_limit()."""
        if self.concurrency_limit is not None:
            return self.concurrency_limit
        return self.default_concurrency_limit()


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    EDITOR = "editor", "Editor"
    VIEWER = "viewer", "Viewer"


# What each role may do; a role includes everything of the roles below it.
ROLE_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2, Role.OWNER: 3}


class Membership(models.Model):
    id = ids.PublicIdField(ids.membership_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="unique_membership"),
        ]
        ordering = ["organization", "user"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    def allows(self, role: str) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]


class TokenScope(models.TextChoices):
    TRIGGER = "trigger", "Trigger runs and read runs"
    FULL = "full", "Full access"


class ApiTokenQuerySet(models.QuerySet):
    def for_org(self, org: Organization) -> "ApiTokenQuerySet":
        return self.filter(organization=org)

    def active(self, now) -> "ApiTokenQuerySet":
        """Tokens that authenticate at `now`: neither revoked nor expired."""
        return self.filter(Q(revoked_at=None), Q(expires_at=None) | Q(expires_at__gt=now))


class ApiToken(models.Model):
    """A per-organization bearer token. Only a SHA-256 hash of the secret is stored.

    A plain hash (not a slow password hash) is right here: the secret is 32 random bytes,
    so there is nothing to brute-force, and every API request must verify it quickly.
    """

    id = ids.PublicIdField(ids.token_id)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=TokenScope.choices, default=TokenScope.FULL)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise it.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


def invitation_id() -> str:
    return ids.new_id("inv")


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACCEPTED = "accepted", "Accepted"
    DECLINED = "declined", "Declined"
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"


class InvitationQuerySet(models.QuerySet):
    def for_org(self, org: Organization) -> "InvitationQuerySet":
        return self.filter(organization=org)

    def open(self) -> "InvitationQuerySet":
        """Neither accepted, declined nor revoked (possibly expired)."""
        return self.filter(accepted_at=None, declined_at=None, revoked_at=None)

    def pending(self) -> "InvitationQuerySet":
        return self.open().filter(expires_at__gt=timezone.now())

    def addressed_to(self, user) -> "InvitationQuerySet":
        """Invitations naming the user's username or (when it has one) e-mail address."""
        names = [user.get_username().lower()]
        if user.email:
            names.append(user.email.lower())
        return self.alias(identifier_lower=Lower("identifier")).filter(identifier_lower__in=names)


class Invitation(models.Model):
    """An offer of a role in an organization, made by one of its admins to a username or an
    e-mail address. Nobody joins until the person it names accepts it while logged in.

    Who the identifier names is never looked up when inviting, so the answer to the admin is the
    same whether or not such an account exists. The link's secret is stored only as a SHA-256
    hash: like an API token's, it is 32 random bytes, with nothing to brute-force.
    """

    id = ids.PublicIdField(invitation_id)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    identifier = models.CharField(max_length=254, help_text="The username or e-mail invited.")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True, editable=False)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    declined_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open invitation per person and organization: a new one replaces the old. Its
            # index also finds a person's open invitations (lower-cased identifier first).
            models.UniqueConstraint(
                Lower("identifier"),
                "organization",
                condition=models.Q(accepted_at=None, declined_at=None, revoked_at=None),
                name="one_open_invitation",
            ),
            models.CheckConstraint(
                condition=models.Q(accepted_at=None) | models.Q(declined_at=None, revoked_at=None),
                name="invitation_accepted_is_final",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identifier} to {self.organization} ({self.role})"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @property
    def status(self) -> InvitationStatus:
        if self.accepted_at is not None:
            return InvitationStatus.ACCEPTED
        if self.revoked_at is not None:
            return InvitationStatus.REVOKED
        if self.declined_at is not None:
            return InvitationStatus.DECLINED
        if self.expires_at <= timezone.now():
            return InvitationStatus.EXPIRED
        return InvitationStatus.PENDING

    @property
    def is_pending(self) -> bool:
        return self.status == InvitationStatus.PENDING

    def closed_message(self) -> str:
        """Why the invitation can no longer be accepted (empty while it is pending)."""
        return {
            InvitationStatus.ACCEPTED: "This invitation has already been used.",
            InvitationStatus.DECLINED: "This invitation was declined.",
            InvitationStatus.REVOKED: "This invitation was withdrawn by an admin.",
            InvitationStatus.EXPIRED: "This invitation has expired.",
        }.get(self.status, "")

    def is_for(self, user) -> bool:
        """Whether the invitation names this user (username or e-mail, case aside)."""
        wanted = self.identifier.lower()
        return wanted == user.get_username().lower() or (
            bool(user.email) and wanted == user.email.lower()
        )


def audit_id() -> str:
    return ids.new_id("aud")


class ActorType(models.TextChoices):
    USER = "user"
    TOKEN = "token"  # noqa: S105 - a kind of actor, not a secret
    SYSTEM = "system"


# The actions the log records, for the audit page's filter (API.md names them dotted).
AUDIT_ACTIONS = [
    "loop.create", "loop.update", "loop.pause", "loop.unpause", "loop.deploy", "loop.rollback",
    "schedule.create", "schedule.update", "schedule.delete",
    "webhook.create", "webhook.update", "webhook.enable", "webhook.disable", "webhook.delete",
    "token.create", "token.revoke",
    "member.invite", "member.invite_revoke", "member.role", "member.remove",
    "input.answer", "approval.approve", "approval.reject",
    "run.cancel", "run.resume", "run.restart", "run.retry_from", "run.event",
    "step.complete", "step.fire", "runs.bulk", "runs.bulk_abort",
]  # fmt: skip


class AuditEvent(models.Model):
    """One operator action, recorded in the same transaction as the action (accounts/audit.py).
    Never edited; deleted only by the retention setting (LOOPS_AUDIT_RETENTION_DAYS)."""

    id = ids.PublicIdField(audit_id)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    at = models.DateTimeField(default=timezone.now, editable=False)
    actor_type = models.CharField(max_length=8, choices=ActorType.choices)
    # The actor's id and name as they were: a user or token deleted later stays readable here.
    actor_id = models.CharField(max_length=64, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)  # dotted: loop.deploy, run.cancel, runs.bulk …
    object_type = models.CharField(max_length=32)
    object_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-at", "-id"], name="audit_org_at"),
            models.Index(fields=["organization", "object_id"], name="audit_org_object"),
            models.Index(fields=["organization", "action", "-at"], name="audit_org_action"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type} {self.object_id} by {self.actor_name}"
