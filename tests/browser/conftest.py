"""Browser tests: Debian's Chromium driven by Playwright against pytest-django's live server."""

from __future__ import annotations

import os
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"


def chromium_args(*loopback_names: str) -> list[str]:
    """Chromium's flags for a test: headless, no background traffic, and a resolver that maps
    ``loopback_names`` (patterns such as ``*.apps.localhost``) to 127.0.0.1 and every other
    name but localhost to nothing. A page never waits on the internet: WordPress's admin bar,
    for one, shows avatars from gravatar.com, and where the machine's resolver answers but the
    internet drops packets, the page's load event waited minutes for them."""
    rules = [f"MAP {name} 127.0.0.1" for name in loopback_names]
    rules += ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1", "EXCLUDE [::1]"]
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--host-resolver-rules={', '.join(rules)}",
    ]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": chromium_args("*.localhost")}


@pytest.fixture
def console_errors(page: Any) -> list[str]:
    """Errors the page logs (a CSP violation shows up here)."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def sign_in_as(page: Any, site: str, user: Any) -> None:
    """``user``'s session cookie in the browser for ``site`` (a signed-in page without the
    sign-in form, which the onboarding tests click through)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": site}])
