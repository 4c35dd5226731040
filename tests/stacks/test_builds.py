"""Dependency builds on the real engine (docs/builds.md): customer content with a lock file
gets its packages installed by a build container of its runtime image, from the real
registries (PyPI, npm), and the stack serves through the real edge.

A Flask app (upload) is built and served, rebuilt from the cache when only its code changes,
a broken requirements.txt fails the build naming pip's line while the old release keeps
serving, and a pyproject.toml without a lock is built unlocked (cached by its hash). An
Express app comes from git. A PHP app's composer.lock has no remote packages (packagist is
not reachable here): composer still runs and writes vendor/autoload.php.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from billing import metering
from projects.models import Environment, EnvironmentStatus
from stacks.models import OperationStatus
from stacks.runtime import builds, content_store, lifecycle
from stacks.runtime.operations import run_operation
from tests.stacks import test_lifecycle
from tests.stacks.conftest import Caddy
from tests.stacks.gitserver import GitServer
from tests.stacks.test_content import commit, git
from tests.stacks.test_lifecycle import deploy, get, run
from tests.stacks.test_operations import marker, zip_archive

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1800)]

stackport = test_lifecycle.stackport
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup

APPS = Path(__file__).parent / "build_apps"
PYTHON = [
    {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 1, "public": True}
]
NODE = [
    {"name": "app", "component": "nodejs", "version": "20", "size": "small", "replicas": 1, "public": True}
]
PHP = [
    {
        "name": "web",
        "component": "nginx",
        "version": "1.26",
        "size": "small",
        "replicas": 1,
        "public": True,
        "env": {"STACKPORT_FASTCGI_UPSTREAM": "php:9000"},
    },
    {"name": "php", "component": "php-fpm", "version": "8.4", "size": "small", "replicas": 1},
]
REQUIREMENTS = """\
flask==3.1.0
werkzeug==3.1.3
jinja2==3.1.5
itsdangerous==2.2.0
click==8.1.8
blinker==1.9.0
markupsafe==3.0.2
"""
FLASK_APP = """\
import flask

app = flask.Flask(__name__)


@app.get("/healthz")  # the edge's active health check wants a 2xx here
def healthz():
    return "ok"


@app.get("/")
def index():
    return f"flask {flask.__version__} MARK"
"""
PROCFILE = "web: python3 -m gunicorn --bind 0.0.0.0:$PORT --workers 1 app:app\n"
PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "shopapp"
version = "1.0"
dependencies = ["flask==3.1.0"]

[tool.setuptools]
py-modules = ["app"]
"""


@pytest.fixture(autouse=True)
def build_settings(settings: Any, tmp_path: Path) -> None:
    """A build cache of the test's own (the first build is a real one). TLS to the
    registries goes through this machine's proxy: its CA bundle is handed to the build
    container (STACKPORT_BUILD_CA_BUNDLE), as an operator behind one would."""
    settings.VAR_DIR = str(tmp_path / "var")
    bundle = os.environ.get("SSL_CERT_FILE", "")
    settings.STACKPORT_BUILD_CA_BUNDLE = bundle if bundle and Path(bundle).is_file() else ""


def names(op: Any) -> list[str]:
    return [s["name"] for s in op.steps]


def upload(team: Any, env: Environment, files: dict[str, str]) -> Any:
    return lifecycle.deploy_content(
        environment=env, actor=team.developer, archive=zip_archive(files), filename="app.zip"
    )


def test_a_flask_app_is_built_cached_and_a_broken_lock_keeps_the_old_release(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    env = deploy(team, cleanup, components=PYTHON)
    first = marker()
    files = {
        "app.py": FLASK_APP.replace("MARK", first),
        "requirements.txt": REQUIREMENTS,
        "Procfile": PROCFILE,
    }
    op = run(upload(team, env, files))
    assert builds.STEP in names(op) and names(op).index(builds.STEP) < names(op).index("Prepare the content")
    build = op.params["build"]
    assert build["tool"] == "pip" and build["cached"] is False and build["seconds"] > 0
    assert "Successfully installed" in op.log and "flask-3.1.0" in op.log, op.log[-2000:]
    response = get(stackport, env)
    assert response.status_code == 200 and response.text == f"flask 3.1.0 {first}", response.text[:300]
    env.refresh_from_db()
    assert env.current_release.build_key == build["key"]
    assert content_store.build_path(build["key"]).exists()

    # Build time is metered (an interval around it); a cache hit adds none.
    records = metering._build_records(op.started_at - timedelta(hours=1), timezone.now() + timedelta(hours=1))
    assert [r.component for r in records] == [metering.BUILDS_COMPONENT]
    assert records[0].environment_ref == env.pk and records[0].cpu_hours > 0
    assert metering.build_minutes(records) > 0

    # Only the code changed: the same lock on the same image reuses the build.
    second = marker()
    op = run(upload(team, env, {**files, "app.py": FLASK_APP.replace("MARK", second)}))
    assert op.params["build"]["cached"] is True and op.params["build"]["key"] == build["key"]
    assert "reusing the pip build" in op.log and "Collecting" not in op.log, op.log[-2000:]
    assert get(stackport, env).text == f"flask 3.1.0 {second}"
    env.refresh_from_db()
    serving = env.current_release

    # A requirement that does not exist: the build fails with pip's line, nothing switched.
    broken = {**files, "app.py": FLASK_APP.replace("MARK", marker())}
    broken["requirements.txt"] = REQUIREMENTS + "nonexistent-pkg==9\n"
    op = upload(team, env, broken)
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED, op.log
    assert "No matching distribution found for nonexistent-pkg==9" in op.error, op.error
    assert "No matching distribution found for nonexistent-pkg==9" in op.log
    steps = {s["name"]: s["status"] for s in op.steps}
    assert steps[builds.STEP] == "failed" and steps["Start the containers"] == "pending", op.steps
    assert get(stackport, env).text == f"flask 3.1.0 {second}"
    env.refresh_from_db()
    assert env.current_release == serving and env.status == EnvironmentStatus.RUNNING, env.status_detail

    # pyproject.toml without a lock: its dependencies resolved from the index now (the log says
    # it is not locked and prints the pins), the project itself not installed; cached by its hash.
    third = marker()
    project = {"app.py": FLASK_APP.replace("MARK", third), "Procfile": PROCFILE, "pyproject.toml": PYPROJECT}
    op = run(upload(team, env, project))
    assert "NOT LOCKED" in op.log and "    flask==3.1.0" in op.log.lower(), op.log[-3000:]
    assert op.params["build"]["cached"] is False and op.params["build"]["key"] != build["key"]
    installed = next(line for line in op.log.splitlines() if "Successfully installed" in line).lower()
    assert "flask-3.1.0" in installed and "shopapp" not in installed, installed
    assert get(stackport, env).text == f"flask 3.1.0 {third}"
    fourth = marker()
    op = run(upload(team, env, {**project, "app.py": FLASK_APP.replace("MARK", fourth)}))
    assert op.params["build"]["cached"] is True, op.log[-2000:]
    assert get(stackport, env).text == f"flask 3.1.0 {fourth}"


def test_an_express_app_from_git_is_built_and_served(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    tmp_path: Path,
    git_server: GitServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    mark = marker()
    server = (
        "const express = require('express');\n"
        "const app = express();\n"
        "app.get('/healthz', (req, res) => res.send('ok'));\n"
        "app.get('/', (req, res) => res.send(`express ${require('express/package.json').version} "
        f"{mark}`));\n"
        "app.listen(Number(process.env.PORT), '0.0.0.0');\n"
    )
    commit(
        repo,
        {
            "package.json": (APPS / "express" / "package.json").read_bytes(),
            "package-lock.json": (APPS / "express" / "package-lock.json").read_bytes(),
            "app.js": server.encode(),
            "Procfile": b"web: node app.js\n",
        },
        "express",
    )
    monkeypatch.setattr(settings, "STACKPORT_GIT_TRUSTED_HOSTS", [git_server.host])
    env = deploy(team, cleanup, components=NODE)
    op = run(
        lifecycle.deploy_content(
            environment=env, actor=team.developer, git_url=git_server.url("repo"), branch="main"
        )
    )
    assert names(op)[:2] == ["Fetch the repository", builds.STEP]
    assert op.params["build"]["tool"] == "npm" and op.params["build"]["cached"] is False
    response = get(stackport, env)
    assert response.status_code == 200 and response.text == f"express 4.21.2 {mark}", response.text[:300]


def test_a_php_app_with_a_local_only_composer_lock_gets_its_autoloader(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    mark = marker()
    composer = {"name": "acme/app", "type": "project", "autoload": {"psr-4": {"App\\": "src/"}}}
    lock = {
        "_readme": ["This file locks the dependencies of your project to a known state"],
        "content-hash": "0" * 32,
        "packages": [],
        "packages-dev": [],
        "aliases": [],
        "minimum-stability": "stable",
        "stability-flags": {},
        "prefer-stable": False,
        "prefer-lowest": False,
        "platform": {},
        "platform-dev": {},
        "plugin-api-version": "2.6.0",
    }
    files = {
        "composer.json": json.dumps(composer),
        "composer.lock": json.dumps(lock),
        "src/Hello.php": f"<?php\nnamespace App;\nfinal class Hello {{ public static function say(): string {{ return '{mark}'; }} }}\n",
        "index.php": "<?php\nrequire __DIR__ . '/vendor/autoload.php';\necho 'php ', \\App\\Hello::say();\n",
    }
    env = deploy(team, cleanup, components=PHP)
    op = run(upload(team, env, files))
    assert op.params["build"]["tool"] == "composer", op.log[-2000:]
    response = get(stackport, env, "/index.php")
    assert response.status_code == 200 and response.text.strip() == f"php {mark}", response.text[:300]
