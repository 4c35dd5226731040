"""WebAuthn security keys work here: Chromium's virtual authenticator registers a key and
then answers the second-factor prompt at sign-in."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.factories import PASSWORD, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def site(live_server: Any, settings: Any) -> str:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    return live_server.url


def _sign_in(page: Any, site: str, email: str) -> None:
    page.goto(f"{site}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")


def test_security_key_registers_and_signs_in(page: Any, site: str, console_errors: list[str]) -> None:
    user = UserFactory()
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "usb",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )

    _sign_in(page, site, user.email)
    page.wait_for_url(f"{site}/")
    page.goto(f"{site}/accounts/2fa/webauthn/add/")
    if "/reauthenticate/" in page.url:
        page.fill("input[name=password]", PASSWORD)
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r".*/accounts/2fa/webauthn/add/"))
    page.fill("input[name=name]", "My test key")
    page.click("#mfa_webauthn_add")
    page.wait_for_url(re.compile(r".*/accounts/2fa/(recovery-codes/|webauthn/)$"))
    page.goto(f"{site}/accounts/2fa/webauthn/")
    assert page.get_by_text("My test key").is_visible()

    page.goto(f"{site}/accounts/logout/")
    page.click("main button[type=submit]")
    _sign_in(page, site, user.email)
    page.wait_for_url(re.compile(r".*/accounts/2fa/authenticate/"))
    page.click("#mfa_webauthn_authenticate")
    page.wait_for_url(f"{site}/")
    assert page.get_by_text("No projects yet").is_visible() or page.get_by_text("Welcome").is_visible()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
