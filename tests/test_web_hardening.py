"""Web hardening through HTTP: login throttling, the Content-Security-Policy, invitations a person
accepts, and API token secrets that live only in the answer that created them."""

import importlib
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest
from axes.models import AccessAttempt
from django.apps import apps
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Invitation, Membership, Role
from accounts.services import invitation_create
from runs.models import ScanRequest, Step
from runs.webhooks import webhook_create
from tests.factories import MembershipFactory, RunFactory, UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "pw-123456"  # the factories' password


@pytest.fixture(autouse=True)
def _known_settings(settings):
    # Whatever the environment says, these tests need the throttle on, with known numbers.
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    settings.LOOPS_LOGIN_COOLOFF_MINUTES = 15
    settings.AXES_COOLOFF_TIME = 0.25
    settings.LOOPS_TRUSTED_PROXIES = 0
    settings.LOOPS_INVITATION_EMAILS = True


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --- login throttling ---------------------------------------------------------------------------


def log_in(client: Client, username: str, password: str, ip: str = "10.0.0.1", **extra):
    return client.post(
        reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip, **extra
    )


def test_wrong_passwords_lock_the_login_then_the_cool_off_lets_it_in(client, owner):
    for _ in range(4):
        refused = log_in(client, "olivia", "wrong")
        assert refused.status_code == 200
        assert "didn't match" in refused.content.decode()
    locked = log_in(client, "olivia", "wrong")  # the fifth failure
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.content.decode()
    right = log_in(client, "olivia", PASSWORD)
    assert right.status_code == 429
    assert "Try again in 15 minutes" in right.content.decode()
    assert not logged_in(client)

    # The cool-off passes: the failures are older than 15 minutes.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    after = log_in(client, "olivia", PASSWORD)
    assert after.status_code == 302
    assert logged_in(client)


def test_fewer_failures_than_the_limit_do_not_lock(client, owner):
    for _ in range(4):
        log_in(client, "olivia", "wrong")
    assert log_in(client, "olivia", PASSWORD).status_code == 302
    assert logged_in(client)


def test_a_lockout_holds_for_that_username_from_that_address_only(client, owner, member):
    for _ in range(5):
        log_in(client, "olivia", "wrong", ip="10.0.0.1")
    assert log_in(client, "olivia", PASSWORD, ip="10.0.0.1").status_code == 429
    # The same person from elsewhere, and another person from the same address, still get in.
    assert log_in(Client(), "olivia", PASSWORD, ip="10.0.0.2").status_code == 302
    assert log_in(Client(), "mo", PASSWORD, ip="10.0.0.1").status_code == 302


def test_the_admin_login_is_throttled_too(client, db):
    UserFactory(username="root", is_staff=True, is_superuser=True)
    url = reverse("admin:login")
    for _ in range(5):
        client.post(url, {"username": "root", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    right = client.post(url, {"username": "root", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9")
    assert right.status_code == 429
    assert "Too many failed attempts" in right.content.decode()
    assert not logged_in(client)


def test_behind_a_proxy_the_address_it_saw_counts_not_what_the_client_wrote(
    client, owner, settings
):
    settings.LOOPS_TRUSTED_PROXIES = 1
    for n in range(5):  # a different made-up address each time, from one real client
        log_in(client, "olivia", "wrong", ip="10.0.0.5",
               HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.9")  # fmt: skip
    spoofed = log_in(client, "olivia", PASSWORD, ip="10.0.0.5",
                     HTTP_X_FORWARDED_FOR="192.0.2.1, 203.0.113.9")  # fmt: skip
    assert spoofed.status_code == 429
    elsewhere = log_in(Client(), "olivia", PASSWORD, ip="10.0.0.5",
                       HTTP_X_FORWARDED_FOR="203.0.113.10")  # fmt: skip
    assert elsewhere.status_code == 302


# --- Content-Security-Policy --------------------------------------------------------------------

REQUIRED = {
    "default-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def policy_of(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


def main_pages(org, owner, loop) -> list[str]:
    run = RunFactory(loop=loop, status="succeeded", output={"ok": True})
    hook = webhook_create(organization=org, url="https://hooks.example.com/loops")
    return [
        reverse("loops:list"),
        loop.get_absolute_url(),
        reverse("loops:editor", args=[loop.slug]),
        reverse("loops:versions", args=[loop.slug]),
        reverse("loops:logs", args=[loop.slug]),
        reverse("loops:schedules", args=[loop.slug]),
        reverse("runs:list"),
        run.get_absolute_url(),
        reverse("accounts:members"),
        reverse("accounts:tokens"),
        reverse("accounts:webhooks"),
        reverse("accounts:webhook", args=[hook.pk]),
        reverse("accounts:invitations"),
    ]


def test_every_page_answers_with_a_strict_policy_and_nonced_scripts_only(
    owner_client, org, owner, loop
):
    inline_handler = re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE)
    for path in main_pages(org, owner, loop):
        response = owner_client.get(path)
        assert response.status_code == 200, path
        policy = policy_of(response)
        for directive, value in REQUIRED.items():
            assert policy[directive] == [value], (path, directive)
        scripts = policy["script-src"]
        assert "'unsafe-inline'" not in scripts
        assert "'unsafe-eval'" not in scripts
        nonces = [v for v in scripts if v.startswith("'nonce-")]
        assert len(nonces) == 1, path
        nonce = nonces[0][len("'nonce-") : -1]
        page = response.content.decode()
        for tag in re.findall(r"<script\b[^>]*>", page):
            # Every script is a file of this origin, or carries this answer's nonce.
            assert "src=" in tag or f'nonce="{nonce}"' in tag, (path, tag)
        assert f'nonce="{nonce}"' in page, path  # htmx's script tag
        assert not inline_handler.search(page), path


def test_public_pages_and_the_admin_carry_the_policy(client, admin_client, org, loop):
    run = RunFactory(loop=loop, status="waiting")
    step = Step.objects.create(run=run, order=1, key="Scan#1", name="Scan", kind="scan")
    scan = ScanRequest.objects.create(organization=org, run=run, step=step, subject={"n": 1})
    for response in (
        client.get(reverse("login")),
        client.get(reverse("scan_page", args=[scan.pk])),
        admin_client.get(reverse("admin:index")),
        admin_client.get(reverse("admin:accounts_invitation_changelist")),
    ):
        assert response.status_code == 200
        policy = policy_of(response)
        assert all(policy[d] == [v] for d, v in REQUIRED.items())
        assert "'unsafe-inline'" not in policy["script-src"]


# --- invitations --------------------------------------------------------------------------------


def invite(client: Client, identifier: str, role: str = "editor"):
    return client.post(reverse("accounts:members"), {"identifier": identifier, "role": role})


def link_in(response) -> str:
    match = re.search(r'<code class="mono" id="invite-link">http://testserver(/invite/[^<]+)</code>',
                      response.content.decode())  # fmt: skip
    assert match, "no invitation link in the answer"
    return match.group(1)


def normalized(response, identifier: str) -> str:
    """The answer with what differs by design (name typed, link, per-request tokens) blanked."""
    page = response.content.decode()
    page = page.replace(identifier, "IDENTIFIER")
    page = re.sub(r"/invite/[A-Za-z0-9_-]+/", "/invite/SECRET/", page)
    page = re.sub(r'(csrfmiddlewaretoken" value=|X-CSRFToken": )"[^"]+"', r'\1"T"', page)
    page = re.sub(r'nonce="[^"]+"', 'nonce="N"', page)
    return re.sub(r"inv_[0-9a-z]+", "inv_ID", page)


@pytest.mark.parametrize(
    ("existing", "missing"),
    [("kofi.mensah@example.org", "ghost.user@example.org"), ("kofi.mensah", "ghost.user")],
    ids=["e-mail", "username"],
)
def test_the_answer_is_the_same_whether_or_not_an_account_exists(
    owner_client, org, existing, missing
):
    kofi = UserFactory(username="kofi.mensah", email="kofi.mensah@example.org")
    to_existing = invite(owner_client, existing)
    Invitation.objects.all().delete()  # so that both answers list one pending invitation
    to_missing = invite(owner_client, missing)
    assert to_existing.status_code == to_missing.status_code == 200
    assert f"Invitation sent to {existing}" in to_existing.content.decode()
    assert normalized(to_existing, existing) == normalized(to_missing, missing)
    # Mail goes out by what was typed, never by whether an account has that address.
    assert len(mail.outbox) == (2 if "@" in existing else 0)
    assert not Membership.objects.filter(organization=org, user=kofi).exists()


def test_the_invited_person_joins_with_the_invited_role_once_they_accept(owner_client, org):
    ana = UserFactory(username="ana", email="ana@example.com")
    link = link_in(invite(owner_client, "ANA@example.com", role="admin"))
    assert not Membership.objects.filter(user=ana).exists()
    ana_client = client_for(ana)
    page = ana_client.get(link)
    assert page.status_code == 200
    assert "invited you to join Acme as admin" in page.content.decode()
    invitation = Invitation.objects.get(organization=org)
    accepted = ana_client.post(
        reverse("accounts:invitation_accept", args=[invitation.pk]), follow=True
    )
    assert "Welcome to Acme: you joined as admin." in accepted.content.decode()
    assert Membership.objects.get(organization=org, user=ana).role == Role.ADMIN
    invitation.refresh_from_db()
    assert invitation.accepted_by == ana
    assert invitation.status == "accepted"
    # Used once: the link now says so, and accepting again adds nothing.
    again = ana_client.get(link)
    assert again.status_code == 410
    assert "already been used" in again.content.decode()


def test_a_logged_out_person_is_sent_to_log_in_and_back(owner_client, org):
    link = link_in(invite(owner_client, "ana"))
    response = Client().get(link)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert "next=" in response["Location"]


def test_a_person_who_belongs_nowhere_finds_their_invitations(owner_client, org):
    ana = UserFactory(username="ana", email="ana@example.com")
    invite(owner_client, "ana@example.com", role="viewer")
    ana_client = client_for(ana)
    home = ana_client.get(reverse("home"))
    assert home["Location"] == reverse("accounts:invitations")
    listing = ana_client.get(reverse("accounts:invitations")).content.decode()
    assert "Acme" in listing
    assert "Accept and join" in listing


@pytest.mark.parametrize("state", ["expired", "revoked", "declined", "used"])
def test_expired_revoked_declined_and_used_invitations_are_refused(owner_client, org, state):
    ana = UserFactory(username="ana", email="ana@example.com")
    link = link_in(invite(owner_client, "ana", role="editor"))
    invitation = Invitation.objects.get(organization=org)
    now = timezone.now()
    if state == "expired":
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=now - timedelta(seconds=1))
    elif state == "revoked":
        owner_client.post(reverse("accounts:invitation_revoke", args=[invitation.pk]))
    elif state == "declined":
        client_for(ana).post(reverse("accounts:invitation_decline", args=[invitation.pk]))
    else:
        other = UserFactory(username="ana2")
        Invitation.objects.filter(pk=invitation.pk).update(accepted_at=now, accepted_by=other)
    ana_client = client_for(ana)
    assert ana_client.get(link).status_code == 410
    refused = ana_client.post(
        reverse("accounts:invitation_accept", args=[invitation.pk]), follow=True
    )
    assert "This invitation" in refused.content.decode()
    assert not Membership.objects.filter(organization=org, user=ana).exists()
    assert "Accept and join" not in ana_client.get(reverse("accounts:invitations")).content.decode()


def test_nobody_else_can_accept_someone_elses_invitation(owner_client, org):
    UserFactory(username="ana", email="ana@example.com")
    bob = UserFactory(username="bob", email="bob@example.com")
    link = link_in(invite(owner_client, "ana@example.com"))
    invitation = Invitation.objects.get(organization=org)
    bob_client = client_for(bob)
    page = bob_client.get(link)  # even holding the link
    assert page.status_code == 403
    assert "for another account" in page.content.decode()
    assert "Acme" not in page.content.decode().split("<main", 1)[1]
    accept = reverse("accounts:invitation_accept", args=[invitation.pk])
    assert bob_client.post(accept).status_code == 404
    decline = reverse("accounts:invitation_decline", args=[invitation.pk])
    assert bob_client.post(decline).status_code == 404
    assert "Acme" not in bob_client.get(reverse("accounts:invitations")).content.decode()
    invitation.refresh_from_db()
    assert invitation.status == "pending"
    assert not Membership.objects.filter(organization=org, user=bob).exists()


def test_another_organization_never_sees_or_touches_the_invitations(
    owner_client, org, outsider, other_org
):
    invite(owner_client, "kofi@example.org")
    invitation = Invitation.objects.get(organization=org)
    theirs = client_for(outsider)
    members = theirs.get(reverse("accounts:members")).content.decode()
    assert "kofi@example.org" not in members
    revoke = reverse("accounts:invitation_revoke", args=[invitation.pk])
    assert theirs.post(revoke).status_code == 404
    invitation.refresh_from_db()
    assert invitation.status == "pending"


def test_pending_invitations_are_listed_for_admins_and_can_be_revoked(owner_client, org, member):
    invite(owner_client, "kofi@example.org", role="viewer")
    invitation = Invitation.objects.get(organization=org)
    page = owner_client.get(reverse("accounts:members")).content.decode()
    assert f'id="invitation-{invitation.pk}"' in page
    assert "/invite/" not in page  # the link is shown once, in the answer that made it
    editor_page = client_for(member).get(reverse("accounts:members")).content.decode()
    assert "kofi@example.org" not in editor_page
    assert client_for(member).post(
        reverse("accounts:invitation_revoke", args=[invitation.pk])
    ).status_code == 403  # fmt: skip
    revoked = owner_client.post(
        reverse("accounts:invitation_revoke", args=[invitation.pk]), follow=True
    ).content.decode()
    assert "was withdrawn" in revoked
    assert f'id="invitation-{invitation.pk}"' not in revoked


def test_a_new_invitation_replaces_the_open_one(owner_client, org):
    first = link_in(invite(owner_client, "ana", role="viewer"))
    second = link_in(invite(owner_client, "ANA", role="editor"))
    ana = UserFactory(username="ana")
    ana_client = client_for(ana)
    assert ana_client.get(first).status_code == 410
    assert ana_client.get(second).status_code == 200
    assert Invitation.objects.for_org(org).pending().get().role == Role.EDITOR


def test_only_an_owner_invites_an_owner_and_members_are_not_invited_twice(
    client, owner_client, org, member
):
    admin = MembershipFactory(organization=org, role=Role.ADMIN).user
    refused = invite(client_for(admin), "ana", role="owner")
    assert "Select a valid choice" in refused.content.decode()
    assert not Invitation.objects.exists()
    assert invite(owner_client, "ana", role="owner").status_code == 200
    again = invite(owner_client, "mo@example.com").content.decode()
    assert "mo@example.com is already a member." in again
    assert not Invitation.objects.filter(identifier="mo@example.com").exists()


def test_the_link_secret_is_stored_only_as_a_hash(owner_client, org):
    link = link_in(invite(owner_client, "ana"))
    secret = link.strip("/").rsplit("/", 1)[1]
    invitation = Invitation.objects.get(organization=org)
    assert invitation.token_hash == Invitation.hash(secret)
    stored = [str(v) for v in Invitation.objects.filter(pk=invitation.pk).values().get().values()]
    assert not any(secret in value for value in stored)
    assert all(secret not in s.session_data for s in Session.objects.all())
    assert all(secret not in str(s.get_decoded()) for s in Session.objects.all())


def test_the_invitation_e_mail_carries_the_link(owner_client, org):
    link = link_in(invite(owner_client, "ana@example.com", role="viewer"))
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ana@example.com"]
    assert f"http://testserver{link}" in mail.outbox[0].body


def test_without_a_mail_server_the_link_is_only_shown(owner_client, org, settings):
    settings.LOOPS_INVITATION_EMAILS = False
    response = invite(owner_client, "ana@example.com")
    assert link_in(response)
    assert "e-mailed" not in response.content.decode()
    assert mail.outbox == []


def test_the_admin_lists_invitations_and_revokes_them(admin_client, org, owner):
    invitation, _ = invitation_create(
        organization=org, identifier="ana", role="viewer", invited_by=owner
    )
    changelist = admin_client.get(reverse("admin:accounts_invitation_changelist"))
    assert "ana" in changelist.content.decode()
    assert "Pending" in changelist.content.decode()
    change = admin_client.get(reverse("admin:accounts_invitation_change", args=[invitation.pk]))
    assert change.status_code == 200
    assert invitation.token_hash not in change.content.decode()
    admin_client.post(
        reverse("admin:accounts_invitation_changelist"),
        {"action": "revoke_invitations", "_selected_action": [invitation.pk]},
    )
    invitation.refresh_from_db()
    assert invitation.status == "revoked"


# --- token secrets ------------------------------------------------------------------------------


def secret_anywhere_server_side(secret: str) -> bool:
    for session in Session.objects.all():
        if secret in session.session_data or secret in str(session.get_decoded()):
            return True
    rows = ApiToken.objects.values()
    return any(secret in str(value) for row in rows for value in row.values())


def test_a_new_tokens_secret_is_in_the_answer_and_in_no_session(owner_client, org):
    response = owner_client.post(reverse("accounts:tokens"), {"name": "CI", "scope": "trigger"})
    assert response.status_code == 200  # rendered, not a redirect through the session
    secret = re.search(r'id="new-token-value">(lp_[A-Za-z0-9_-]+)<', response.content.decode())
    assert secret, "the secret is shown in the answer"
    secret = secret.group(1)
    assert ApiToken.objects.get(name="CI").token_hash == ApiToken.hash(secret)
    assert "no-store" in response["Cache-Control"]
    assert Session.objects.exists()  # the person's session row is there: it must not hold it
    assert not secret_anywhere_server_side(secret)
    assert all(secret not in cookie.value for cookie in response.cookies.values())
    again = owner_client.get(reverse("accounts:tokens")).content.decode()
    assert secret not in again
    assert "it will not be shown again" not in again


def test_the_admin_shows_a_new_tokens_secret_without_keeping_it(admin_client, org):
    response = admin_client.post(
        reverse("admin:accounts_apitoken_add"),
        {"organization": org.pk, "name": "deploy bot", "scope": "trigger",
         "expires_at_0": "", "expires_at_1": ""},
    )  # fmt: skip
    assert response.status_code == 200
    secret = re.search(r"lp_[A-Za-z0-9_-]{40,}", response.content.decode()).group(0)
    assert ApiToken.objects.get(name="deploy bot").token_hash == ApiToken.hash(secret)
    assert not secret_anywhere_server_side(secret)
    assert all(secret not in cookie.value for cookie in response.cookies.values())


def test_the_upgrade_removes_secrets_that_older_sessions_kept(db):
    older = SessionStore()
    older["new_token"] = {"id": "tok_x", "raw": "lp_kept-by-the-old-tokens-page"}
    older["current_org"] = "org_x"
    older.create()
    migration = importlib.import_module("accounts.migrations.0003_forget_token_secrets_in_sessions")
    migration.forget_token_secrets(
        apps, SimpleNamespace(connection=SimpleNamespace(alias="default"))
    )
    row = Session.objects.get(session_key=older.session_key)
    assert "lp_kept" not in str(row.get_decoded())
    assert row.get_decoded() == {"current_org": "org_x"}
