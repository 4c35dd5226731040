"""Shared setup of the benchmarks: a Stackport of their own, and its cleanup.

``stackport(versions, edge)`` is a context manager that starts an edge router of its own on
free loopback ports (``edge="haproxy"``: scripts/haproxy.sh, the product's default router;
``"caddy"``: scripts/caddy.sh) and points Stackport's edge settings at it, sets up Django
against a database of its own (created, migrated and dropped at the end), loads the
catalog, builds/verifies/publishes the catalog versions the benchmark needs (each step
cached by recipe hash; verification reruns in the fresh database, ~5 s a version) and
registers the local engine. It yields a ``Bench`` that deploys through Stackport's real
path and remembers what to remove. On the way out it destroys every environment it made,
sweeps anything left under the ``bench`` stack prefix (or made by the plain-SDK side),
stops its router and drops its database, also after a failure, Ctrl-C or SIGTERM.

Progress goes to stderr; each script prints its measurements on stdout, the ratio last.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import requests

REPO = Path(__file__).resolve().parents[1]
DOCKER_URL = "unix:///var/run/docker.sock"
PREFIX = "bench"  # STACKPORT_STACK_PREFIX: every object is named bench-<environment id>-...
STACK_LABEL = "org.stackport.stack"
PLAIN_LABEL = "org.stackport.bench"  # objects of the plain-SDK side
DEFAULT_ENV = {
    "DJANGO_SETTINGS_MODULE": "portal.settings",
    "DJANGO_ENV": "test",
    "DATABASE_URL": "postgres://postgres:postgres@127.0.0.1:5432/stackport_bench",
    "CACHE_URL": "redis://127.0.0.1:6379/5",
    # run_operation is called directly: the task create_project queues on commit goes to an
    # in-memory broker nobody consumes (never to a real worker's queue).
    "CELERY_BROKER_URL": "memory://",
    "CELERY_RESULT_BACKEND": "",
}
DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def note(text: str) -> None:
    """Progress, on stderr (stdout carries the measurements)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def machine() -> str:
    """CPUs and load average: a disturbed run shows here (the machine may be shared)."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min)"


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def unused_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str, host: str, timeout: float = 10) -> requests.Response:
    """One GET on a connection of its own, with a Host header, no proxies."""
    with requests.Session() as session:
        session.trust_env = False
        return session.get(url, headers={"Host": host}, timeout=timeout, allow_redirects=False)


def wait_for_page(url: str, host: str, text: str, timeout: float = 120, interval: float = 0.05) -> None:
    """Until ``url`` (sent with Host ``host``) answers 200 with ``text`` in the body."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = fetch(url, host, timeout=5)
            if response.status_code == 200 and text in response.text:
                return
            last = f"{response.status_code} {response.text[:120]!r}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(interval)
    raise BenchError(f"{host} did not serve {text!r} within {timeout} s (last: {last})")


class BenchError(Exception):
    pass


# --- the edge routers --------------------------------------------------------------------------------
# Both kinds answer on ``edge_url`` (``edge_addr``: host:port), give the environment
# variables that point Stackport's settings at them (``settings()``) and ``stop()``.
@dataclass
class Caddy:
    admin_url: str
    edge_url: str
    edge_addr: str
    pid: int
    router: ClassVar[str] = "stacks.runtime.edges.caddy"

    def settings(self) -> dict[str, str]:
        return {
            "STACKPORT_EDGE_ROUTER": self.router,
            "STACKPORT_EDGE_ADMIN_URL": self.admin_url,
            "STACKPORT_EDGE_LISTEN": self.edge_addr,
        }

    def stop(self) -> None:
        stop_caddy(self)


def start_caddy(state: Path) -> Caddy:
    admin = f"127.0.0.1:{unused_loopback_port()}"
    edge = f"127.0.0.1:{unused_loopback_port()}"
    env = {
        **os.environ,
        "STACKPORT_CADDY_ADMIN": admin,
        "STACKPORT_EDGE_LISTEN": edge,
        "STACKPORT_CADDY_DIR": str(state),
        "STACKPORT_CADDY_LOG": str(state / "caddy.log"),
    }
    result = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(REPO / "scripts" / "caddy.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise BenchError(f"scripts/caddy.sh failed:\n{result.stdout}\n{result.stderr}")
    (pidfile,) = state.glob("caddy-*.pid")
    return Caddy(f"http://{admin}", f"http://{edge}", edge, int(pidfile.read_text()))


def stop_caddy(caddy: Caddy) -> None:
    """Stop this Caddy (and only this one, by its pid)."""
    try:
        with requests.Session() as session:
            session.trust_env = False
            session.post(f"{caddy.admin_url}/stop", timeout=10)
    except requests.RequestException:
        pass
    deadline = time.monotonic() + 10
    while Path(f"/proc/{caddy.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{caddy.pid}").exists():
        os.kill(caddy.pid, signal.SIGKILL)


HAPROXY_SCRIPT = REPO / "scripts" / "haproxy.sh"
HAPROXY_BACKENDS = 8  # routes at once; a bench has a few environments
HAPROXY_SLOTS = 20  # a portal route's upstream slots


@dataclass
class HAProxy:
    """An HAProxy edge of scripts/haproxy.sh in ``directory``; ``script_env`` is what the
    script was started with (``stop`` needs the same)."""

    directory: Path
    edge_url: str
    edge_addr: str
    https_addr: str
    script_env: dict[str, str]
    router: ClassVar[str] = "stacks.runtime.edges.haproxy"

    def settings(self) -> dict[str, str]:
        return {
            "STACKPORT_EDGE_ROUTER": self.router,
            "STACKPORT_HAPROXY_DIR": str(self.directory),
            "STACKPORT_EDGE_LISTEN": self.edge_addr,
        }

    def stop(self) -> None:
        """Stop this HAProxy (``scripts/haproxy.sh stop``: by its pid file) and remove its folder."""
        subprocess.run(  # noqa: S603 - our own script, fixed arguments
            [str(HAPROXY_SCRIPT), "stop"], env=self.script_env, capture_output=True, timeout=60, check=False
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def start_haproxy(directory: Path) -> HAProxy:
    """scripts/haproxy.sh in ``directory`` (short: its unix socket path must stay under 107
    bytes), listening for HTTP and HTTPS on free loopback ports. On failure it is stopped,
    its folder removed, and BenchError raised."""
    edge = f"127.0.0.1:{unused_loopback_port()}"
    https = f"127.0.0.1:{unused_loopback_port()}"
    env = {
        **os.environ,
        "STACKPORT_HAPROXY_DIR": str(directory),
        "STACKPORT_HAPROXY_LISTEN": edge,
        "STACKPORT_HAPROXY_HTTPS_LISTEN": https,
        "STACKPORT_HAPROXY_LOG": str(directory / "haproxy.log"),
        "STACKPORT_HAPROXY_BACKENDS": str(HAPROXY_BACKENDS),
        "STACKPORT_HAPROXY_SLOTS": str(HAPROXY_SLOTS),
    }
    haproxy = HAProxy(directory, f"http://{edge}", edge, https, env)
    result = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        [str(HAPROXY_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        haproxy.stop()
        raise BenchError(f"scripts/haproxy.sh failed:\n{result.stdout}\n{result.stderr}")
    return haproxy


EDGES = ("haproxy", "caddy")


def start_edge(kind: str, state: Path) -> Caddy | HAProxy:
    """The edge router ``kind`` (one of EDGES): Caddy with its state in ``state``; HAProxy in
    a short folder of its own (removed by its ``stop``)."""
    if kind == "caddy":
        return start_caddy(state)
    if kind == "haproxy":
        return start_haproxy(Path(tempfile.mkdtemp(prefix="sp-bench-haproxy-")))
    raise BenchError(f"unknown edge {kind!r} (one of {', '.join(EDGES)})")


# --- database --------------------------------------------------------------------------------------
def _admin_connection() -> Any:
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise BenchError("the benchmarks need DATABASE_URL to name a PostgreSQL database")
    return psycopg.connect(
        dbname="postgres",
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        autocommit=True,
    )


def _db_name() -> str:
    from django.conf import settings

    name = str(settings.DATABASES["default"]["NAME"])
    if not DB_NAME_RE.fullmatch(name) or "bench" not in name:
        # It is dropped at the end: never anything but a benchmark database.
        raise BenchError(f"refusing to use database {name!r}: its name must contain 'bench'")
    return name


def create_database() -> None:
    from psycopg import sql

    name = _db_name()
    with _admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database() -> None:
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    with _admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_db_name())))


# --- catalog ---------------------------------------------------------------------------------------
def publish(versions: list[tuple[str, str]]) -> None:
    """Load the catalog; build (cached), verify and publish only ``versions``."""
    from stacks.catalog import pipeline
    from stacks.catalog.loader import load_catalog
    from stacks.models import ComponentVersion

    load_catalog()
    client = pipeline.docker_client()
    try:
        for code, version in versions:
            cv = ComponentVersion.objects.select_related("component").get(
                component__code=code, version=version
            )
            started = time.monotonic()
            lines: list[str] = []
            ok = pipeline.build_version(cv, client=client, log=lines.append)
            ok = ok and pipeline.verify_version(cv, client=client, log=lines.append)
            ok = ok and pipeline.publish_version(cv, client=client, log=lines.append)
            if not ok:
                raise BenchError(f"{code} {version} could not be published:\n" + "\n".join(lines))
            note(f"published {code} {version} ({time.monotonic() - started:.1f} s)")
    finally:
        client.close()


# --- the bench ---------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What a benchmark works with; remembers what to remove."""

    edge: Caddy | HAProxy
    organization: Any
    environments: list[Any] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def caddy(self) -> Caddy:
        """The edge, for benchmarks that use Caddy's admin API themselves."""
        if not isinstance(self.edge, Caddy):
            raise BenchError("this benchmark needs the Caddy edge")
        return self.edge

    def docker(self) -> Any:
        import docker

        return docker.DockerClient(base_url=DOCKER_URL, version="auto", timeout=120)

    def create(self, name: str, *, current: tuple[str, str] | None = None, **kwargs: Any) -> Any:
        """create_project (system: no actor), as the portal does it; not run yet. ``current``
        (component, version): that version counts as current while the stack is made (new
        stacks get current versions only; a benchmark may start from an older one)."""
        from stacks.models import ComponentVersion, VersionStatus
        from stacks.runtime import lifecycle

        old = (
            ComponentVersion.objects.filter(component__code=current[0], version=current[1])
            if current
            else None
        )
        status = old.get().status if old is not None else None
        if old is not None:
            old.update(status=VersionStatus.CURRENT)
        try:
            env = lifecycle.create_project(
                organization=self.organization,
                actor=None,
                system=True,
                name=name,
                region="eu-central",
                **kwargs,
            )
        finally:
            if old is not None:
                old.update(status=status)
        self.environments.append(env)
        return env

    def run(self, operation: Any) -> Any:
        """run_operation, synchronously; the operation must succeed."""
        from stacks.models import OperationStatus
        from stacks.runtime.operations import run_operation

        run_operation(operation.pk)
        operation.refresh_from_db()
        if operation.status != OperationStatus.SUCCEEDED:
            raise BenchError(f"{operation.kind} failed: {operation.error}\n{operation.log}")
        return operation

    def destroy(self, env: Any) -> None:
        """Stackport's own destroy operation (routes, containers, networks, volumes)."""
        from stacks.runtime import lifecycle

        env.refresh_from_db()
        self.run(lifecycle.destroy(environment=env, actor=None, confirmation=env.project.name))

    def edge_get(self, env: Any, path: str = "/") -> requests.Response:
        return fetch(f"{self.edge.edge_url}{path}", env.hostname)


def step_durations(operation: Any) -> dict[str, float]:
    """Seconds per recorded step of an operation."""
    result = {}
    for step in operation.steps:
        if step.get("started") and step.get("finished"):
            started = datetime.fromisoformat(step["started"])
            finished = datetime.fromisoformat(step["finished"])
            result[step["name"]] = (finished - started).total_seconds()
    return result


def sweep(keep_quiet: bool = False) -> None:
    """Remove containers, networks and volumes of the bench prefix and of the plain side
    (also leftovers of an earlier, interrupted benchmark run)."""
    import docker
    from docker.errors import APIError, NotFound

    client = docker.DockerClient(base_url=DOCKER_URL, version="auto", timeout=120)

    def ours(labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return PLAIN_LABEL in labels or labels.get(STACK_LABEL, "").startswith(f"{PREFIX}-")

    removed = 0
    try:
        for container in client.containers.list(all=True):
            if ours(container.labels):
                try:
                    container.remove(force=True)
                    removed += 1
                except (NotFound, APIError):
                    pass
        for network in client.networks.list():
            if ours(network.attrs.get("Labels")):
                try:
                    network.remove()
                    removed += 1
                except (NotFound, APIError):
                    pass
        for volume in client.volumes.list():
            if ours(volume.attrs.get("Labels")):
                try:
                    volume.remove(force=True)
                    removed += 1
                except (NotFound, APIError):
                    pass
    finally:
        client.close()
    if removed and not keep_quiet:
        note(f"swept {removed} leftover containers/networks/volumes")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def stackport(versions: list[tuple[str, str]], edge: str = "caddy") -> Iterator[Bench]:
    """A Stackport of the benchmark's own on the edge router ``edge`` ("haproxy" or "caddy";
    see the module docstring)."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["STACKPORT_STACK_PREFIX"] = PREFIX
    tmp = Path(tempfile.mkdtemp(prefix="stackport-bench-"))
    os.environ["STACKPORT_VAR_DIR"] = str(tmp / "var")
    router: Caddy | HAProxy | None = None
    database_made = False
    bench: Bench | None = None
    try:
        router = start_edge(edge, tmp / "caddy")
        note(f"{edge}: edge {router.edge_url} ({router.router})")
        # The settings module reads these at start; the operations read the settings at use.
        os.environ.update(router.settings())
        os.environ["STACKPORT_EDGE_PUBLIC_PORT"] = router.edge_addr.rsplit(":", 1)[1]
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        assert settings.STACKPORT_STACK_PREFIX == PREFIX
        assert settings.STACKPORT_EDGE_ROUTER == router.router
        assert settings.STACKPORT_EDGE_LISTEN == router.edge_addr
        sweep()
        started = time.monotonic()
        create_database()
        database_made = True
        call_command("migrate", verbosity=0, interactive=False)
        note(f"database {_db_name()} migrated ({time.monotonic() - started:.1f} s)")
        publish(versions)
        from projects.models import Organization
        from stacks.runtime.hosts import ensure_local_hosts

        ensure_local_hosts(DOCKER_URL)
        bench = Bench(edge=router, organization=Organization.objects.create(name="Benchmarks"))
        yield bench
    finally:
        note("cleaning up")
        if bench is not None:
            for cleanup in reversed(bench.cleanups):
                try:
                    cleanup()
                except Exception as exc:  # noqa: BLE001 - best effort, keep cleaning
                    note(f"cleanup failed: {exc}")
            _destroy_all(bench)
        try:
            sweep()
        except Exception as exc:  # noqa: BLE001
            note(f"sweep failed: {exc}")
        if router is not None:
            router.stop()
        if database_made:
            try:
                drop_database()
            except Exception as exc:  # noqa: BLE001
                note(f"dropping the database failed: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
        note("cleaned up")


def _destroy_all(bench: Bench) -> None:
    from projects.models import EnvironmentStatus
    from stacks.runtime.operations import backend_for

    for env in bench.environments:
        try:
            env.refresh_from_db()
            if env.status != EnvironmentStatus.DESTROYED:
                backend_for(env).destroy(env.key, env.backend_state)
        except Exception as exc:  # noqa: BLE001
            note(f"destroying {env.key} failed: {exc}")


def container_timeline(label: str, since: float, until: float) -> dict[str, dict[str, float]]:
    """Per container carrying ``label`` (``key=value``), seconds after ``since`` (a
    time.time()) of its create, start, first healthy, kill/die and destroy events, read from
    the engine's event log (passive: nothing waits on it)."""
    import docker

    client = docker.DockerClient(base_url=DOCKER_URL, version="auto", timeout=120)
    timeline: dict[str, dict[str, float]] = {}
    wanted = {"create", "start", "health_status: healthy", "kill", "die", "destroy"}
    try:
        events = client.events(
            since=int(since), until=int(until) + 1, filters={"type": "container", "label": label}, decode=True
        )
        for event in events:
            status = event.get("status") or event.get("Action", "")
            if status not in wanted:
                continue
            name = event.get("Actor", {}).get("Attributes", {}).get("name", "?")
            offset = event["timeNano"] / 1e9 - since
            short = "healthy" if status.startswith("health") else status
            timeline.setdefault(name, {}).setdefault(short, round(offset, 2))
    finally:
        client.close()
    return timeline


def describe_timeline(timeline: dict[str, dict[str, float]], prefix: str = "") -> str:
    lines = []
    for name, marks in sorted(timeline.items(), key=lambda item: min(item[1].values())):
        events = " ".join(f"{event} +{offset:.2f}" for event, offset in marks.items())
        lines.append(f"{prefix}{name}: {events}")
    return "\n".join(lines)
