import factory
from django.contrib.auth import get_user_model
from factory.django import DjangoModelFactory

from accounts.models import Membership, Organization, Role, TokenScope
from accounts.services import token_create
from loops.demo import GREETING_CODE
from loops.models import Loop
from loops.services import loop_deploy
from runs.models import Run, RunStatus, TriggerType


class UserFactory(DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw-123456")

    @factory.post_generation
    def _save(self, create, extracted, **kwargs):
        if create:
            self.save()


class OrganizationFactory(DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    organization = factory.SubFactory(OrganizationFactory)
    role = Role.EDITOR


class LoopFactory(DjangoModelFactory):
    """A loop; pass code=… to deploy it as version 1 (the greeting program by default)."""

    class Meta:
        model = Loop
        skip_postgeneration_save = True

    organization = factory.SubFactory(OrganizationFactory)
    slug = factory.Sequence(lambda n: f"loop-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())

    @factory.post_generation
    def code(self, create, extracted, **kwargs):
        if create and extracted is not False:
            loop_deploy(loop=self, code=extracted or GREETING_CODE, note="factory")


class RunFactory(DjangoModelFactory):
    class Meta:
        model = Run

    loop = factory.SubFactory(LoopFactory)
    organization = factory.LazyAttribute(lambda r: r.loop.organization)
    version = factory.LazyAttribute(lambda r: r.loop.active_version)
    status = RunStatus.SUCCEEDED
    trigger_type = TriggerType.API_TOKEN
    input = factory.LazyFunction(lambda: {"name": "Khaya"})


def make_token(org, *, scope=TokenScope.FULL, name="test token") -> str:
    """A token's secret for the organization (the secret is only ever returned once)."""
    return token_create(organization=org, name=name, scope=scope)[1]
