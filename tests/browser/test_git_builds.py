"""Dependency builds from git, as a customer does them in Chromium on the real engine
(issue 16; docs/builds.md): a project assembled in the wizard (one public Python component)
is deployed from a repository of the test's own git server with the environment page's
"Deploy from git" form; the operation page follows the build, and the site answers through
the edge with Flask's own version (the package is installed). A commit with a requirement that
does not exist fails the build: the operation page shows pip's line, and the old release keeps
serving. A Node.js project from the catalog's card gets an Express app the same way
(package-lock.json -> npm ci).

Operations run for real in the worker thread of tests/browser/test_portal.py; packages come
from the real registries (through this machine's proxy, as tests/stacks/test_builds.py does).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from projects.models import Environment, EnvironmentStatus
from stacks.models import Operation, OperationStatus
from tests.browser.test_onboarding import _sign_up
from tests.browser.test_portal import OPERATION_SECONDS, Worker, cleanup, settle, site, worker
from tests.stacks.conftest import (  # noqa: F401 - fixtures
    catalog,
    git_server,
    haproxy,
    published_catalog,
)
from tests.stacks.gitserver import GitServer
from tests.stacks.test_builds import APPS, FLASK_APP, PROCFILE, REQUIREMENTS
from tests.stacks.test_content import commit, git
from tests.stacks.test_haproxy_edge import Edge

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(2400)]
__all__ = ["cleanup", "site", "worker"]  # fixtures, from test_portal

EXPRESS_APP = """\
const express = require('express');
const app = express();
app.get('/healthz', (req, res) => res.send('ok'));
app.get('/', (req, res) => res.send(`express ${require('express/package.json').version} MARK`));
app.listen(Number(process.env.PORT), '0.0.0.0');
"""


@pytest.fixture
def builds(settings: Any, tmp_path: Path, git_server: GitServer) -> GitServer:  # noqa: F811
    """A build cache of the test's own (every build is real), the proxy's CA bundle for the
    build container, and the test's git server trusted (loopback is refused otherwise)."""
    settings.VAR_DIR = str(tmp_path / "var")
    bundle = os.environ.get("SSL_CERT_FILE", "")
    settings.STACKPORT_BUILD_CA_BUNDLE = bundle if bundle and Path(bundle).is_file() else ""
    settings.STACKPORT_GIT_TRUSTED_HOSTS = [git_server.host]
    return git_server


def repository(server: GitServer, name: str) -> Path:
    repo = server.root / name
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


def deploy_from_git(page: Any, url: str, environment: Environment, worker: Worker) -> Operation:
    """Submit the environment page's git form, open the operation it started and wait there
    until it has ended (the page polls it); the operation, as the database has it."""
    before = environment.operations.order_by("-id").first()
    page.fill("#git-form input[name=git_url]", url)
    page.fill("#git-form input[name=branch]", "main")
    page.click("#git-form button[type=submit]")
    expect(page.locator("body")).to_contain_text("Deploying branch main.")
    op = environment.operations.order_by("-id").first()
    assert op is not None and op != before
    page.click(f"#operation-{op.pk} h2 a")
    page.wait_for_url(re.compile(rf".*/operations/{op.pk}/"))
    page.wait_for_selector(
        f"#operation-{op.pk}[data-status=succeeded], #operation-{op.pk}[data-status=failed]",
        timeout=OPERATION_SECONDS,
    )
    op.refresh_from_db()
    assert not worker.errors, worker.errors
    return op


def visit(page: Any, environment: Environment) -> str:
    """The site's page as a visitor's browser gets it through the edge (*.apps.localhost is
    loopback to Chromium; the edge's port is the public port)."""
    visitor = page.context.new_page()
    try:
        response = visitor.goto(environment.public_url + "/")
        assert response is not None and response.status == 200, response and response.status
        return str(visitor.locator("body").inner_text()).strip()
    finally:
        visitor.close()


def test_flask_and_express_apps_from_git_are_built_and_a_broken_lock_keeps_the_old_release(
    page: Any,
    site: str,
    haproxy: Edge,  # noqa: F811
    worker: Worker,
    cleanup: list[Environment],
    mailoutbox: list[Any],
    builds: GitServer,
) -> None:
    run = uuid.uuid4().hex[:8]
    _sign_up(page, site, f"dana-{run}@example.test", mailoutbox)

    # 1. Assemble a stack of one public Python component in the wizard.
    page.goto(f"{site}/projects/new/")
    page.fill("#id_name", f"Flask {run}")
    page.click("input[name=mode][value=assemble]")  # htmx swaps the wizard in place
    page.wait_for_selector("#id_c-0-component")
    page.select_option("#id_c-0-component", "python")
    expect(page.locator("#id_c-0-version")).to_have_value("3.13")  # swapped: Python's versions
    if not page.locator("#id_c-0-public").is_checked():
        page.click("#id_c-0-public")
    expect(page.locator("#id_c-0-public")).to_be_checked()
    page.click("button[value=preview]")
    page.wait_for_selector("#summary-rows")
    expect(page.locator("#summary-rows")).to_contain_text("python 3.13")
    page.click("#create")
    page.wait_for_url(re.compile(r".*/environments/\d+/"))
    flask_env = Environment.objects.get(project__name=f"Flask {run}")
    cleanup.append(flask_env)
    settle(page, flask_env, worker)
    page.wait_for_selector("#env-status:has-text('Running')", timeout=OPERATION_SECONDS)
    environment_url = page.url

    # 2. Deploy a Flask app with its requirements.txt from git: built, then served.
    flask_repo = repository(builds, "flask-app")
    first = f"first-{run}"
    commit(
        flask_repo,
        {
            "app.py": FLASK_APP.replace("MARK", first).encode(),
            "requirements.txt": REQUIREMENTS.encode(),
            "Procfile": PROCFILE.encode(),
        },
        "flask",
    )
    op = deploy_from_git(page, builds.url("flask-app"), flask_env, worker)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log[-3000:]}"
    card = page.locator(f"#operation-{op.pk}")
    expect(card.locator(".operation-status")).to_have_text("Succeeded")
    expect(card.locator(".steps")).to_contain_text("Build the dependencies (done)")
    log = card.locator("details pre")
    expect(log).to_contain_text("installing requirements.txt with pip")
    expect(log).to_contain_text("Successfully installed")
    expect(log).to_contain_text("flask-3.1.0")
    assert visit(page, flask_env) == f"flask 3.1.0 {first}"

    # 3. A requirement that does not exist: the build fails with pip's line on the operation
    # page, nothing is switched and the first release keeps serving.
    commit(
        flask_repo,
        {
            "app.py": FLASK_APP.replace("MARK", f"broken-{run}").encode(),
            "requirements.txt": (REQUIREMENTS + "nonexistent-pkg==9\n").encode(),
        },
        "broken",
    )
    page.goto(environment_url)
    op = deploy_from_git(page, builds.url("flask-app"), flask_env, worker)
    assert op.status == OperationStatus.FAILED, op.log[-3000:]
    card = page.locator(f"#operation-{op.pk}")
    expect(card.locator(".operation-status")).to_have_text("Failed")
    expect(card.locator(".alert-danger")).to_contain_text(
        "The dependency build failed (pip exited with 1): "
        "ERROR: No matching distribution found for nonexistent-pkg==9"
    )
    expect(card.locator(".steps")).to_contain_text("Build the dependencies (failed)")
    expect(card.locator(".steps")).to_contain_text("Start the containers (pending)")
    expect(card.locator("details[open] pre")).to_contain_text(
        "No matching distribution found for nonexistent-pkg==9"
    )
    assert visit(page, flask_env) == f"flask 3.1.0 {first}"
    page.goto(environment_url)
    expect(page.locator("#env-status")).to_contain_text("Running")
    flask_env.refresh_from_db()
    assert flask_env.status == EnvironmentStatus.RUNNING

    # 4. A Node.js project from the catalog's card; an Express app with its package-lock.json
    # from git: npm ci, then served.
    page.goto(f"{site}/catalog/")
    page.locator(".card", has_text="Node.js app").get_by_role("link", name="Use this stack").click()
    page.wait_for_url(re.compile(r".*/projects/new/\?template=nodejs"))
    page.fill("#id_name", f"Express {run}")
    page.click("button[value=preview]")
    page.wait_for_selector("#price")
    page.click("#create")
    page.wait_for_url(re.compile(r".*/environments/\d+/"))
    node_env = Environment.objects.get(project__name=f"Express {run}")
    cleanup.append(node_env)
    settle(page, node_env, worker)
    page.wait_for_selector("#env-status:has-text('Running')", timeout=OPERATION_SECONDS)
    express_repo = repository(builds, "express-app")
    mark = f"express-{run}"
    commit(
        express_repo,
        {
            "package.json": (APPS / "express" / "package.json").read_bytes(),
            "package-lock.json": (APPS / "express" / "package-lock.json").read_bytes(),
            "app.js": EXPRESS_APP.replace("MARK", mark).encode(),
            "Procfile": b"web: node app.js\n",
        },
        "express",
    )
    op = deploy_from_git(page, builds.url("express-app"), node_env, worker)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log[-3000:]}"
    card = page.locator(f"#operation-{op.pk}")
    expect(card.locator(".steps")).to_contain_text("Build the dependencies (done)")
    expect(card.locator("details pre")).to_contain_text("installing package-lock.json with npm")
    assert op.params["build"]["tool"] == "npm" and op.params["build"]["cached"] is False
    assert visit(page, node_env) == f"express 4.21.2 {mark}"
