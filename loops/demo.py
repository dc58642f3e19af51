"""The demo organization, user and greeting loop (DESIGN.md's example program)."""

from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.audit import Actor
from accounts.models import Membership, Organization, Role
from loops.models import Loop
from loops.services import loop_create

GREETING_CODE = """\
class HealthLoop(Loop):
    def run(self, event, step):
        name = event.body.get("name")
        greeting = step.do("Build greeting", lambda: f"Hello, {name or 'there'}!")
        return {"greeting": greeting}
"""

DEMO_ORG = "demo"
DEMO_USER = "admin"
DEMO_PASSWORD = "admin"  # noqa: S105 - the embedded demo's documented login


@transaction.atomic
def demo_setup() -> tuple[Organization, Loop]:
    """Idempotent: the demo org, an admin login (superuser) and the greeting loop."""
    User = get_user_model()
    user = User.objects.filter(username=DEMO_USER).first()
    if user is None:
        user = User.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
    org, _ = Organization.objects.get_or_create(
        slug=DEMO_ORG, defaults={"name": "Demo Organization"}
    )
    Membership.objects.get_or_create(user=user, organization=org, defaults={"role": Role.OWNER})
    loop = Loop.objects.filter(organization=org, slug="greeting").first()
    if loop is None:
        loop = loop_create(
            organization=org, slug="greeting", name="Greeting",
            description="Builds a greeting for event.body.name.", code=GREETING_CODE,
            author=user, note="Demo loop", actor=Actor.system("manage.py demo"),
        )  # fmt: skip
    return org, loop
