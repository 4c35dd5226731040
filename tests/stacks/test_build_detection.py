"""Which Python lock a build uses (fast, the in-memory backend; docs/builds.md): requirements.txt,
else requirements.lock, else pyproject.toml alone (not locked, cached by its hash); pylock.toml
is refused with what to do. The real builds are in test_builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from projects.models import Environment
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import builds
from stacks.runtime.spec import build_spec
from tests.conftest import Team
from tests.stacks.test_build_steps import environment, upload

pytestmark = pytest.mark.django_db
__all__ = ["environment"]  # the fixture, from test_build_steps

PYPROJECT = """\
[project]
name = "shop"
version = "1.0"
dependencies = ["flask>=3"]
"""
LOCK = "flask==3.1.0\nwerkzeug==3.1.3\n"


def planned(env: Environment) -> tuple[builds.Plan, dict[str, str], list[str]]:
    """The plan of the environment's running release, its build job's environment, its log."""
    env.refresh_from_db()
    release = env.current_release
    lines: list[str] = []
    found = builds.plan(release, build_spec(env, release, running=True), lines.append)
    assert found is not None, lines
    return found, dict(builds.job_for(found).env), lines


@pytest.mark.parametrize(
    ("files", "lock"),
    [
        ({"requirements.txt": LOCK}, "requirements.txt"),
        (
            {"requirements.txt": LOCK, "requirements.lock": LOCK, "pyproject.toml": PYPROJECT},
            "requirements.txt",
        ),
        ({"requirements.lock": LOCK, "pyproject.toml": PYPROJECT}, "requirements.lock"),
        ({"requirements.lock": LOCK, "pyproject.toml": PYPROJECT, "pylock.toml": "x"}, "requirements.lock"),
        ({"requirements.lock": LOCK}, "requirements.lock"),
    ],
)
def test_a_lock_file_is_installed_with_pip_install_r(
    team: Team, environment: Environment, files: dict[str, str], lock: str
) -> None:
    op = upload(team, environment, {"app.py": "v1", **files})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert f"installing {lock} with pip" in op.log and "NOT LOCKED" not in op.log
    found, env, _ = planned(environment)
    assert (found.lock_name, found.locked, found.script) == (lock, True, builds.PIP_SCRIPT)
    assert env["STACKPORT_LOCK"] == lock and '-r "$STACKPORT_LOCK"' in found.script


def test_pyproject_alone_is_built_unlocked_and_cached_by_its_hash(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    op = upload(team, environment, {"app.py": "v1", "pyproject.toml": PYPROJECT})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert "pyproject.toml without a lock (requirements.txt or requirements.lock): NOT LOCKED" in op.log
    assert "cached by the hash of pyproject.toml" in op.log
    assert "installing the dependencies of pyproject.toml (not locked) with pip" in op.log
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 1
    found, _, lines = planned(environment)
    assert found.locked is False and found.script == builds.PIP_PROJECT_SCRIPT
    assert any("NOT LOCKED" in line for line in lines)
    key = found.key

    # Code only: the same build (the project itself is not in the artifact).
    op = upload(team, environment, {"app.py": "v2", "pyproject.toml": PYPROJECT})
    assert op.params["build"] == {**op.params["build"], "cached": True, "key": key}, op.log
    assert len(memory_backend.calls("build")) == 1

    # Another pyproject.toml: built again.
    op = upload(team, environment, {"app.py": "v2", "pyproject.toml": PYPROJECT.replace(">=3", ">=3.1")})
    assert op.params["build"]["cached"] is False and op.params["build"]["key"] != key
    assert len(memory_backend.calls("build")) == 2

    # A lock next to it: locked from now on, another key.
    op = upload(team, environment, {"app.py": "v2", "pyproject.toml": PYPROJECT, "requirements.lock": LOCK})
    assert op.params["build"]["cached"] is False and "NOT LOCKED" not in op.log
    assert len(memory_backend.calls("build")) == 3


def test_a_changed_requirements_lock_builds_again(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    files = {"app.py": "v1", "pyproject.toml": PYPROJECT, "requirements.lock": LOCK}
    first = upload(team, environment, files)
    again = upload(team, environment, {**files, "app.py": "v2"})
    assert again.params["build"]["cached"] is True
    changed = upload(team, environment, {**files, "requirements.lock": LOCK.replace("3.1.0", "3.1.1")})
    assert changed.params["build"]["cached"] is False
    assert changed.params["build"]["key"] != first.params["build"]["key"]
    assert len(memory_backend.calls("build")) == 2


def test_a_local_path_in_pyproject_makes_the_content_count(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    pyproject = PYPROJECT.replace('"flask>=3"', '"flask>=3", "lib @ file:///srv/app/lib"')
    upload(team, environment, {"app.py": "v1", "pyproject.toml": pyproject})
    op = upload(team, environment, {"app.py": "v2", "pyproject.toml": pyproject})
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 2


def test_pylock_toml_without_an_exported_lock_fails_saying_what_to_do(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    op = upload(
        team,
        environment,
        {"app.py": "v1", "pyproject.toml": PYPROJECT, "pylock.toml": "lock-version = '1.0'"},
    )
    assert op.status == OperationStatus.FAILED
    assert op.error.startswith("pylock.toml is not read by the pip of Python's images"), op.error
    assert "requirements.lock" in op.error
    assert memory_backend.calls("build") == []


@pytest.mark.parametrize(
    ("pyproject", "why"),
    [
        ("[tool.ruff]\nline-length = 100\n", "has no [project] table (PEP 621)"),
        ('[tool.poetry.dependencies]\nflask = "^3"\n', "has no [project] table (PEP 621)"),
        ('[project]\nname = "x"\nversion = "1"\n', "declares no dependencies in [project]"),
        ("[project\n", "is not valid TOML"),
    ],
)
def test_a_pyproject_without_project_dependencies_builds_nothing(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend], pyproject: str, why: str
) -> None:
    op = upload(team, environment, {"app.py": "v1", "pyproject.toml": pyproject})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert f"pyproject.toml {why}" in op.log and "no dependencies to install" in op.log
    assert "build" not in op.params and memory_backend.calls("build") == []


def test_dynamic_dependencies_are_resolved_by_pip_and_the_content_counts(
    team: Team, environment: Environment, memory_backend: type[MemoryBackend]
) -> None:
    dynamic = '[project]\nname = "x"\nversion = "1"\ndynamic = ["dependencies"]\n'
    assert builds.project_without_dependencies(dynamic.encode()) == ""
    assert builds.dynamic_dependencies(dynamic.encode()) and not builds.dynamic_dependencies(
        PYPROJECT.encode()
    )
    # The build backend reads the project (e.g. a requirements file it names): a code change builds again.
    upload(team, environment, {"app.py": "v1", "pyproject.toml": dynamic, "deps.in": "flask\n"})
    op = upload(team, environment, {"app.py": "v1", "pyproject.toml": dynamic, "deps.in": "flask<4\n"})
    assert op.params["build"]["cached"] is False and len(memory_backend.calls("build")) == 2


def test_no_lock_and_no_pyproject_installs_nothing(team: Team, environment: Environment) -> None:
    op = upload(team, environment, {"app.py": "v1", "setup.cfg": "[metadata]\nname = x\n"})
    assert op.status == OperationStatus.SUCCEEDED, op.log
    assert "no requirements.txt: no dependencies to install" in op.log and "build" not in op.params


def report_reader(tmp_path: Path) -> str:
    """The Python part of the unlocked script, reading a report of our own."""
    script = builds.PIP_PROJECT_SCRIPT
    body = script.split("<<'PY' > /tmp/pip-resolved.txt\n", 1)[1].split("\nPY\n", 1)[0]
    return body.replace("/tmp/pip-report.json", str(tmp_path / "report.json"))


def test_the_unlocked_script_pins_what_pip_resolved_but_not_the_project(tmp_path: Path) -> None:
    def item(name: str, version: str, info: dict[str, Any], direct: bool = False) -> dict[str, Any]:
        return {"metadata": {"name": name, "version": version}, "download_info": info, "is_direct": direct}

    report = {
        "version": "1",
        "install": [
            item("shop", "1.0", {"url": "file:///build/app", "dir_info": {}}, direct=True),
            item("flask", "3.1.0", {"url": "https://files.example/flask.whl", "archive_info": {}}),
            item("Werkzeug", "3.1.3", {"url": "https://files.example/w.whl", "archive_info": {}}),
            item(
                "tool",
                "2.0",
                {"url": "https://files.example/tool-2.0.tar.gz", "archive_info": {}},
                direct=True,
            ),
        ],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    out = subprocess.run(
        [sys.executable, "-c", report_reader(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == [
        "flask==3.1.0",
        "Werkzeug==3.1.3",
        "tool @ https://files.example/tool-2.0.tar.gz",
    ]
