"""Disk limits (docs/backends.md, "Disk limits"): each new volume gets the plan's size, the
host holds it to that size, its use is measured, shown with a warning near the limit, and
metered at its real size.

Fast tests use the in-memory backend for the plumbing (plan → policy → spec → backend →
measurement → page and metering); the engine test fills a real PostgreSQL volume past its
size and checks the container gets "No space left on device" while the host's other
filesystems and the stack's other volumes still take writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.metering import _records, storage_gb
from billing.models import Plan
from billing.pricing import Catalog
from projects.models import Environment, EnvironmentStatus
from stacks.backends.memory import MemoryBackend
from stacks.runtime import disk, lifecycle
from stacks.runtime.operations import backend_for
from stacks.runtime.spec import build_spec
from tests.conftest import Team, add_memory_host, client_for
from tests.stacks.conftest import CADDY_ROUTER

GIB = 1024**3
DB_ROWS = [{"name": "db", "component": "postgresql", "version": "15", "size": "small", "replicas": 1}]


@pytest.fixture(autouse=True)
def no_old_measurements() -> None:
    """Measurements are kept in the cache by environment id: none from an earlier test."""
    from django.core.cache import cache

    cache.delete_many([f"stackport:volume-usage:{i}" for i in range(1, 2000)])


def page_of(team: Team, env: Environment) -> str:
    """The environment page as text (``filesizeformat`` keeps number and unit together)."""
    response = client_for(team.owner).get(reverse("stacks:environment", args=[env.pk]))
    return str(response.content.decode().replace("\xa0", " "))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from stacks import tasks

    sent: list[Any] = []
    monkeypatch.setattr(tasks.run_operation_task, "apply_async", lambda *a, **k: sent.append(a))
    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *a: sent.append(a))
    return sent


def _stateful(team: Team, plan_gb: int | None) -> Environment:
    if plan_gb is not None:
        Plan.objects.create(code="disk", name="Disk", is_default=True, volume_size_gb=plan_gb)
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Data", region="eu-central", components=DB_ROWS
    )
    add_memory_host(env)
    release = env.releases.order_by("-number").first()
    Environment.objects.filter(pk=env.pk).update(
        current_release=release, status=EnvironmentStatus.RUNNING, backend_state={"host": "h1"}
    )
    env.refresh_from_db()
    return env


def _apply(env: Environment) -> Any:
    assert env.current_release is not None
    spec = build_spec(env, env.current_release)
    backend_for(env).apply(spec, env.backend_state, log=lambda *_: None)
    return spec


@pytest.mark.django_db
def test_the_plan_gives_each_new_volume_its_size(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: list[Any]
) -> None:
    env = _stateful(team, plan_gb=3)
    spec = _apply(env)
    (db,) = spec.components
    assert [(v.name, v.size_gb) for v in db.volumes] == [("data", 3)]
    (use,) = backend_for(env).volume_usage(spec, env.backend_state)
    assert (use.component, use.volume, use.size_bytes) == ("db", "data", 3 * GIB)
    # The size is not part of the spec hash: a plan change restarts nothing; a bigger plan
    # grows the volume (the next apply), a smaller one never shrinks it.
    Plan.objects.filter(code="disk").update(volume_size_gb=7)
    spec2 = build_spec(env, env.releases.order_by("-number").first())  # type: ignore[arg-type]
    assert spec2.components[0].volumes[0].size_gb == 7 and repr(spec2) == repr(spec)
    backend_for(env).apply(spec2, env.backend_state, log=lambda *_: None)
    (use,) = backend_for(env).volume_usage(spec2, env.backend_state)
    assert use.size_bytes == 7 * GIB
    Plan.objects.filter(code="disk").update(volume_size_gb=2)
    _apply(env)
    (use,) = backend_for(env).volume_usage(spec2, env.backend_state)
    assert use.size_bytes == 7 * GIB


@pytest.mark.django_db
def test_no_plan_or_no_plan_size_means_no_limit(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: list[Any]
) -> None:
    env = _stateful(team, plan_gb=None)
    spec = _apply(env)
    assert spec.components[0].volumes[0].size_gb is None
    memory_backend.seed_volume_usage(env.key, f"sp-{env.key}-db-data", 5 * 1024**2)
    (use,) = disk.measure(env)
    assert use.size_bytes is None and use.percent is None and not use.nearly_full
    page = page_of(team, env)
    assert "5.0 MB used, no limit" in page and "disk-warning" not in page


@pytest.mark.django_db
def test_usage_is_measured_shown_and_warned_about_near_the_limit(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: list[Any]
) -> None:
    env = _stateful(team, plan_gb=1)
    _apply(env)
    volume = f"sp-{env.key}-db-data"
    memory_backend.seed_volume_usage(env.key, volume, GIB // 2)
    assert disk.measure_volumes() == 1
    (use,) = disk.volume_usage(env.pk)
    assert (use.used_bytes, use.percent, use.nearly_full) == (GIB // 2, 50, False)
    page = page_of(team, env)
    assert "512.0 MB of 1.0 GB (50%)" in page and "disk-warning" not in page
    assert 'table-stack" id="volumes-table"' in page  # one block per row on phones
    assert all(f'data-label="{label}"' in page for label in ("Component", "Volume", "Used"))

    memory_backend.seed_volume_usage(env.key, volume, int(GIB * 0.85))
    disk.measure_volumes()
    assert [u.volume for u in disk.nearly_full(env.pk)] == ["data"]
    page = page_of(team, env)
    assert 'id="disk-warning-db-data"' in page and "85% full" in page and "No space left on device" in page
    dashboard = client_for(team.owner).get("/").content.decode()
    assert "The data volume of db is 85% full." in dashboard


@pytest.mark.django_db
def test_a_failing_engine_leaves_the_last_measurement_and_the_others(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: list[Any]
) -> None:
    from stacks.backends.base import BackendError

    env = _stateful(team, plan_gb=1)
    _apply(env)
    memory_backend.seed_volume_usage(env.key, f"sp-{env.key}-db-data", 1000)
    disk.measure_volumes()
    memory_backend.fail_next("volume_usage", BackendError("Docker host h1 does not answer"))
    assert disk.measure_volumes() == 0
    assert [u.used_bytes for u in disk.volume_usage(env.pk)] == [1000]


@pytest.mark.django_db
def test_storage_is_metered_at_its_measured_size(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], queued: list[Any], settings: Any
) -> None:
    settings.STACKPORT_VOLUME_GB = 4
    env = _stateful(team, plan_gb=10)
    _apply(env)
    env.refresh_from_db()
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    Environment.objects.filter(pk=env.pk).update(created_at=start - timedelta(days=1))
    env = Environment.objects.select_related("project__region", "current_release").get(pk=env.pk)

    (flat,) = _records(start, start + timedelta(hours=1), [env], Catalog())
    assert flat.storage_gb_hours == Decimal("4")  # nothing measured yet: the flat size

    memory_backend.seed_volume_usage(env.key, f"sp-{env.key}-db-data", GIB // 4)
    disk.measure(env)
    (measured,) = _records(start, start + timedelta(hours=1), [env], Catalog())
    assert measured.storage_gb_hours == Decimal("0.25")
    assert storage_gb(4, None) == 4 and storage_gb(4, 3 * GIB) == 3


# --- the real engine --------------------------------------------------------------------------------
@pytest.fixture
def engine_client() -> Iterator[Any]:
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    yield client
    client.close()


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.django_db
@pytest.mark.timeout(900)
def test_a_volume_filled_past_its_size_says_no_space_and_nothing_else_fills(
    team: Team, settings: Any, caddy: Any, catalog: None, engine_client: Any, tmp_path: Path
) -> None:
    from stacks.backends.docker import list_containers
    from stacks.models import OperationStatus
    from stacks.runtime.hosts import ensure_local_hosts
    from stacks.runtime.operations import run_operation

    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    ensure_local_hosts("unix:///var/run/docker.sock")
    Plan.objects.create(code="disk", name="Disk", is_default=True, volume_size_gb=1)
    rows = [
        {**DB_ROWS[0]},
        {"name": "cache", "component": "redis", "version": "8.0", "size": "small", "replicas": 1},
    ]
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Full", region="eu-central", components=rows
    )
    try:
        op = env.operations.get()
        run_operation(op.pk)
        op.refresh_from_db()
        assert op.status == OperationStatus.SUCCEEDED, op.log
        env.refresh_from_db()
        running = list_containers(engine_client, filters={"label": f"org.stackport.stack={env.key}"})
        db = next(c for c in running if c.labels["org.stackport.component"] == "db")
        cache = next(c for c in running if c.labels["org.stackport.component"] == "cache")
        volume = engine_client.volumes.get(f"sp-{env.key}-db-data")
        assert volume.attrs["Labels"]["org.stackport.size-gb"] == "1"

        # Filling the database's volume past its 1 GB stops at its size, inside the container.
        fill = db.exec_run(["dd", "if=/dev/zero", "of=/var/lib/postgresql/data/fill", "bs=1M", "count=1500"])
        assert fill.exit_code != 0
        assert b"No space left on device" in fill.output, fill.output
        df = db.exec_run(["df", "-B1", "-P", "/var/lib/postgresql/data"]).output.decode().splitlines()[-1]
        total, used, available = (int(x) for x in df.split()[1:4])
        assert total <= GIB and available < 16 * 1024**2  # full (ext4 keeps some blocks for itself)

        # Measured, shown and warned about.
        (use,) = [u for u in disk.measure(env) if u.component == "db"]
        assert use.size_bytes == total and use.used_bytes >= used * 0.99 and use.nearly_full

        # Nothing else filled: the stack's other volume, the host's own disk (the var dir).
        other = cache.exec_run(["sh", "-c", "head -c 1048576 /dev/zero > /data/other && echo ok"])
        assert other.exit_code == 0 and b"ok" in other.output, other.output
        probe = tmp_path / "host-probe"
        probe.write_bytes(b"x" * (8 * 1024 * 1024))
        assert probe.stat().st_size == 8 * 1024 * 1024

        # Freeing space lets the database write again.
        assert db.exec_run(["rm", "-f", "/var/lib/postgresql/data/fill"]).exit_code == 0
        again = db.exec_run(
            ["sh", "-c", "head -c 1048576 /dev/zero > /var/lib/postgresql/data/again && echo ok"]
        )
        assert again.exit_code == 0, again.output
    finally:
        env.refresh_from_db()
        backend_for(env).destroy(env.key, env.backend_state)
    # Destroying the stack detaches and deletes its volume images.
    assert not engine_client.volumes.list(filters={"label": f"org.stackport.stack={env.key}"})
    images = Path(settings.STACKPORT_VOLUME_IMAGE_DIR)
    assert not list(images.glob(f"*/sp-{env.key}-*.img"))


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.django_db
@pytest.mark.timeout(900)
def test_a_bigger_plan_grows_the_volume_online(
    team: Team,
    settings: Any,
    caddy: Any,
    catalog: None,
    engine_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan with bigger volumes grows the ext4 image and its filesystem (the database's
    container stopped for the resize and started again, its data kept); a smaller plan
    never shrinks it."""
    from django.db import transaction

    from billing.services import change_plan
    from stacks import tasks
    from stacks.backends.docker import list_containers
    from stacks.models import OperationStatus
    from stacks.runtime.hosts import ensure_local_hosts
    from stacks.runtime.operations import run_operation

    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    ensure_local_hosts("unix:///var/run/docker.sock")
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())
    monkeypatch.setattr(tasks.run_operation_task, "delay", run_operation)
    Plan.objects.create(code="disk", name="Disk", is_default=True, volume_size_gb=1)
    Plan.objects.create(code="bigger", name="Bigger", volume_size_gb=2)
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Grow", region="eu-central", components=DB_ROWS
    )
    try:
        env.refresh_from_db()
        assert env.status == "running", env.status_detail

        def db() -> Any:
            (found,) = list_containers(
                engine_client,
                filters={"label": [f"org.stackport.stack={env.key}", "org.stackport.component=db"]},
            )
            return found

        def size() -> int:
            df = db().exec_run(["df", "-B1", "-P", "/var/lib/postgresql/data"]).output.decode()
            return int(df.splitlines()[-1].split()[1])

        before, container = size(), db().id
        assert before <= GIB
        assert db().exec_run(["sh", "-c", "echo kept > /var/lib/postgresql/data/probe"]).exit_code == 0

        change_plan(organization=team.org, actor=None, plan="bigger", system=True)
        op = env.operations.order_by("-created_at").first()
        assert op is not None and op.params.get("reason") == "volume size"
        assert op.status == OperationStatus.SUCCEEDED, op.log
        grown = size()
        assert GIB < grown <= 2 * GIB and grown > 1.9 * before
        assert db().id == container  # the same container, started again on its grown volume
        assert db().exec_run(["cat", "/var/lib/postgresql/data/probe"]).output == b"kept\n"
        (use,) = disk.measure(env)
        assert use.size_bytes == grown

        operations = env.operations.count()
        change_plan(organization=team.org, actor=None, plan="disk", system=True)  # never shrinks
        assert env.operations.count() == operations
        _apply(env)
        assert size() == grown
    finally:
        env.refresh_from_db()
        backend_for(env).destroy(env.key, env.backend_state)
