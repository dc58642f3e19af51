"""The rules a trigger is checked against are written once and read two ways: in SQL (the
trigger URL's one statement, the token lookup of every request) and for an object at hand (the
API's operation). Both readings give the same answer."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.access import org_is_named
from accounts.models import ApiToken, Organization
from accounts.services import token_authenticate, token_create
from loops.models import Loop
from loops_project.errors import Conflict
from runs.rules import TRIGGERABLE, check_triggerable
from tests.factories import LoopFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("paused", "deployed", "refusal"),
    [
        (False, True, None),
        (True, True, "loop_paused"),
        (False, False, "no_active_version"),
        (True, False, "loop_paused"),
    ],
)
def test_a_loop_is_triggerable_in_sql_exactly_when_check_triggerable_lets_it(
    org, paused, deployed, refusal
):
    loop = LoopFactory(organization=org, slug="gate", code=None if deployed else False)
    Loop.objects.filter(pk=loop.pk).update(paused=paused)
    loop.refresh_from_db()

    in_sql = Loop.objects.filter(TRIGGERABLE, pk=loop.pk).exists()
    if refusal is None:
        check_triggerable(loop)
        assert in_sql
    else:
        with pytest.raises(Conflict) as refused:
            check_triggerable(loop)
        assert refused.value.code == refusal
        assert not in_sql


def test_an_organization_is_named_by_its_id_or_its_slug_in_sql_and_at_hand(org, other_org):
    for ident in (org.pk, org.slug, other_org.pk, other_org.slug, "nobody", ""):
        named = set(Organization.objects.named(ident).values_list("pk", flat=True))
        assert named == {o.pk for o in (org, other_org) if org_is_named(o, ident)}, ident
    assert org_is_named(org, org.pk)
    assert org_is_named(org, "acme")
    assert not org_is_named(org, other_org.pk)


def test_a_token_authenticates_exactly_while_it_is_active(org):
    now = timezone.now()
    cases = {
        "active": {},
        "expiring later": {"expires_at": now + timedelta(hours=1)},
        "expired": {"expires_at": now - timedelta(seconds=1)},
        "revoked": {},
    }
    secrets = {}
    for name, options in cases.items():
        token, secrets[name] = token_create(organization=org, name=name, **options)
        if name == "revoked":
            token.revoke()
    active = set(ApiToken.objects.active(timezone.now()).values_list("name", flat=True))
    assert active == {"active", "expiring later"}
    for name, secret in secrets.items():
        found = token_authenticate(secret)
        assert (found is not None) == (name in active), name
        if found is not None:
            assert found.is_active
            assert found.organization == org
