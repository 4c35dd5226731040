"""A variable change applied under load, as a customer does it in Chromium on the real engine
(issue "apps"; the engine's own proof is tests/stacks/test_variable_restart.py, whose app and
client this test uses): the environment page's variables form changes a variable of two
public Python replicas, the page marks it pending and offers "Redeploy to apply"; one click
starts the redeploy (a rolling, blue/green replacement), the page follows it live until it
has ended and no longer marks anything pending. Meanwhile a probe sends keep-alive GETs
through the real edge to the environment's host name without pause: none may fail, and the
new value reaches the app (it prints it), in the visitor's browser too. A second probe sends
POSTs: the portal runs on the HAProxy edge (the product's default), which drains the old
replicas before they stop, so no POST fails either (on the Caddy edge, which cannot drain
without a config write, about 1 POST in 2,000 got a 502 in such a swap).

Operations run for real in the worker thread of tests/browser/test_portal.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from projects.models import Environment, EnvironmentStatus
from stacks.models import OperationStatus
from stacks.runtime import lifecycle
from tests.browser.conftest import sign_in_as
from tests.browser.test_git_builds import visit
from tests.browser.test_portal import Worker, cleanup, settle, site, worker
from tests.conftest import Team
from tests.stacks.conftest import (  # noqa: F401 - fixtures
    catalog,
    haproxy,
    published_catalog,
)
from tests.stacks.test_haproxy_edge import Edge
from tests.stacks.test_lifecycle import create, get
from tests.stacks.test_operations import zip_archive
from tests.stacks.test_variable_restart import APP, PYTHON, KeepAliveLoad

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(1800)]
__all__ = ["cleanup", "site", "worker"]  # fixtures, from test_portal


def save_variable(page: Any, name: str, value: str) -> None:
    form = page.locator("#variable-form")
    form.locator("input[name=name]").fill(name)
    form.locator("textarea[name=value]").fill(value)
    form.locator("button[type=submit]").click()
    expect(page.locator("body")).to_contain_text(
        f"Saved {name}. It reaches the containers with the next deploy."
    )


def test_a_variable_changed_on_the_page_is_applied_with_one_click_without_a_failed_request(
    page: Any,
    site: str,
    haproxy: Edge,  # noqa: F811
    worker: Worker,
    cleanup: list[Environment],
    team: Team,
    console_errors: list[str],
) -> None:
    # Two public Python replicas, deployed by the worker while the page follows it.
    env = create(
        organization=team.org, actor=team.developer, name="Greeter", region="eu-central", components=PYTHON
    )
    cleanup.append(env)
    sign_in_as(page, site, team.developer)
    page.goto(f"{site}/environments/{env.pk}/")
    settle(page, env, worker)
    expect(page.locator("#env-status")).to_contain_text("Running")

    # GREETING=hello, then the app uploaded on the page: the deploy applies the variable too.
    save_variable(page, "GREETING", "hello")
    expect(page.locator("#variables-pending")).to_contain_text("the containers still run with the old values")
    page.set_input_files(
        "#upload-form input[type=file]",
        files=[
            {"name": "app.zip", "mimeType": "application/zip", "buffer": zip_archive({"app.py": APP}).read()}
        ],
    )
    page.click("#upload-form button[type=submit]")
    expect(page.locator("body")).to_contain_text("Uploaded; deploying the new content.")
    settle(page, env, worker)
    expect(page.locator("#variables-pending")).to_have_count(0)
    env.refresh_from_db()
    assert get(haproxy, env).text.startswith("greeting hello from ")

    # The change: saved, marked pending, with the button that applies it.
    save_variable(page, "GREETING", "bonjour")
    expect(page.locator("#variables-table")).to_contain_text("bonjour")
    pending = page.locator("#variables-pending")
    expect(pending).to_contain_text("Variables changed since the last deploy")
    assert lifecycle.pending_variables(env)
    assert get(haproxy, env).text.startswith("greeting hello from ")  # not applied yet

    # One click applies it while the probe sends requests; the page follows the operation.
    probe = KeepAliveLoad(haproxy, env)  # type: ignore[arg-type]
    posts = KeepAliveLoad(haproxy, env, method="POST")  # type: ignore[arg-type]
    with probe, posts:
        started = time.monotonic()
        before = env.operations.order_by("-id").first()
        pending.get_by_role("button", name="Redeploy to apply").click()
        expect(page.locator("body")).to_contain_text("Redeploying: the containers get the changed variables.")
        op = env.operations.order_by("-id").first()
        assert op is not None and op != before and op.params.get("reason") == "redeploy"
        expect(page.locator(f"#operation-{op.pk} progress")).to_be_visible()
        op = settle(page, env, worker)  # the page polls it until it has ended, then reloads
        finished = time.monotonic()

    assert op.status == OperationStatus.SUCCEEDED
    expect(page.locator(f"#operation-{op.pk} .operation-status")).to_have_text("Succeeded")
    expect(page.locator("#variables-pending")).to_have_count(0)
    expect(page.locator("#env-status")).to_contain_text("Running")
    assert not lifecycle.pending_variables(env)

    assert probe.failures == [], (
        f"{len(probe.failures)} of {len(probe.answers) + len(probe.failures)} requests failed: "
        f"{[text for _at, text in probe.failures[:10]]}\n{op.log[-3000:]}"
    )
    assert posts.failures == [], (
        f"{len(posts.failures)} of {len(posts.answers) + len(posts.failures)} POSTs failed: "
        f"{[text for _at, text in posts.failures[:10]]}\n{op.log[-3000:]}"
    )
    assert len(posts.answers) > 50, len(posts.answers)
    earlier = [text for at, text in probe.answers if at < started]
    later = [text for at, text in probe.answers if at > finished]
    assert earlier and all(text.startswith("greeting hello ") for text in earlier), earlier[:5]
    assert later and all(text.startswith("greeting bonjour ") for text in later), later[:5]
    assert len(probe.answers) > 50, len(probe.answers)
    replicas = {text.rsplit(" ", 1)[1] for text in later}
    assert len(replicas) == 2, replicas  # both new replicas answer with the new value
    print(
        f"\n{len(probe.answers)} requests in {finished - started:.1f}s from the click "
        f"to the page showing the end (+ 3 s around it), 0 failed; after: replicas {sorted(replicas)}"
    )

    # The visitor's browser gets the new value through the edge.
    assert visit(page, env).startswith("greeting bonjour from ")
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING
    assert not worker.errors, worker.errors
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
