"""The build step of an operation against the in-memory backend (fast): when it runs, the
cache by organization and content, a failure that leaves the running release as it was, and the failing
line picked from real package managers' output. The real builds are in test_builds."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from docker.errors import NotFound

from projects.models import Environment, EnvironmentStatus
from stacks.backends.docker import BUILD_NAME_RE, DockerBackend
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import builds, content_store, lifecycle, operations
from stacks.runtime.operations import run_operation
from stacks.runtime.spec import build_spec
from tests.conftest import Team, add_memory_host

pytestmark = pytest.mark.django_db

PYTHON = [
    {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 1, "public": True}
]


@pytest.fixture
def environment(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tmp_path: Any,
) -> Environment:
    settings.VAR_DIR = str(tmp_path)  # a content store (and build cache) of its own
    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", components=PYTHON
    )
    add_memory_host(env)
    assert run_operation(env.operations.get().pk) == OperationStatus.SUCCEEDED
    return env


def upload(team: Team, env: Environment, files: dict[str, str]) -> Any:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    buffer.seek(0)
    op = lifecycle.deploy_content(environment=env, actor=team.owner, archive=buffer, filename="app.zip")
    run_operation(op.pk)
    op.refresh_from_db()
    return op


def test_content_is_built_once_and_reused_while_it_is_unchanged(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    first = {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"}
    op = upload(team, environment, first)
    assert op.status == OperationStatus.SUCCEEDED, op.log
    steps = [s["name"] for s in op.steps]
    assert steps.index(builds.STEP) == steps.index("Prepare the content") - 1
    assert op.params["build"]["cached"] is False and op.params["build"]["tool"] == "pip"
    assert len(memory_backend.calls("build")) == 1
    environment.refresh_from_db()
    release = environment.current_release
    assert release.build_key == op.params["build"]["key"]
    # The content volume holds content and dependencies: named by both.
    assert release.content_id != release.content_sha256[:24]

    key = op.params["build"]["key"]

    op = upload(team, environment, first)  # the same app again: the same content
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert op.params["build"]["cached"] is True and "reusing the pip build" in op.log
    assert op.params["build"]["key"] == key
    assert len(memory_backend.calls("build")) == 1  # nothing ran

    # A code-only change reuses the build; a changed lock builds again.
    op = upload(team, environment, {"app.py": "v2", "requirements.txt": "flask==3.1.0\n"})
    assert op.params["build"]["cached"] is True and len(memory_backend.calls("build")) == 1
    op = upload(team, environment, {"app.py": "v3", "requirements.txt": "flask==3.1.1\n"})
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 2


def test_a_lock_that_reads_the_content_builds_again_when_the_content_changes(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    lock = "-e .\nflask==3.1.0\n"
    op = upload(team, environment, {"app.py": "v1", "requirements.txt": lock})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    op = upload(team, environment, {"app.py": "v2", "requirements.txt": lock})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 2


def test_a_change_to_an_included_requirements_file_builds_again(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    lock = "-r requirements/base.txt\n"
    op = upload(team, environment, {"requirements.txt": lock, "requirements/base.txt": "flask==3.1.0\n"})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    op = upload(team, environment, {"requirements.txt": lock, "requirements/base.txt": "flask==3.1.1\n"})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 2


def test_another_organization_never_reuses_an_artifact(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    files = {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"}
    mine = upload(team, environment, files)
    other = lifecycle.create_project(
        organization=team.outsider_org,
        actor=team.outsider,
        name="Shop",
        region="eu-central",
        components=PYTHON,
    )
    add_memory_host(other, "h2")
    assert run_operation(other.operations.get().pk) == OperationStatus.SUCCEEDED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    buffer.seek(0)
    op = lifecycle.deploy_content(environment=other, actor=team.outsider, archive=buffer, filename="app.zip")
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, op.log
    other.refresh_from_db()
    environment.refresh_from_db()
    assert other.current_release.content_sha256 == environment.current_release.content_sha256
    assert op.params["build"]["cached"] is False and op.params["build"]["key"] != mine.params["build"]["key"]
    assert len(memory_backend.calls("build")) == 2


def test_builds_of_one_key_get_names_of_their_own(team: Team, environment: Environment) -> None:
    upload(team, environment, {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"})
    environment.refresh_from_db()
    release = environment.current_release
    spec = build_spec(environment, release, running=True)
    found = builds.plan(release, spec, lambda text: None)
    assert found is not None
    names = {builds.job_for(found).name for _ in range(3)}
    assert len(names) == 3 and all(name.startswith(found.key[:24]) for name in names)
    assert all(BUILD_NAME_RE.fullmatch(name) for name in names)


def test_an_artifact_over_the_limit_fails_the_build(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend], settings: Any
) -> None:
    settings.STACKPORT_BUILD_MAX_BYTES = 100  # the memory backend's artifact is a 10 KiB tar
    op = upload(team, environment, {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"})
    assert op.status == OperationStatus.FAILED
    assert op.error.startswith("The built dependencies exceed 100 bytes"), op.error
    assert not list(content_store.build_path("0" * 64).parent.iterdir())  # nothing kept, no partial file


def test_content_without_a_lock_builds_nothing(team: Team, environment: Environment) -> None:
    op = upload(team, environment, {"app.py": "v1"})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert "no requirements.txt: no dependencies to install" in op.log and "build" not in op.params
    environment.refresh_from_db()
    assert environment.current_release.build_key == ""


def test_a_failed_build_names_the_line_and_leaves_the_running_release(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    good = upload(team, environment, {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"})
    environment.refresh_from_db()
    serving, applies = environment.current_release, len(memory_backend.calls("apply"))
    op = upload(team, environment, {"app.py": "v2", "requirements.txt": "flask\nnonexistent-pkg==9\n"})
    assert op.status == OperationStatus.FAILED
    assert op.error.startswith("The dependency build failed (pip exited with 1): ")
    assert "No matching distribution found for nonexistent-pkg==9" in op.error
    assert len(memory_backend.calls("apply")) == applies  # nothing was switched
    environment.refresh_from_db()
    assert environment.current_release == serving and good.release_id == serving.pk
    assert environment.status == EnvironmentStatus.RUNNING


PIP_OUTPUT = """\
Collecting flask==3.1.0
  Using cached flask-3.1.0-py3-none-any.whl (102 kB)
ERROR: Could not find a version that satisfies the requirement nonexistent-pkg==9 (from versions: none)
ERROR: No matching distribution found for nonexistent-pkg==9
"""
NPM_OUTPUT = """\
npm ERR! code E404
npm ERR! 404 Not Found - GET https://registry.npmjs.org/nonexistent-pkg - Not found
npm ERR! 404
npm ERR! A complete log of this run can be found in: /tmp/.npm/_logs/x.log
"""
COMPOSER_OUTPUT = """\
Installing dependencies from lock file
Your lock file does not contain a compatible set of packages. Please run composer update.

  Problem 1
    - acme/missing is locked to version 1.0.0 and an update of this package was not requested.
"""


@pytest.mark.parametrize(
    ("tool", "output", "line"),
    [
        ("pip", PIP_OUTPUT, "ERROR: No matching distribution found for nonexistent-pkg==9"),
        (
            "npm",
            NPM_OUTPUT,
            "npm ERR! 404 Not Found - GET https://registry.npmjs.org/nonexistent-pkg - Not found",
        ),
        (
            "composer",
            COMPOSER_OUTPUT,
            "- acme/missing is locked to version 1.0.0 and an update of this package was not requested.",
        ),
        ("other", "a\nlast words\n\n", "last words"),
    ],
)
def test_the_failing_line_is_picked_from_the_output(tool: str, output: str, line: str) -> None:
    assert builds.failing_line(tool, output.splitlines()) == line


def test_pruning_keeps_the_artifacts_of_kept_content_only(
    team: Team, environment: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = upload(team, environment, {"app.py": "v1", "requirements.txt": "flask==3.1.0\n"})
    kept = content_store.build_path(op.params["build"]["key"])
    stray = content_store.build_path("f" * 64)
    stray.write_bytes(b"")
    monkeypatch.setattr(content_store, "FRESH_SECONDS", -1)
    content_store.prune()
    assert kept.exists() and not stray.exists()


class _Thing:
    """A container or volume of a fake engine: its name, creation time, and whether removed."""

    def __init__(self, engine: _Engine, name: str, created: str) -> None:
        self.engine, self.name = engine, name
        self.attrs = {"Created": created, "CreatedAt": created}

    def remove(self, force: bool = False) -> None:
        self.engine.removed.append(self.name)


class _Engine:
    def __init__(self, things: dict[str, str]) -> None:
        self.removed: list[str] = []
        self.things = [_Thing(self, name, created) for name, created in things.items()]
        self.containers = self.volumes = self.networks = self

    def list(self, **options: Any) -> list[_Thing]:
        return self.things

    def get(self, name: str) -> _Thing:
        found = next((t for t in self.things if t.name == name), None)
        if found is None:
            raise NotFound(name)
        return found


def test_only_build_leftovers_older_than_the_timeout_are_removed() -> None:
    """Two builds of one key run side by side: a build removes only what a killed worker left
    (older than the timeout: its container, proxy, network and volume), never a build that may
    still run."""
    old = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    young = (timezone.now() - timedelta(minutes=5)).isoformat()
    engine = _Engine(
        {
            "sp-build-aaaa-1111": old,
            "sp-build-aaaa-1111-proxy": old,
            "sp-build-aaaa-2222": young,
            "sp-build-aaaa-2222-proxy": young,
            "sp-other": old,
        }
    )
    DockerBackend.__new__(DockerBackend)._remove_stale_builds(engine, 900)  # type: ignore[arg-type]
    assert set(engine.removed) == {"sp-build-aaaa-1111", "sp-build-aaaa-1111-proxy"}
