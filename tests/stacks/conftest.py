"""Shared fixtures of the stacks tests: an HAProxy and a Caddy of our own, the published catalog."""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import transaction

from tests.stacks.gitserver import GitServer

REPO_ROOT = Path(__file__).resolve().parents[2]


def unused_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request on a connection of its own (a reload closes idle ones), no proxies."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, timeout=kwargs.pop("timeout", 10), **kwargs)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """git's smart-HTTP server on loopback serving the repositories under tmp_path."""
    with GitServer(tmp_path).running() as running:
        yield running


# Engine tests that run the portal on a Caddy of their own (the ``caddy`` fixture) select
# Caddy's client: the product's default edge router is HAProxy (stacks.runtime.edges).
CADDY_ROUTER = "stacks.runtime.edges.caddy"


@dataclass
class Caddy:
    admin_url: str
    edge_url: str
    edge_addr: str


@pytest.fixture(scope="session")
def caddy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caddy]:
    """A Caddy of our own on free loopback ports, state and log in a temporary folder;
    stopped (and only that one) at the end."""
    state = tmp_path_factory.mktemp("caddy")
    admin = f"127.0.0.1:{unused_loopback_port()}"
    edge = f"127.0.0.1:{unused_loopback_port()}"
    env = {
        **os.environ,
        "STACKPORT_CADDY_ADMIN": admin,
        "STACKPORT_EDGE_LISTEN": edge,
        "STACKPORT_CADDY_DIR": str(state),
        "STACKPORT_CADDY_LOG": str(state / "caddy.log"),
    }
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "caddy.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"scripts/caddy.sh failed:\n{result.stdout}\n{result.stderr}"
    # Running it again with Caddy up changes nothing.
    again = subprocess.run(
        [str(REPO_ROOT / "scripts" / "caddy.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
    (pidfile,) = state.glob("caddy-*.pid")
    pid = int(pidfile.read_text())
    yield Caddy(admin_url=f"http://{admin}", edge_url=f"http://{edge}", edge_addr=edge)
    try:
        fetch("POST", f"http://{admin}/stop")
    except requests.RequestException:
        pass
    try:
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "caddy to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def haproxy() -> Iterator[Any]:
    """The product's edge router, an HAProxy of our own (scripts/haproxy.sh, on free loopback
    ports, a pool as wide as `make run`'s), for the engine and browser tests that run the
    portal the way `make run` does; stopped and removed at the end."""
    from tests.stacks.test_haproxy_edge import running_edge

    with running_edge(backends=100, slots=20) as running:
        yield running


def use_haproxy(settings: Any, edge: Any) -> Any:
    """Point the portal's settings at ``edge`` (the ``haproxy`` fixture)."""
    settings.STACKPORT_EDGE_ROUTER = "stacks.runtime.edges.haproxy"
    settings.STACKPORT_HAPROXY_DIR = str(edge.directory)
    settings.STACKPORT_EDGE_LISTEN = f"{edge.host}:{edge.port}"
    settings.STACKPORT_EDGE_PUBLIC_PORT = edge.port
    settings.STACKPORT_EDGE_HTTPS_LISTEN = f"{edge.host}:{edge.https_port}"
    settings.STACKPORT_EDGE_HTTPS_PUBLIC_PORT = edge.https_port
    return edge


def forget_routes(environment: Any) -> None:
    """Remove the environment's routes from the edge the settings name (a test's cleanup,
    after its containers went: the session's router keeps room for the next tests)."""
    from stacks.runtime.edges import edge

    try:
        with edge() as router:
            mine = [r for r in router.routes() if r == environment.key or r.startswith(f"{environment.key}-")]
            router.set_routes((), mine)
    except Exception as exc:  # noqa: BLE001 - best effort
        print(f"removing the routes of {environment.key} failed: {exc}")


@pytest.fixture(scope="session")
def published_catalog(
    engine: None, django_db_setup: Any, django_db_blocker: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    """Run build -> verify -> publish over the whole shipped catalog once per session (each
    step cached by recipe hash); keep plain results, roll the rows back. Under pytest-xdist
    the first worker that needs it does it and the others of the same run read its results
    (a file lock, keyed by the run's id; ``make test`` names its run for both of its pytest
    runs): the catalog is verified once per run."""
    run_id = os.environ.get("STACKPORT_TEST_RUN") or os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_id:
        return _publish_catalog(django_db_blocker)
    shared = Path(tempfile.gettempdir()) / f"stackport-catalog-{run_id}.pickle"
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if shared.exists():
            return pickle.loads(shared.read_bytes())  # type: ignore[no-any-return]
        results = _publish_catalog(django_db_blocker)
        shared.write_bytes(pickle.dumps(results))
        return results


def _publish_catalog(django_db_blocker: Any) -> dict[tuple[str, str], dict[str, Any]]:
    from stacks.catalog import pipeline
    from stacks.catalog.loader import load_catalog
    from stacks.models import ComponentVersion

    results: dict[tuple[str, str], dict[str, Any]] = {}
    client = pipeline.docker_client()
    with django_db_blocker.unblock(), transaction.atomic():
        load_catalog()
        for cv in ComponentVersion.objects.select_related("component").order_by(
            "component__position", "position"
        ):
            lines: list[str] = []
            if pipeline.build_version(cv, client=client, log=lines.append):
                if pipeline.verify_version(cv, client=client, log=lines.append):
                    pipeline.publish_version(cv, client=client, log=lines.append)
            cv.refresh_from_db()
            results[(cv.component.code, cv.version)] = {
                "status": cv.status,
                "digest": cv.digest,
                "image_ref": cv.image_ref,
                "reason": cv.failure_reason,
                "log": cv.verification_log,
                "user": cv.component.user,
                "caps": cv.component.capabilities,
                "repository": pipeline.repository(cv),
                "pipeline": lines,
                "fields": {
                    f: getattr(cv, f)
                    for f in (
                        "status",
                        "digest",
                        "image_ref",
                        "recipe_hash",
                        "built_at",
                        "verified_at",
                        "published_at",
                        "verification_log",
                    )
                },
            }
        transaction.set_rollback(True)
    return results


@pytest.fixture
def catalog(published_catalog: dict[tuple[str, str], dict[str, Any]], db: None) -> None:
    """The shipped catalog loaded, with the images this session published (as the
    pipeline left them), in this test's database."""
    from stacks.catalog.loader import load_catalog
    from stacks.models import ComponentVersion

    load_catalog()
    for cv in ComponentVersion.objects.select_related("component"):
        result = published_catalog.get((cv.component.code, cv.version))
        if result:
            ComponentVersion.objects.filter(pk=cv.pk).update(**result["fields"])
