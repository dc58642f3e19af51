"""Concurrency limits as data: a loop's `concurrencyLimit` (API, loop page, admin) and an
organization's limit (setting, admin override). The engine's claim honours them; this file
holds the surfaces that set them and the one answer it reads (issue 11, item 5)."""

import httpx
import pytest
from django.db import IntegrityError, transaction
from django.urls import reverse

from accounts.models import CONCURRENCY_LIMIT_MAX, Organization, Role, TokenScope
from loops.models import Loop
from loops.services import loop_create, loop_update
from loops_project.errors import Invalid
from tests.factories import LoopFactory, MembershipFactory, make_token

pytestmark = pytest.mark.django_db

HELP = "Runs over the limit wait as pending and start as others end; waiting runs hold no slot"
# Not a whole number from 1 to 10,000: each is refused, by the API with the field named.
BAD_VALUES = [0, -1, CONCURRENCY_LIMIT_MAX + 1, 2**63, "5", "", 2.5, 5.0, True, [3], {"n": 3}]


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def inline_management(prefix: str, initial: int) -> dict:
    return {
        f"{prefix}-TOTAL_FORMS": initial,
        f"{prefix}-INITIAL_FORMS": initial,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }


# --- API --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_loop_object_reads_sets_keeps_and_clears_concurrency_limit(api, loop):
    assert api.get("/api/v1/loops/greeting").json()["data"]["concurrencyLimit"] is None
    assert api.get("/api/v1/loops").json()["data"][0]["concurrencyLimit"] is None

    response = api.patch("/api/v1/loops/greeting", json={"concurrencyLimit": 5})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["concurrencyLimit"] == 5
    loop.refresh_from_db()
    assert loop.concurrency_limit == 5
    assert api.get(f"/api/v1/loops/{loop.pk}").json()["data"]["concurrencyLimit"] == 5

    # Absent means unchanged: a patch of other fields keeps the limit.
    data = api.patch("/api/v1/loops/greeting", json={"name": "Greeter", "paused": True}).json()
    assert (data["data"]["name"], data["data"]["concurrencyLimit"]) == ("Greeter", 5)

    response = api.patch("/api/v1/loops/greeting", json={"concurrencyLimit": None})
    assert response.status_code == 200
    assert response.json()["data"]["concurrencyLimit"] is None
    loop.refresh_from_db()
    assert (loop.concurrency_limit, loop.name, loop.paused) == (None, "Greeter", True)

    for edge in (1, CONCURRENCY_LIMIT_MAX):
        response = api.patch("/api/v1/loops/greeting", json={"concurrencyLimit": edge})
        assert response.json()["data"]["concurrencyLimit"] == edge


@pytest.mark.django_db(transaction=True)
def test_bad_concurrency_limit_is_422_naming_the_field_and_changes_nothing(api, loop):
    api.patch("/api/v1/loops/greeting", json={"concurrencyLimit": 7})
    for value in BAD_VALUES:
        response = api.patch(
            "/api/v1/loops/greeting", json={"name": "Renamed", "concurrencyLimit": value}
        )
        assert response.status_code == 422, (value, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert "concurrencyLimit" in error["message"], value
        assert [d["field"] for d in error["details"]] == ["concurrencyLimit"], value
    loop.refresh_from_db()
    assert (loop.concurrency_limit, loop.name) == (7, "Greeting")


@pytest.mark.django_db(transaction=True)
def test_create_loop_takes_concurrency_limit(api, org):
    response = api.post("/api/v1/loops", json={"slug": "billing", "concurrencyLimit": 3})
    assert response.status_code == 201, response.text
    assert response.json()["data"]["concurrencyLimit"] == 3
    assert Loop.objects.get(slug="billing").concurrency_limit == 3
    plain = api.post("/api/v1/loops", json={"slug": "plain"}).json()["data"]
    assert plain["concurrencyLimit"] is None

    response = api.post("/api/v1/loops", json={"slug": "bad", "concurrencyLimit": 0})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["concurrencyLimit"]
    assert not Loop.objects.filter(slug="bad").exists()


@pytest.mark.django_db(transaction=True)
def test_another_organizations_loop_is_404_and_unchanged(api, other_org):
    foreign = LoopFactory(organization=other_org, slug="greeting", code=False)
    LoopFactory(organization=other_org, slug="theirs", code=False)
    for ident in ("theirs", foreign.pk):
        assert api.get(f"/api/v1/loops/{ident}").status_code == 404
        response = api.patch(f"/api/v1/loops/{ident}", json={"concurrencyLimit": 1})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    # Same slug in the caller's organization does not exist either: still 404.
    assert api.patch("/api/v1/loops/greeting", json={"concurrencyLimit": 1}).status_code == 404
    assert set(Loop.objects.values_list("concurrency_limit", flat=True)) == {None}


@pytest.mark.django_db(transaction=True)
def test_trigger_token_cannot_change_the_limit(live_server, org, loop):
    headers = {"Authorization": f"Bearer {make_token(org, scope=TokenScope.TRIGGER)}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as client:
        response = client.patch("/api/v1/loops/greeting", json={"concurrencyLimit": 2})
    assert response.status_code == 403
    loop.refresh_from_db()
    assert loop.concurrency_limit is None


# --- services and the database ----------------------------------------------------------------


def test_services_refuse_a_limit_out_of_range(org, loop):
    for value in (0, -3, CONCURRENCY_LIMIT_MAX + 1, True, 2.0, "4"):
        with pytest.raises(Invalid) as caught:
            loop_update(loop=loop, concurrency_limit=value)
        assert caught.value.details == {"field": "concurrency_limit"}
        with pytest.raises(Invalid):
            loop_create(organization=org, slug="other", concurrency_limit=value)
    loop.refresh_from_db()
    assert loop.concurrency_limit is None
    assert not Loop.objects.filter(slug="other").exists()
    loop_update(loop=loop, concurrency_limit=4)
    loop_update(loop=loop, name="Kept")  # not given: unchanged
    loop.refresh_from_db()
    assert loop.concurrency_limit == 4


@pytest.mark.parametrize("value", [0, CONCURRENCY_LIMIT_MAX + 1])
def test_database_refuses_a_limit_out_of_range(org, loop, value):
    with pytest.raises(IntegrityError), transaction.atomic():
        Loop.objects.filter(pk=loop.pk).update(concurrency_limit=value)
    with pytest.raises(IntegrityError), transaction.atomic():
        Organization.objects.filter(pk=org.pk).update(concurrency_limit=value)


# --- the organization's effective limit -----------------------------------------------------


def test_org_effective_limit_is_the_setting_unless_overridden(org, settings):
    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 0
    assert org.effective_concurrency_limit() is None
    settings.LOOPS_ORG_CONCURRENCY_LIMIT = -1  # below zero is no limit too, never "none may run"
    assert org.effective_concurrency_limit() is None
    assert Organization.default_concurrency_limit() is None
    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 25
    assert org.effective_concurrency_limit() == 25
    assert Organization.default_concurrency_limit() == 25

    org.concurrency_limit = 3  # the override wins, below the setting ...
    org.save(update_fields=["concurrency_limit"])
    org.refresh_from_db()
    assert org.effective_concurrency_limit() == 3
    org.concurrency_limit = 40  # ... and above it
    assert org.effective_concurrency_limit() == 40
    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 0
    assert org.effective_concurrency_limit() == 40
    org.concurrency_limit = None
    assert org.effective_concurrency_limit() is None


# --- the loop page --------------------------------------------------------------------------


def test_loop_page_sets_and_clears_the_limit(owner_client, loop):
    page = owner_client.get(loop.get_absolute_url()).content.decode()
    assert HELP in page
    assert 'name="concurrency_limit"' in page
    assert 'min="1"' in page
    assert 'max="10000"' in page  # the browser checks the range before sending it
    assert "Acme: no limit over all its loops" in page

    url = reverse("loops:settings", args=[loop.slug])
    response = owner_client.post(url, {"concurrency_limit": "4"})
    assert response.status_code == 302
    assert response["Location"] == loop.get_absolute_url()
    loop.refresh_from_db()
    assert loop.concurrency_limit == 4
    page = owner_client.get(loop.get_absolute_url()).content.decode()
    assert "Greeting runs at most 4 at once." in page
    assert 'name="concurrency_limit" value="4"' in page

    owner_client.post(url, {"concurrency_limit": ""})
    loop.refresh_from_db()
    assert loop.concurrency_limit is None


@pytest.mark.parametrize("value", ["0", "10001", "abc", "2.5"])
def test_loop_page_shows_a_bad_limit_on_the_field(owner_client, loop, value):
    loop_update(loop=loop, concurrency_limit=9)
    response = owner_client.post(reverse("loops:settings", args=[loop.slug]),
                                 {"concurrency_limit": value})  # fmt: skip
    assert response.status_code == 422
    errors = response.context["settings_form"].errors
    assert list(errors) == ["concurrency_limit"]
    assert 'class="field-error"' in response.content.decode()
    loop.refresh_from_db()
    assert loop.concurrency_limit == 9


def test_loop_page_shows_the_org_limit(owner_client, org, loop, settings):
    def page() -> str:
        return owner_client.get(loop.get_absolute_url()).content.decode()

    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 30
    assert "Acme: at most 30 runs at once over all its loops" in page()
    Organization.objects.filter(pk=org.pk).update(concurrency_limit=6)
    assert "Acme: at most 6 runs at once over all its loops" in page()


def test_viewer_sees_the_limit_but_cannot_change_it(client, org, loop):
    loop_update(loop=loop, concurrency_limit=2)
    client.force_login(MembershipFactory(organization=org, role=Role.VIEWER).user)
    page = client.get(loop.get_absolute_url()).content.decode()
    assert "At most 2 runs at once." in page
    assert 'name="concurrency_limit"' not in page
    response = client.post(reverse("loops:settings", args=[loop.slug]), {"concurrency_limit": 8})
    assert response.status_code == 403
    loop.refresh_from_db()
    assert loop.concurrency_limit == 2


def test_another_organizations_loop_page_is_404(client, outsider, loop):
    client.force_login(outsider)
    response = client.post(reverse("loops:settings", args=[loop.slug]), {"concurrency_limit": 1})
    assert response.status_code == 404
    loop.refresh_from_db()
    assert loop.concurrency_limit is None


# --- admin --------------------------------------------------------------------------------------


def loop_change(admin_client, loop, **data):
    return admin_client.post(
        admin_url(Loop, "change", loop.pk),
        {
            "name": loop.name,
            "description": loop.description,
            **inline_management("versions", loop.versions.count()),
            **inline_management("schedules", 0),
            **data,
        },
    )


def test_loop_admin_lists_filters_and_edits_the_limit(admin_client, org, loop):
    LoopFactory(organization=org, slug="free", name="Free", code=False)
    response = loop_change(admin_client, loop, concurrency_limit="12")
    assert response.status_code == 302, response.context["adminform"].form.errors
    loop.refresh_from_db()
    assert loop.concurrency_limit == 12

    changelist = admin_client.get(admin_url(Loop, "changelist"))
    page = changelist.content.decode()
    assert "Concurrency limit" in page
    assert '<td class="field-concurrency">12</td>' in page
    assert '<td class="field-concurrency">none</td>' in page
    limited = admin_client.get(admin_url(Loop, "changelist"), {"concurrency_limit__isempty": "0"})
    assert [o.slug for o in limited.context["cl"].result_list] == ["greeting"]

    change_page = admin_client.get(admin_url(Loop, "change", loop.pk)).content.decode()
    assert 'name="concurrency_limit" value="12"' in change_page
    assert HELP in change_page

    response = loop_change(admin_client, loop, concurrency_limit="")
    assert response.status_code == 302
    loop.refresh_from_db()
    assert loop.concurrency_limit is None


@pytest.mark.parametrize("value", ["0", "10001", "x"])
def test_loop_admin_refuses_a_bad_limit(admin_client, loop, value):
    response = loop_change(admin_client, loop, concurrency_limit=value)
    assert response.status_code == 200
    assert "concurrency_limit" in response.context["adminform"].form.errors
    loop.refresh_from_db()
    assert loop.concurrency_limit is None


def test_loop_added_in_admin_keeps_its_limit(admin_client, org):
    response = admin_client.post(
        admin_url(Loop, "add"),
        {
            "organization": org.pk, "slug": "invoices", "name": "Invoices",
            "concurrency_limit": "2",
            **inline_management("versions", 0), **inline_management("schedules", 0),
        },
    )  # fmt: skip
    assert response.status_code == 302
    assert Loop.objects.get(slug="invoices").concurrency_limit == 2


def org_change(admin_client, org, **data):
    return admin_client.post(
        admin_url(Organization, "change", org.pk),
        {"slug": org.slug, "name": org.name, **inline_management("memberships", 0), **data},
    )


def test_org_admin_edits_the_override_and_shows_the_effective_limit(admin_client, org, settings):
    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 50
    page = admin_client.get(admin_url(Organization, "change", org.pk)).content.decode()
    assert 'name="concurrency_limit"' in page
    assert "50 running at once (LOOPS_ORG_CONCURRENCY_LIMIT setting)" in page

    response = org_change(admin_client, org, concurrency_limit="8")
    assert response.status_code == 302, response.context["adminform"].form.errors
    org.refresh_from_db()
    assert org.concurrency_limit == 8
    page = admin_client.get(admin_url(Organization, "change", org.pk)).content.decode()
    assert "8 running at once (this organization&#x27;s override)" in page
    changelist = admin_client.get(admin_url(Organization, "changelist")).content.decode()
    assert "8 running at once (this organization&#x27;s override)" in changelist

    for bad in ("0", "10001", "many"):
        response = org_change(admin_client, org, concurrency_limit=bad)
        assert response.status_code == 200
        assert "concurrency_limit" in response.context["adminform"].form.errors
    org.refresh_from_db()
    assert org.concurrency_limit == 8

    settings.LOOPS_ORG_CONCURRENCY_LIMIT = 0
    assert org_change(admin_client, org, concurrency_limit="").status_code == 302
    org.refresh_from_db()
    assert org.concurrency_limit is None
    page = admin_client.get(admin_url(Organization, "change", org.pk)).content.decode()
    assert "no limit (LOOPS_ORG_CONCURRENCY_LIMIT setting)" in page
