"""Phone width in Chromium (390 x 844, an iPhone 12-14): the dashboard, an environment page
and the archive need no sideways scrolling, and the skip link is the first thing the
keyboard reaches and lands on the page's content. No engine: rows as a worker leaves them."""

from __future__ import annotations

from typing import Any

import pytest

from projects.models import Environment, EnvironmentStatus
from stacks.models import Operation, OperationStatus
from stacks.runtime import lifecycle
from tests.browser.test_support import _signed_in
from tests.conftest import place

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PHONE = {"width": 390, "height": 844}
FITS = "document.scrollingElement.scrollWidth <= window.innerWidth"
# Nor inside the page: no scrolling box (a .table-responsive wrapper) wider than itself.
INNER_SCROLLERS = """[...document.querySelectorAll('.table-responsive, table')]
  .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id || e.className)"""


@pytest.fixture
def shop(team: Any, offered_catalog: None, monkeypatch: Any) -> Environment:
    monkeypatch.setattr("stacks.tasks.run_operation_task.delay", lambda *a, **k: None)
    env = lifecycle.create_project(
        organization=team.org,
        actor=team.developer,
        name="A shop with a rather long project name",
        region="eu-central",
        template="lamp",
    )
    deploy = env.operations.get()
    Operation.objects.filter(pk=deploy.pk).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=env.pk).update(
        current_release=deploy.release, status=EnvironmentStatus.RUNNING
    )
    place(env, "local")
    env.refresh_from_db()
    return env


def _phone(browser: Any, base: str, user: Any) -> Any:
    page = _signed_in(browser, base, user)
    page.set_viewport_size(PHONE)
    return page


def test_dashboard_and_environment_page_fit_a_phone(
    browser: Any, live_server: Any, team: Any, shop: Environment
) -> None:
    page = _phone(browser, live_server.url, team.developer)
    for path in ("/", f"/environments/{shop.pk}/", "/archive/"):
        page.goto(path)
        assert page.evaluate("window.innerWidth") == PHONE["width"]
        width = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert page.evaluate(FITS), f"{path} scrolls sideways: {width}"
        assert page.evaluate(INNER_SCROLLERS) == [], path
    # The components table is one block per component, each cell named.
    page.goto(f"/environments/{shop.pk}/")
    label = page.evaluate(
        "getComputedStyle(document.querySelector('#components td[data-label]'), '::before').content"
    )
    assert label.strip('"') == "Component"


def test_the_skip_link_comes_first_and_lands_on_the_content(
    browser: Any, live_server: Any, team: Any, shop: Environment
) -> None:
    page = _phone(browser, live_server.url, team.developer)
    page.goto("/")
    skip = page.locator("#skip-link")
    assert skip.bounding_box() is None or skip.bounding_box()["width"] <= 1  # hidden until focused
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "skip-link"
    assert skip.is_visible()
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    assert page.evaluate("document.activeElement.id") == "main"
