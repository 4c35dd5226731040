"""A customer's project, end to end in Chromium on the real engine: sign up, create a
project from the WordPress stack, watch it deploy, open it through the edge, add a domain,
scale, upgrade PHP, roll back, destroy.

Operations run for real: the queued task is handed to a worker thread of this test, which
runs ``stacks.runtime.operations.run_operation`` as the Celery worker would (the broker path has
its own test, tests/portal/test_celery.py)."""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from projects.models import Environment, EnvironmentStatus
from stacks.models import ComponentVersion, Operation, OperationStatus, VersionStatus
from stacks.runtime.hosts import ensure_local_hosts
from tests.browser.test_onboarding import _sign_up
from tests.stacks.conftest import (  # noqa: F401 - fixtures
    catalog,
    fetch,
    haproxy,
    published_catalog,
    use_haproxy,
    wait_until,
)
from tests.stacks.test_haproxy_edge import Edge

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(1800)]
OPERATION_SECONDS = 420_000  # Playwright counts milliseconds


class Worker:
    """Runs what the portal queues, in order, in a thread with its own connection."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from stacks.runtime.operations import run_operation, sync_routes_for

        try:
            while (job := self.jobs.get()) is not None:
                kind, pk = job
                try:
                    run_operation(pk) if kind == "operation" else sync_routes_for(pk)
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(f"{kind} {pk}: {exc!r}")
        finally:
            connection.close()


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    from stacks.tasks import run_operation_task, sync_routes_task

    w = Worker()
    monkeypatch.setattr(run_operation_task, "delay", lambda pk: w.jobs.put(("operation", pk)))
    monkeypatch.setattr(sync_routes_task, "delay", lambda pk: w.jobs.put(("routes", pk)))
    w.thread.start()
    yield w
    w.jobs.put(None)
    w.thread.join(600)


@pytest.fixture
def site(live_server: Any, settings: Any, haproxy: Edge, catalog: None) -> str:  # noqa: F811
    settings.STACKPORT_BASE_URL = live_server.url
    settings.CELERY_TASK_ALWAYS_EAGER = True  # e-mail; operations go to the worker thread
    use_haproxy(settings, haproxy)  # the product's edge router, as `make run` runs it
    ensure_local_hosts("unix:///var/run/docker.sock")
    return str(live_server.url)


@pytest.fixture
def cleanup() -> Iterator[list[Environment]]:
    made: list[Environment] = []
    yield made
    from stacks.runtime.operations import backend_for

    for env in made:
        env.refresh_from_db()
        try:
            backend_for(env).destroy(env.key, env.backend_state)
        except Exception as exc:  # noqa: BLE001 - best effort
            print(f"cleanup of {env.key} failed: {exc}")


def through_edge(edge: Edge, host: str, path: str = "/") -> Any:
    return fetch("GET", f"{edge.edge_url}{path}", headers={"Host": host}, allow_redirects=False)


def settle(page: Any, environment: Environment, worker: Worker) -> Operation:
    """Wait for the environment's newest operation to succeed, as the page shows it."""
    op = environment.operations.order_by("-id").first()
    assert op is not None
    selector = f"#operation-{op.pk}[data-status=succeeded]"
    try:
        page.wait_for_selector(selector, timeout=OPERATION_SECONDS)
    except PlaywrightTimeout:
        op.refresh_from_db()
        raise AssertionError(
            f"{op.kind} #{op.pk} is {op.status}: {op.error}\n{op.log}\n{worker.errors}"
        ) from None
    op.refresh_from_db()
    return op


@pytest.fixture
def dns_server(tmp_path: Any, settings: Any) -> Iterator[Any]:
    from tests.stacks.test_domains import DnsServer

    server = DnsServer(tmp_path)
    settings.STACKPORT_DNS_RESOLVERS = [f"127.0.0.1:{server.port}"]
    try:
        yield server
    finally:
        server.stop()


def test_a_wordpress_project_from_sign_up_to_destroy(
    page: Any,
    site: str,
    haproxy: Edge,  # noqa: F811
    worker: Worker,
    cleanup: list[Environment],
    mailoutbox: list[Any],
    console_errors: list[str],
    dns_server: Any,
) -> None:
    from stacks.catalog.samples import sample_archive

    sample_archive("wordpress")  # built once (cached on disk), not inside the first request
    # The hoster offers PHP 8.2 today; 8.4 comes later (and is then an upgrade).
    ComponentVersion.objects.filter(component__code="php-fpm", version="8.2").update(
        status=VersionStatus.CURRENT
    )
    ComponentVersion.objects.filter(component__code="php-fpm", version="8.4").update(
        status=VersionStatus.VERIFIED
    )
    run = uuid.uuid4().hex[:8]
    name = f"Blog <{run}> & 'friends'"

    # 1. Sign up; the catalog's WordPress card leads into the wizard.
    _sign_up(page, site, f"carol-{run}@example.test", mailoutbox)
    page.goto(f"{site}/catalog/")
    page.locator(".card", has_text="WordPress").get_by_role("link", name="Use this stack").click()
    page.wait_for_url(re.compile(r".*/projects/new/\?template=wordpress"))
    assert page.locator("#template-wordpress").is_checked()
    assert page.locator("#create").is_disabled()
    page.fill("#id_name", name)
    page.click("button[value=preview]")  # htmx swaps the wizard in place
    page.wait_for_selector("#price")
    assert "EUR" in page.inner_text("#summary") or "a month" in page.inner_text("#summary")
    assert page.locator("#create").is_enabled()
    page.click("#create")

    # 2. The environment page follows the deploy until it runs.
    page.wait_for_url(re.compile(r".*/environments/\d+/"))
    environment = Environment.objects.get(project__name=name)
    cleanup.append(environment)
    assert page.locator("progress").count() >= 1
    settle(page, environment, worker)
    page.wait_for_selector("#env-status:has-text('Running')", timeout=OPERATION_SECONDS)
    assert (
        page.locator(f"#operation-{environment.operations.get().pk} progress").get_attribute("value") == "100"
    )
    environment.refresh_from_db()
    assert environment.status == EnvironmentStatus.RUNNING
    assert "&lt;" not in page.inner_text("h1") and name in page.inner_text("h1")

    # 3. The site answers through the edge, in the browser too.
    response = through_edge(haproxy, environment.hostname, "/wp-admin/install.php")
    assert response.status_code == 200 and "WordPress" in response.text
    browsed = page.context.new_page()
    browsed.goto(f"{environment.public_url}/wp-admin/install.php")
    assert "WordPress" in browsed.content()
    browsed.close()

    # 4. A domain of their own: pending with the TXT record to create until the DNS server
    # (dnsmasq on loopback) serves it, then verified and routed.
    domain = f"blog-{run}.example.test"
    page.fill("#id_hostname", domain)
    page.click("#domain-form button[type=submit]")
    page.wait_for_selector(f"text=Added {domain}")
    record = page.locator(".domain-record")
    expect(record).to_contain_text(f"_stackport-challenge.{domain}")
    token = record.locator("code").nth(2).inner_text()
    assert through_edge(haproxy, domain, "/wp-admin/install.php").status_code == 404  # pending: not routed
    dns_server.start({f"_stackport-challenge.{domain}": token})
    page.click(f"button[aria-label='Check {domain} now']")
    page.wait_for_selector(f"text={domain} is verified")
    wait_until(
        lambda: through_edge(haproxy, domain, "/wp-admin/install.php").status_code == 200,
        60,
        "the domain's route",
    )

    # 5. Two replicas of the web server.
    page.click("button[aria-label='One replica more of web']")
    settle(page, environment, worker)
    assert page.inner_text("#replicas-web") == "2"
    assert environment.components.get(name="web").replicas == 2

    # 6. The hoster publishes PHP 8.4: one click upgrades.
    ComponentVersion.objects.filter(component__code="php-fpm", version="8.4").update(
        status=VersionStatus.CURRENT
    )
    page.reload()
    assert page.locator("#component-php").get_by_text("upgrade available: 8.4").is_visible()
    page.locator("#component-php").get_by_role("button", name="Upgrade to 8.4").click()
    settle(page, environment, worker)
    assert environment.components.get(name="php").version.version == "8.4"
    assert through_edge(haproxy, environment.hostname, "/wp-admin/install.php").status_code == 200

    # 7. Roll back to the release before the upgrade (PHP 8.2, two web replicas).
    before_upgrade = environment.releases.get(note="scale web").number
    page.get_by_role("button", name=f"Roll back to {before_upgrade}").click()
    expect(page.locator("#confirm")).to_contain_text(f"Roll back to release {before_upgrade}?")
    page.get_by_role("button", name="Yes, go ahead").click()
    settle(page, environment, worker)
    environment.refresh_from_db()
    assert environment.current_release.number == before_upgrade
    assert environment.components.get(name="php").version.version == "8.2"
    assert through_edge(haproxy, environment.hostname, "/wp-admin/install.php").status_code == 200

    # 8. Destroy, after typing the project's name.
    page.fill("#id_confirmation", "not the name")
    page.click("#destroy-form button[type=submit]")
    assert page.get_by_text("Type the project's name exactly to confirm.").is_visible()
    page.fill("#id_confirmation", name)
    page.click("#destroy-form button[type=submit]")
    settle(page, environment, worker)
    page.wait_for_selector("#env-status:has-text('Destroyed')", timeout=60_000)
    environment.refresh_from_db()
    assert environment.status == EnvironmentStatus.DESTROYED
    assert through_edge(haproxy, environment.hostname).status_code == 404

    assert not worker.errors, worker.errors
    assert not [e for e in console_errors if "Content Security Policy" in e or "Refused" in e], console_errors
    assert not Operation.objects.filter(environment=environment, status=OperationStatus.FAILED).exists()
