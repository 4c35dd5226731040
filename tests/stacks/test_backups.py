"""Backups on the real engine, into a real S3 server (``rclone serve s3`` on loopback) with
Debian's restic: rows in PostgreSQL and MariaDB and a key in Redis survive backup -> data
destroyed -> restore, byte for byte; a restore into a new environment is an independent
copy; a downloaded PostgreSQL dump loads into a plain ``pg_restore``; a store that is down
fails the backup visibly; another organization's backup id is 404."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from django.db import transaction

from projects.models import Environment
from stacks.backends.docker import list_containers
from stacks.models import Backup, Operation, OperationKind, OperationStatus
from stacks.runtime import backups, lifecycle
from stacks.runtime.hosts import ensure_local_hosts
from stacks.runtime.operations import run_operation
from tests.conftest import client_for
from tests.stacks import test_lifecycle
from tests.stacks.conftest import Caddy, unused_loopback_port, use_haproxy

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1800)]

ROWS = [
    {"name": "db", "component": "postgresql", "version": "17", "size": "small", "replicas": 1},
    {"name": "mdb", "component": "mariadb", "version": "11.8", "size": "small", "replicas": 1},
    {"name": "cache", "component": "redis", "version": "8.0", "size": "small", "replicas": 1},
]
FINGERPRINT_SQL = (
    "select md5(string_agg(id || ':' || body || ':' || encode(blob, 'hex'), ',' order by id)) from notes"
)
BODY = "kept ü $(x) '\"\\ \x01"


class S3Server:
    def __init__(self, root: Path) -> None:
        self.port = unused_loopback_port()
        self.access, self.secret = secrets.token_hex(10), secrets.token_hex(20)
        rclone = shutil.which("rclone") or str(Path(__file__).resolve().parents[2] / ".venv/bin/rclone")
        (root / "backups").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                rclone,
                "serve",
                "s3",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--auth-key",
                f"{self.access},{self.secret}",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("rclone serve s3 did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def s3(tmp_path: Path, settings: Any) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3")
    settings.STACKPORT_BACKUP_REPOSITORY = f"s3:http://127.0.0.1:{server.port}/backups"
    settings.STACKPORT_BACKUP_S3_ACCESS_KEY = server.access
    settings.STACKPORT_BACKUP_S3_SECRET_KEY = server.secret
    settings.STACKPORT_BACKUP_RETRY_SECONDS = 0
    settings.STACKPORT_BACKUP_MAX_ATTEMPTS = 1
    backups._READY.clear()
    yield server
    server.stop()


@pytest.fixture
def stackport(settings: Any, haproxy: Any, catalog: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    use_haproxy(settings, haproxy)  # the product's edge router
    ensure_local_hosts("unix:///var/run/docker.sock")
    from stacks import tasks

    # Tests run in a transaction that never commits: run queued work at once, in order.
    monkeypatch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: func())
    monkeypatch.setattr(tasks.run_backup_task, "delay", backups.run_backup)
    monkeypatch.setattr(tasks.restore_task, "delay", backups.run_restore)
    monkeypatch.setattr(tasks.run_operation_task, "delay", run_operation)
    return haproxy


def running(client: docker.DockerClient, env: Environment, component: str) -> Any:
    found = [
        c
        for c in list_containers(
            client,
            filters={"label": [f"org.stackport.stack={env.key}", f"org.stackport.component={component}"]},
        )
        if "org.stackport.helper" not in c.labels
    ]
    assert found, f"{component} of {env.key} is not running"
    return found[0]


def sh(
    client: docker.DockerClient, env: Environment, component: str, command: list[str], pw: str = ""
) -> str:
    container = running(client, env, component)
    values = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    password = values.get("STACKPORT_DB_PASSWORD", values.get("STACKPORT_REDIS_PASSWORD", ""))
    result = container.exec_run(
        command, environment={"PGPASSWORD": password, "MYSQL_PWD": password, "REDISCLI_AUTH": password}
    )
    assert result.exit_code == 0, result.output
    return str(result.output.decode().strip())


def psql(client: docker.DockerClient, env: Environment, sql: str) -> str:
    return sh(client, env, "db", ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-tAc", sql])


def mariadb(client: docker.DockerClient, env: Environment, sql: str) -> str:
    return sh(client, env, "mdb", ["mariadb", "-h", "127.0.0.1", "-u", "app", "app", "-N", "-B", "-e", sql])


def redis(client: docker.DockerClient, env: Environment, *args: str) -> str:
    return sh(client, env, "cache", ["redis-cli", "-h", "127.0.0.1", *args])


def write_data(client: docker.DockerClient, env: Environment) -> None:
    psql(client, env, "create table notes (id int primary key, body text, blob bytea)")
    psql(
        client,
        env,
        "insert into notes select g, 'row ' || g, decode(md5(g::text), 'hex') from generate_series(1, 500) g",
    )
    psql(client, env, f"insert into notes values (0, $q${BODY}$q$, '\\x00ff')")
    mariadb(client, env, "create table notes (id int primary key, body text, b blob)")
    mariadb(
        client, env, "insert into notes select seq, concat('row ', seq), unhex(md5(seq)) from seq_1_to_500"
    )
    redis(client, env, "set", "greeting", "hello ü")


def fingerprint(client: docker.DockerClient, env: Environment) -> tuple[str, str, str]:
    return (
        psql(client, env, FINGERPRINT_SQL),
        mariadb(
            client, env, "select md5(group_concat(concat(id, ':', body, ':', hex(b)) order by id)) from notes"
        ),
        redis(client, env, "get", "greeting"),
    )


def plain_pg_restore(client: docker.DockerClient, image: str, dump: bytes) -> str:
    """Load ``dump`` with a plain ``pg_restore`` into a fresh server of the catalog's image
    (no Stackport involved); the fingerprint of its notes table."""
    network = client.networks.create(f"sbk-{secrets.token_hex(4)}")
    server = loader = None
    try:
        server = client.containers.run(
            image,
            detach=True,
            environment={"STACKPORT_DB_PASSWORD": "plain-password"},
            tmpfs={"/run/postgresql": "", "/tmp": ""},
            volumes={f"{network.name}-data": {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            network=network.name,
            name=f"{network.name}-server",
        )
        for _ in range(240):
            if server.exec_run(["pg_isready", "-q", "-h", "127.0.0.1"]).exit_code == 0:
                break
            time.sleep(0.5)
        loader = client.containers.create(
            image,
            entrypoint=[
                "pg_restore",
                "-h",
                server.name,
                "-U",
                "app",
                "-d",
                "app",
                "--no-owner",
                "--exit-on-error",
            ],
            environment={"PGPASSWORD": "plain-password"},
            stdin_open=True,
            network=network.name,
        )
        sock = client.api.attach_socket(loader.id, params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        loader.start()
        raw.sendall(dump)
        raw.shutdown(socket.SHUT_WR)
        sock.close()
        assert loader.wait(timeout=300)["StatusCode"] == 0, loader.logs()
        result = server.exec_run(
            ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-tAc", FINGERPRINT_SQL],
            environment={"PGPASSWORD": "plain-password"},
        )
        assert result.exit_code == 0, result.output
        return str(result.output.decode().strip())
    finally:
        for container in (loader, server):
            if container is not None:
                container.remove(force=True, v=True)
        network.remove()
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(f"{network.name}-data").remove(force=True)


def test_backup_destroy_restore_copy_and_download(
    team: Any,
    stackport: Caddy,
    s3: S3Server,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Data", region="eu-central", components=ROWS
    )
    cleanup.append(env)
    env.refresh_from_db()
    assert env.status == "running", env.status_detail
    write_data(engine_client, env)
    before = fingerprint(engine_client, env)

    rows = backups.request_backup(environment=env, actor=team.developer)
    for row in rows:
        row.refresh_from_db()
        assert row.status == Backup.Status.SUCCEEDED, row.error
        assert row.size_bytes > 0 and row.snapshot_id
    assert {r.kind for r in rows} == {"postgresql", "mariadb", "redis"}
    assert list((tmp_path / "s3" / "backups").iterdir()), "nothing reached the object store"

    # Destroy the data: change and drop rows, flush Redis.
    psql(engine_client, env, "drop table notes")
    mariadb(engine_client, env, "delete from notes where id < 400")
    redis(engine_client, env, "flushall")

    for row in rows:
        component = row.component
        op = backups.request_restore(backup=row, actor=team.admin, confirmation=component)
        op.refresh_from_db()
        assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
        assert op.params["kept"][component], "the replaced data is kept"
        backups.settle_restore(operation=Operation.objects.get(pk=op.pk), actor=team.admin, undo=False)
    assert fingerprint(engine_client, env) == before

    # A restore into a new environment: an independent copy.
    db_backup = next(r for r in rows if r.component == "db")
    op = backups.request_restore(backup=db_backup, actor=team.admin, new_environment="staging")
    staging = op.environment
    cleanup.append(staging)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    staging.refresh_from_db()
    assert staging.status == "running", staging.status_detail
    assert fingerprint(engine_client, staging) == before
    psql(engine_client, staging, "delete from notes")
    assert fingerprint(engine_client, env) == before

    # The download is a standard pg_dump file: plain pg_restore in the catalog's image loads it.
    client = client_for(team.admin)
    response = client.get(f"/backups/{db_backup.pk}/download/")
    assert response.status_code == 200
    dump = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert dump.startswith(b"PGDMP")
    assert plain_pg_restore(engine_client, running(engine_client, env, "db").image.id, dump) == before[0]

    # Another organization's backup id: 404, nothing happens.
    outsider = client_for(team.outsider)
    assert outsider.get(f"/backups/{db_backup.pk}/download/").status_code == 404
    assert outsider.post(f"/backups/{db_backup.pk}/restore/", {"confirmation": "db"}).status_code == 404
    assert not Operation.objects.filter(kind=OperationKind.RESTORE, requested_by=team.outsider).exists()

    # The object store down: the backup fails visibly; the stack keeps running.
    s3.stop()
    failed = backups.request_backup(environment=env, actor=team.developer)
    for row in failed:
        row.refresh_from_db()
        assert row.status == Backup.Status.FAILED and "does not answer" in row.error
    assert fingerprint(engine_client, env) == before


# The real-engine fixtures of test_lifecycle (an engine client; environments destroyed at the end).
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup


def data_folder(client: docker.DockerClient, env: Environment) -> list[str]:
    """The names at the top of the db's data volume (its data directory)."""
    mount = next(m for m in running(client, env, "db").attrs["Mounts"] if m.get("Name"))
    out = client.containers.run(
        running(client, env, "db").image.id,
        entrypoint=["ls", "-A", "/v"],
        user="0",
        volumes={mount["Name"]: {"bind": "/v", "mode": "ro"}},
        remove=True,
    )
    return sorted(out.decode().split())


def test_postgresql_restore_within_its_volume_keeps_undoes_and_drops(
    team: Any,
    stackport: Caddy,
    s3: S3Server,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A PostgreSQL volume with room is restored within itself (renames, no copy): the
    replaced data is kept in a folder of the volume until the customer undoes the restore
    (that data runs again) or keeps it (the folder goes); a load that fails leaves the data
    and nothing else behind."""
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Within", region="eu-central", components=ROWS[:1]
    )
    cleanup.append(env)
    env.refresh_from_db()
    assert env.status == "running", env.status_detail
    psql(engine_client, env, "create table notes (id int primary key, body text)")
    psql(engine_client, env, "insert into notes select g, 'row ' || g from generate_series(1, 300) g")
    (row,) = backups.request_backup(environment=env, actor=team.developer)
    row.refresh_from_db()
    assert row.status == Backup.Status.SUCCEEDED, row.error
    psql(engine_client, env, "delete from notes where id > 100")
    before = data_folder(engine_client, env)

    op = backups.request_restore(backup=row, actor=team.admin, confirmation="db")
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert psql(engine_client, env, "select count(*) from notes") == "300"
    (kept,) = op.params["kept"]["db"]
    with pytest.raises(docker.errors.NotFound):
        engine_client.volumes.get(kept)  # a folder of the live volume, not a copy
    folders = [n for n in data_folder(engine_client, env) if n.startswith(".stackport-")]
    assert ".stackport-initialised" in folders and any(n.startswith(".stackport-kept-") for n in folders)

    backups.settle_restore(operation=Operation.objects.get(pk=op.pk), actor=team.admin, undo=True)
    assert psql(engine_client, env, "select count(*) from notes") == "100"
    assert data_folder(engine_client, env) == before

    op = backups.request_restore(backup=row, actor=team.admin, confirmation="db")
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    backups.settle_restore(operation=Operation.objects.get(pk=op.pk), actor=team.admin, undo=False)
    assert psql(engine_client, env, "select count(*) from notes") == "300"
    assert not [
        n for n in data_folder(engine_client, env) if n.startswith((".stackport-kept", ".stackport-restore"))
    ]

    # A backup that does not load: the data as it was, no folder left behind.
    psql(engine_client, env, "delete from notes where id > 200")
    monkeypatch.setattr(backups, "read_snapshot", lambda *args: iter([b"PGDMP not a dump at all"]))
    op = backups.request_restore(backup=row, actor=team.admin, confirmation="db")
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED, op.log
    assert psql(engine_client, env, "select count(*) from notes") == "200"
    assert not [
        n for n in data_folder(engine_client, env) if n.startswith((".stackport-kept", ".stackport-restore"))
    ]
