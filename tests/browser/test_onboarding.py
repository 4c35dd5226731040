"""A new customer, end to end in Chromium: sign up, verify, TOTP, invite a colleague who
joins; the colleague sees nothing of a third organization."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value

from projects.models import Membership, Organization, Role
from tests.factories import MembershipFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "a-long-browser-password-77"


def _totp(secret: str, offset: int = 0) -> str:
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + offset))


def _link(mailoutbox: list[Any], pattern: str) -> str:
    body = mailoutbox[-1].body
    match = re.search(pattern, body)
    assert match, body
    return match.group(0)


def _sign_up(page: Any, base: str, email: str, mailoutbox: list[Any]) -> None:
    page.goto(f"{base}/accounts/signup/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/accounts/confirm-email/")
    assert "Verify Your Email Address" in page.content()
    page.goto(_link(mailoutbox, r"http://\S+/accounts/confirm-email/\S+/"))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/")


def _sign_out(page: Any, base: str) -> None:
    page.goto(f"{base}/accounts/logout/")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/accounts/login/"))


@pytest.fixture
def site(live_server: Any, settings: Any) -> str:
    settings.STACKPORT_BASE_URL = live_server.url
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the real broker path has its own test
    settings.MFA_TOTP_TOLERANCE = 1
    return live_server.url


def test_signup_mfa_invite_and_isolation(
    page: Any, site: str, mailoutbox: list[Any], console_errors: list[str]
) -> None:
    run = uuid.uuid4().hex[:8]  # fresh addresses: rate-limit counters persist in the shared cache
    alice, bob = f"alice-{run}@example.test", f"bob-{run}@example.test"
    third = MembershipFactory(organization__name="Third Party Ltd", role=Role.OWNER).organization

    # 1. Alice signs up, verifies her address and lands on an empty dashboard.
    _sign_up(page, site, alice, mailoutbox)
    assert page.get_by_text("No projects yet").is_visible()
    alice_org = Organization.objects.get(memberships__user__email=alice)

    # 2. She turns on TOTP with the secret shown on the page.
    page.goto(f"{site}/accounts/2fa/totp/activate/")
    # Security settings ask for the password again (the verification link signed her in).
    page.wait_for_url(re.compile(r".*/accounts/reauthenticate/"))
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{site}/accounts/2fa/totp/activate/")
    secret = page.input_value("#authenticator_secret")
    page.fill("input[name=code]", "000000" if _totp(secret) != "000000" else "111111")
    page.click("main button[type=submit]")
    assert page.get_by_text("Incorrect code").is_visible()
    page.fill("input[name=code]", _totp(secret))
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{site}/accounts/2fa/")
    assert "Authenticator App" in page.content()
    assert (
        page.get_by_role("link", name="Deactivate").count()
        + page.get_by_role("button", name="Deactivate").count()
        >= 1
    )

    # 3. She invites Bob as a developer.
    page.goto(f"{site}/orgs/{alice_org.pk}/invite/")
    page.fill("input[name=email]", bob)
    page.select_option("select[name=role]", "developer")
    page.click("main button[type=submit]")
    page.wait_for_url(f"{site}/orgs/{alice_org.pk}/")
    assert page.get_by_text(f"Invitation sent to {bob}").is_visible()
    invitation_link = _link(mailoutbox, r"http://\S+/invitations/\S+/")
    _sign_out(page, site)

    # 4. Bob opens the link, signs up with the invited address and accepts.
    page.goto(invitation_link)
    assert page.get_by_text(f"Join {alice_org.name}").is_visible()
    _sign_up(page, site, bob, mailoutbox)
    page.goto(invitation_link)
    page.click("button:has-text('Accept invitation')")
    page.wait_for_url(f"{site}/")
    assert page.get_by_text(f"Welcome to {alice_org.name}").is_visible()
    assert Membership.objects.get(organization=alice_org, user__email=bob).role == Role.DEVELOPER

    # The link works once.
    response = page.goto(invitation_link)
    assert response.status == 410

    # 5. Bob sees nothing of the third organization: 404, not 403, and not in his switcher.
    for path in (f"/orgs/{third.pk}/", f"/orgs/{third.pk}/audit/", f"/orgs/{third.pk}/invite/"):
        assert page.goto(f"{site}{path}").status == 404, path
    page.goto(f"{site}/")
    assert "Third Party Ltd" not in page.content()
    _sign_out(page, site)

    # 6. Alice signs in again: her second factor is now required.
    page.goto(f"{site}/accounts/login/")
    page.fill("input[name=login]", alice)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/accounts/2fa/authenticate/"))
    page.fill("input[name=code]", _totp(secret, offset=1))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{site}/")
    assert page.get_by_text(alice_org.name).first.is_visible()

    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
