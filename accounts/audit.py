"""The audit log: who did what to which object, when and from where.

Every operator action calls `record()` inside the transaction that makes the change, so the
entry exists exactly when the change does. The actor comes from the request (a logged-in user
or an API token) or names the command or process that acted (`Actor.system`).
"""

from dataclasses import dataclass

from django.db import transaction
from django.http import HttpRequest

from accounts.models import ActorType, ApiToken, AuditEvent, Organization
from accounts.throttling import client_ip


@dataclass(frozen=True)
class Actor:
    type: str
    id: str
    name: str
    ip: str | None = None

    @classmethod
    def of_user(cls, user, ip: str | None = None) -> "Actor":
        return cls(ActorType.USER, str(user.pk), user.get_username(), ip)

    @classmethod
    def of_token(cls, token: ApiToken, ip: str | None = None) -> "Actor":
        return cls(ActorType.TOKEN, token.pk, token.name, ip)

    @classmethod
    def system(cls, name: str) -> "Actor":
        """A management command, the admin's shell, or Loops itself (e.g. "manage.py rollback")."""
        return cls(ActorType.SYSTEM, "", name)

    @classmethod
    def from_request(cls, request: HttpRequest) -> "Actor":
        """The API's token (request.auth) or the page's logged-in user, with the client address."""
        ip = client_ip(request) or None
        token = getattr(request, "auth", None)
        if isinstance(token, ApiToken):
            return cls.of_token(token, ip)
        return cls.of_user(request.user, ip)


def record(
    *, organization: Organization | str, actor: Actor | None, action: str, object_type: str,
    object_id: str, details: dict | None = None,
) -> AuditEvent:  # fmt: skip
    """Record one action. Call it inside the transaction that makes the change (it refuses to
    run outside one, where the action and its record could part)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit.record() must run inside the action's transaction")
    actor = actor or Actor.system("unknown")
    return AuditEvent.objects.create(
        organization_id=getattr(organization, "pk", organization),
        actor_type=actor.type, actor_id=actor.id[:64], actor_name=actor.name[:150],
        action=action, object_type=object_type, object_id=str(object_id)[:64],
        details=details or {}, ip=actor.ip or None,
    )  # fmt: skip
