"""Accounts through django-allauth: sign-up, mandatory verification, throttling, admin login."""

from __future__ import annotations

import re
import uuid

import pytest
from allauth.account.models import EmailAddress
from django.test import Client

from projects.models import AuditEvent, Membership, Role, User
from tests.conftest import totp_code
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def _unique_ip() -> str:
    # Rate-limit counters live in the real (shared) cache: each test uses its own address.
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def _client() -> Client:
    return Client(REMOTE_ADDR=_unique_ip())


def _signup(client: Client, email: str, password: str = PASSWORD):
    return client.post("/accounts/signup/", {"email": email, "password1": password, "password2": password})


def test_signup_requires_verification_then_gives_an_organization(mailoutbox) -> None:
    client = _client()
    email = f"new-{uuid.uuid4().hex[:8]}@example.test"
    response = _signup(client, email)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    user = User.objects.get(email=email)
    # Mandatory verification: not signed in yet.
    assert client.get("/").status_code == 302
    assert Membership.objects.get(user=user).role == Role.OWNER

    (message,) = mailoutbox
    link = re.search(r"http://\S+/accounts/confirm-email/\S+/", message.body).group(0)
    path = link.split("testserver", 1)[1]
    assert client.get(path).status_code == 200
    response = client.post(path)
    assert response.status_code == 302
    assert EmailAddress.objects.get(email=email).verified
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert b"No projects yet" in dashboard.content
    actions = set(AuditEvent.objects.filter(actor=user).values_list("action", flat=True))
    assert {"account.signed_up", "organization.created", "account.email_verified", "account.login"} <= actions


def test_login_before_verification_does_not_sign_in(mailoutbox) -> None:
    user = UserFactory(verified=False)
    EmailAddress.objects.create(user=user, email=user.email, verified=False, primary=True)
    client = _client()
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert client.get("/").status_code == 302
    assert len(mailoutbox) == 1


@pytest.mark.parametrize("email", ["not-an-address", "a@", "@example.test", "spaces in@example.test"])
def test_signup_with_a_bad_email_is_a_400_and_creates_nothing(email: str) -> None:
    before = User.objects.count()
    response = _signup(_client(), email)
    assert response.status_code == 400
    assert b"Enter a valid email address" in response.content
    assert User.objects.count() == before


def test_a_taken_email_is_not_revealed_at_sign_up_or_password_reset(mailoutbox) -> None:
    """An outsider learns nothing about who is a customer: sign-up with a taken address
    answers like any other (the owner gets a mail instead), password reset answers alike
    for known and unknown addresses."""
    existing = UserFactory()
    fresh = f"fresh-{uuid.uuid4().hex[:6]}@example.test"
    before = User.objects.count()
    taken, new = _signup(_client(), existing.email.upper()), _signup(_client(), fresh)
    assert (
        (taken.status_code, taken["Location"])
        == (new.status_code, new["Location"])
        == (302, "/accounts/confirm-email/")
    )
    assert (
        User.objects.count() == before + 1 and not User.objects.filter(email=existing.email.upper()).exists()
    )
    assert any(existing.email in m.to for m in mailoutbox)
    known = _client().post("/accounts/password/reset/", {"email": existing.email})
    unknown = _client().post(
        "/accounts/password/reset/", {"email": f"nobody-{uuid.uuid4().hex[:6]}@example.test"}
    )
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])


def test_login_answers_alike_for_unknown_and_known_addresses() -> None:
    """A wrong password for a customer's address and any password for an address nobody
    uses get the same status and the same words: login tells no one who is a customer."""
    existing = UserFactory()

    def failed(email: str) -> tuple[int, dict[str, list[str]]]:
        response = _client().post("/accounts/login/", {"login": email, "password": "wrong-password"})
        return response.status_code, dict(response.context["form"].errors)

    unknown = failed(f"nobody-{uuid.uuid4().hex[:6]}@example.test")
    assert failed(existing.email) == unknown
    assert unknown[0] == 400 and "not correct" in str(unknown[1])


def test_signup_with_a_weak_password_is_refused() -> None:
    response = _signup(_client(), f"weak-{uuid.uuid4().hex[:6]}@example.test", password="12345")
    assert response.status_code == 400
    assert b"too short" in response.content


def test_failed_logins_are_throttled_and_audited() -> None:
    user = UserFactory(email=f"target-{uuid.uuid4().hex[:8]}@example.test")
    client = _client()
    statuses = [
        client.post("/accounts/login/", {"login": user.email, "password": "wrong-password"}).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [400] * 5
    assert statuses[5] == 429
    assert (
        b"Too many failed login attempts"
        in client.post("/accounts/login/", {"login": user.email, "password": "wrong-password"}).content
    )
    # Even the right password is refused while the address is throttled.
    assert client.post("/accounts/login/", {"login": user.email, "password": PASSWORD}).status_code == 429
    failed = AuditEvent.objects.filter(action="account.login_failed", actor_email=user.email)
    assert failed.count() == 5
    assert failed.first().ip_address is not None


def test_successful_login_is_audited_with_the_address() -> None:
    user = UserFactory()
    client = Client(REMOTE_ADDR="192.0.2.44")
    response = client.post("/accounts/login/", {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="account.login", actor=user)
    assert event.ip_address == "192.0.2.44"


def test_admin_login_goes_through_allauth() -> None:
    response = _client().get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_admin_refuses_non_staff_and_admits_staff() -> None:
    customer = UserFactory()
    client = _client()
    client.post("/accounts/login/", {"login": customer.email, "password": PASSWORD})
    assert client.get("/admin/login/").status_code == 403
    staff = UserFactory(is_staff=True, is_superuser=True)
    code = totp_code(staff)  # staff need a second factor (tests/portal/test_staff_security.py)
    client = _client()
    client.post("/accounts/login/", {"login": staff.email, "password": PASSWORD})
    assert client.post("/accounts/2fa/authenticate/", {"code": code}).status_code == 302
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/projects/auditevent/?q=login").status_code == 200


def test_pages_send_a_content_security_policy() -> None:
    response = _client().get("/accounts/login/")
    policy = response["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response["X-Frame-Options"] == "DENY"


def test_behind_a_trusted_proxy_one_clients_failed_logins_do_not_lock_out_another(settings) -> None:
    """Every request comes from the proxy's address; the client is the last address the
    proxy added to X-Forwarded-For. Ten bad logins from one client (each with another
    e-mail) throttle that client only, and the audit log records the client's address."""
    settings.TRUSTED_PROXY_COUNT = settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    proxy, attacker, other = _unique_ip(), _unique_ip(), _unique_ip()
    client = Client(REMOTE_ADDR=proxy)

    def login(address: str, email: str) -> int:
        return client.post(
            "/accounts/login/",
            {"login": email, "password": "wrong-password"},
            HTTP_X_FORWARDED_FOR=f"203.0.113.9, {address}",  # a spoofed first hop, then the client
        ).status_code

    statuses = [login(attacker, f"guess-{i}-{uuid.uuid4().hex[:6]}@example.test") for i in range(11)]
    assert statuses[:10] == [400] * 10 and statuses[10] == 429
    assert login(other, f"someone-{uuid.uuid4().hex[:6]}@example.test") == 400  # not locked out
    assert AuditEvent.objects.filter(action="account.login_failed", ip_address=attacker).count() == 10
    assert not AuditEvent.objects.filter(action="account.login_failed", ip_address=proxy).exists()


def test_account_mails_name_the_portal_not_the_request_host(mailoutbox, settings) -> None:
    settings.STACKPORT_SITE_NAME = "Acme Cloud"
    settings.STACKPORT_BASE_URL = "https://portal.acme.example"
    _signup(
        Client(REMOTE_ADDR=_unique_ip(), HTTP_HOST="127.0.0.1:8000"), f"n-{uuid.uuid4().hex[:6]}@example.test"
    )
    (mail,) = mailoutbox
    assert mail.subject.startswith("[Acme Cloud] ") and "Hello from Acme Cloud!" in mail.body
    assert (
        "portal.acme.example" in mail.body
        and "127.0.0.1:8000" not in mail.subject + mail.body.split("http")[0]
    )
