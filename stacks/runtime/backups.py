"""Backups of customers' data: taken, kept, restored and downloaded.

Every stateful component is backed up the way its engine intends (``METHODS``): a logical
dump of PostgreSQL (``pg_dump -Fc``, compressed) and MariaDB (``mariadb-dump --single-transaction``)
from a helper container of the same image on the stack's network, Redis's own snapshot
(``redis-cli --rdb``), RabbitMQ's definitions, and a tar of every other file volume
(files). The backend streams the dump (``Backend.dump``); this module pipes it
into ``restic backup --stdin`` (never holding a dump in memory), in one restic repository
per organization, encrypted with the organization's own password (``BackupKey``, stored
encrypted) and deduplicated. The repository lives on an S3-compatible object store
(``STACKPORT_BACKUP_REPOSITORY``) or, with none configured, under the var directory.

Requests (back up now, restore, download) check the actor's role and write one
transaction with the audit row; the Celery tasks (``stacks.tasks``) run ``run_backup`` and
``run_restore`` in the worker. ``restore(backup, environment, host=...)`` is the core a
cross-host move calls too: a move off a lost host (``restore_on_another_host``) and a
support move of a stateful environment (``stacks.runtime.operations``, docs/backends.md)
both make the stack afresh on the new host with ``rebuild_on`` and restore into it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from projects.crypto import decrypt, encrypt
from projects.models import Environment, EnvironmentStatus, Organization, Role
from projects.services import Origin, ServiceError, record_audit_event, require_role
from stacks import tasks
from stacks.backends.base import Backend, BackendError, StackSpec
from stacks.models import (
    Backup,
    BackupKey,
    DockerHost,
    Operation,
    OperationKind,
    OperationStatus,
    Release,
    Variable,
)
from stacks.runtime import lifecycle, operations
from stacks.runtime.policy import stack_policy
from stacks.runtime.spec import SpecError, build_spec, set_component_rows

if TYPE_CHECKING:
    from projects.models import User

log = structlog.get_logger(__name__)

# Component code -> how its data is backed up (anything else with a volume: "files").
METHODS = {"postgresql": "postgresql", "mariadb": "mariadb", "redis": "redis", "rabbitmq": "rabbitmq"}
FILE_NAMES = {
    "postgresql": "{component}.dump",
    "mariadb": "{component}.sql",
    "redis": "{component}.rdb",
    "rabbitmq": "{component}-definitions.json",
    "files": "{component}-{volume}.tar",
}
CONTENT_TYPES = {"postgresql": "application/octet-stream", "mariadb": "application/sql"}
HEARTBEAT_SECONDS = 5
UPLOAD_STALE_SECONDS = 86400  # an uploaded dump file no live backup names is removed after this
CHUNK = 1 << 20
SCHEDULES = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}


class BackupFailed(Exception):
    """A backup or restore that did not work; ``message`` is fit for the customer."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


# --- the repository (restic) --------------------------------------------------------------------
def repository_for(organization_id: int) -> str:
    base = settings.STACKPORT_BACKUP_REPOSITORY or str(Path(settings.VAR_DIR) / "backups")
    return f"{base.rstrip('/')}/org-{organization_id}"


def _password(organization_id: int) -> str:
    key = BackupKey.objects.filter(organization_id=organization_id).first()
    if key is None:
        with contextlib.suppress(IntegrityError), transaction.atomic():
            BackupKey.objects.create(
                organization_id=organization_id, encrypted_password=encrypt(secrets.token_urlsafe(32))
            )
        key = BackupKey.objects.get(organization_id=organization_id)
    return decrypt(key.encrypted_password)


def _restic_env(organization_id: int) -> dict[str, str]:
    """A clean environment: the organization's password and the store's credentials only."""
    var = Path(settings.VAR_DIR)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(var),
        "RESTIC_PASSWORD": _password(organization_id),
        "RESTIC_CACHE_DIR": str(var / "restic-cache"),
        "TMPDIR": str(var),
    }
    if settings.STACKPORT_BACKUP_S3_ACCESS_KEY:
        env["AWS_ACCESS_KEY_ID"] = settings.STACKPORT_BACKUP_S3_ACCESS_KEY
        env["AWS_SECRET_ACCESS_KEY"] = settings.STACKPORT_BACKUP_S3_SECRET_KEY
    return env


def _restic(organization_id: int, *args: str) -> list[str]:
    return [settings.STACKPORT_RESTIC, "-r", repository_for(organization_id), "--no-cache", *args]


def _check_store(repository: str) -> None:
    """Fail fast (and visibly) when the object store does not answer: restic itself retries
    for minutes."""
    if not repository.startswith("s3:"):
        return
    url = urlsplit(repository[3:])
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=5).close()
    except OSError as exc:
        raise BackupFailed(
            f"The backup store at {url.hostname}:{port} does not answer ({exc.strerror or exc}).",
            transient=True,
        ) from exc


def _run_restic(organization_id: int, *args: str, timeout: float = 600) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            _restic(organization_id, *args),
            env=_restic_env(organization_id),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BackupFailed(f"restic {args[0]} did not finish in {timeout:.0f} s", transient=True) from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-500:]
        raise BackupFailed(f"restic {args[0]} failed: {detail}", transient=True)
    return done.stdout.decode(errors="replace")


_READY: set[str] = set()


def ensure_repository(organization_id: int, *, unlock: bool = True) -> None:
    """Create the organization's repository once (safe to repeat) and, with ``unlock``,
    clear stale locks (a backup clears them only when one stops it: ``_take``)."""
    repository = repository_for(organization_id)
    _check_store(repository)
    if repository not in _READY:
        try:
            _run_restic(organization_id, "cat", "config", timeout=120)
        except BackupFailed:
            if not repository.startswith("s3:"):
                Path(repository).parent.mkdir(parents=True, exist_ok=True)
            try:
                _run_restic(organization_id, "init", timeout=120)
            except BackupFailed as exc:
                if "already" not in exc.message and "exists" not in exc.message:
                    raise
        _READY.add(repository)
    if unlock:
        _unlock(organization_id)


def _unlock(organization_id: int) -> None:
    # A worker killed during a backup leaves its lock behind; ``unlock`` removes stale ones only.
    _run_restic(organization_id, "unlock", timeout=120)


# --- what is backed up ------------------------------------------------------------------------------
def targets(spec: StackSpec, codes: dict[str, str]) -> list[tuple[str, str, str]]:
    """(component, method, volume) for each piece of the stack's data. ``codes``: component
    name -> catalog code. A stack volume shared by several components (WordPress's uploads)
    is one piece, under the first component that mounts it."""
    found = []
    shared: set[str] = set()
    for comp in spec.components:
        method = METHODS.get(codes.get(comp.name, ""))
        if comp.stateful and method:
            found.append((comp.name, method, ""))
            continue
        for volume in comp.volumes:
            if volume.shared:
                if volume.name in shared:
                    continue
                shared.add(volume.name)
            found.append((comp.name, "files", volume.name))
    return found


def _spec_of(environment: Environment) -> tuple[StackSpec, dict[str, str]]:
    if environment.current_release is None:
        raise ServiceError("This environment has nothing deployed yet.", status=409)
    try:
        spec = build_spec(environment, environment.current_release)
    except SpecError as exc:
        raise ServiceError(exc.message) from exc
    rows = environment.current_release.spec.get("components", [])
    return spec, {r["name"]: r["component"] for r in rows}


def stored_bytes(organization: Organization) -> int:
    """What the organization's backups hold in the repository (new data each one added)."""
    total = Backup.objects.filter(
        environment__project__organization=organization, status=Backup.Status.SUCCEEDED
    ).aggregate(total=Sum("added_bytes"))["total"]
    return int(total or 0)


# --- back up -------------------------------------------------------------------------------------
def request_backup(
    *,
    environment: Environment,
    actor: User | None,
    trigger: str = Backup.Trigger.MANUAL,
    origin: Origin | None = None,
) -> list[Backup]:
    """Queue a backup of every piece of the environment's data (one row each, one batch)."""

    organization = environment.project.organization
    if actor is not None:
        require_role(actor, organization, Role.DEVELOPER)
    if environment.status in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED):
        raise ServiceError("This environment has been destroyed.", status=409)
    pieces = _pieces_of(environment)
    if Backup.objects.filter(environment=environment, status__in=["queued", "running"]).exists():
        raise ServiceError("A backup of this environment is already running.", status=409)
    stack_policy().check_backup(organization=organization, stored_bytes=stored_bytes(organization))
    with transaction.atomic():
        batch, rows = _new_batch(environment, pieces, trigger=trigger, actor=actor)
        record_audit_event(
            action="environment.backup",
            actor=actor,
            organization=organization,
            target=f"environment {environment.pk}",
            data={"batch": batch, "trigger": trigger, "components": [r.component for r in rows]},
            origin=origin,
        )
        for row in rows:
            transaction.on_commit(functools.partial(tasks.run_backup_task.delay, row.pk))
    return rows


def _pieces_of(environment: Environment) -> list[tuple[str, str, str]]:
    spec, codes = _spec_of(environment)
    pieces = targets(spec, codes)
    if not pieces:
        raise ServiceError("This stack keeps no data, so there is nothing to back up.", status=409)
    return pieces


def _new_batch(
    environment: Environment,
    pieces: list[tuple[str, str, str]],
    *,
    trigger: str,
    actor: User | None,
    claimed: bool = False,
) -> tuple[str, list[Backup]]:
    """A new batch: one ``Backup`` row per piece, queued (a task takes each: ``run_backup``)
    or, ``claimed``, already running for a caller that takes them itself (``take_now``)."""
    batch = secrets.token_hex(8)
    now = timezone.now()
    running = (
        {"status": Backup.Status.RUNNING, "attempts": 1, "started_at": now, "heartbeat_at": now}
        if claimed
        else {}
    )
    rows = [
        Backup.objects.create(
            environment=environment,
            batch=batch,
            component=component,
            kind=method,
            volume=volume,
            trigger=trigger,
            requested_by=actor,
            **running,
        )
        for component, method, volume in pieces
    ]
    return batch, rows


def _succeeded(backup: Backup, summary: dict[str, Any], started: float) -> None:
    """Record a piece taken (restic's ``summary``) on its row."""
    Backup.objects.filter(pk=backup.pk).update(
        status=Backup.Status.SUCCEEDED,
        snapshot_id=str(summary.get("snapshot_id", "")),
        size_bytes=int(summary.get("total_bytes_processed", 0)),
        added_bytes=int(summary.get("data_added", 0)),
        duration_seconds=round(time.monotonic() - started, 3),
        finished_at=timezone.now(),
        error="",
    )


def _claim(backup_id: int) -> Backup | None:
    with transaction.atomic():
        backup = Backup.objects.select_for_update().filter(pk=backup_id).first()
        if backup is None or backup.status != Backup.Status.QUEUED:
            return None
        backup.status, backup.attempts = Backup.Status.RUNNING, backup.attempts + 1
        backup.started_at = backup.heartbeat_at = timezone.now()
        backup.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
    return backup


@contextlib.contextmanager
def _heartbeat(model: Any, pk: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(HEARTBEAT_SECONDS):
                model.objects.filter(pk=pk, status="running").update(heartbeat_at=timezone.now())
        finally:
            connection.close()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT_SECONDS + 1)


def run_backup(backup_id: int) -> str | None:
    """Take one backup (the worker). A failure that may pass (store or engine not answering)
    is tried again later, up to ``STACKPORT_BACKUP_MAX_ATTEMPTS``; then it fails with the
    reason on the row. Nothing half written is ever marked good: restic writes the snapshot
    only after the whole stream, and the stream raises before its end when the dump failed."""
    backup = _claim(backup_id)
    if backup is None:
        return None
    environment = Environment.objects.select_related("project__region", "kernel", "current_release").get(
        pk=backup.environment_id
    )
    started = time.monotonic()
    try:
        with _heartbeat(Backup, backup.pk):
            summary = _take(backup, environment)
    except (BackupFailed, BackendError, ServiceError, OSError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        transient = getattr(exc, "transient", False) or (isinstance(exc, BackendError) and not exc.permanent)
        if transient and backup.attempts < settings.STACKPORT_BACKUP_MAX_ATTEMPTS:
            delay = settings.STACKPORT_BACKUP_RETRY_SECONDS * 2 ** (backup.attempts - 1)
            Backup.objects.filter(pk=backup.pk).update(
                status=Backup.Status.QUEUED, error=f"attempt {backup.attempts} failed: {message}"[:5000]
            )
            log.warning("backup_retry", backup=backup.pk, error=message, delay=delay)

            tasks.run_backup_task.apply_async((backup.pk,), countdown=delay)
            return Backup.Status.QUEUED
        log.warning("backup_failed", backup=backup.pk, error=message)
        if backup.trigger == Backup.Trigger.UPLOAD:
            _upload_path(backup.batch).unlink(missing_ok=True)
        Backup.objects.filter(pk=backup.pk).update(
            status=Backup.Status.FAILED,
            error=message[:5000],
            finished_at=timezone.now(),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        return Backup.Status.FAILED
    _succeeded(backup, summary, started)
    if backup.trigger == Backup.Trigger.UPLOAD:
        return _restore_upload(backup)
    last_of_batch = not Backup.objects.filter(batch=backup.batch, status__in=["queued", "running"]).exists()
    if backup.trigger == Backup.Trigger.SCHEDULED and last_of_batch:
        try:  # retention after each scheduled run; a failure here loses no backup
            apply_retention(environment)
        except (BackupFailed, OSError) as exc:
            log.warning("backup_retention_failed", environment=environment.pk, error=str(exc))
    return Backup.Status.SUCCEEDED


def _take(backup: Backup, environment: Environment) -> dict[str, Any]:
    """Stream one piece into the repository; restic's summary. Stale locks are cleared only
    when one stops the backup (a restic run each backup saved), then it is taken again."""
    organization_id = environment.project.organization_id
    ensure_repository(organization_id, unlock=False)
    name = FILE_NAMES[backup.kind].format(component=backup.component, volume=backup.volume)
    tags = [f"env-{environment.pk}", f"component-{backup.component}", f"batch-{backup.batch}"]

    def attempt() -> dict[str, Any]:
        if backup.trigger == Backup.Trigger.UPLOAD:
            stream = _read_file(_upload_path(backup.batch))
        else:
            spec, _codes = _spec_of(environment)
            backend = operations.backend_for(environment)
            stream = backend.dump(
                spec, environment.backend_state, backup.component, backup.kind, backup.volume
            )
        return backup_stream(organization_id, stream, name, tags=tags)

    try:
        return attempt()
    except BackupFailed as exc:
        if "already locked" not in exc.message:
            raise
    _unlock(organization_id)
    return attempt()


# --- an uploaded dump ------------------------------------------------------------------------------
PG_CUSTOM_MARK = b"PGDMP"  # pg_dump -Fc: "PGDMP", 5 version/size bytes, then the format (1: custom)
UPLOADABLE = {"postgresql": "PostgreSQL"}


def _upload_path(batch: str) -> Path:
    if not batch.isalnum():
        raise BackupFailed("This upload has no file.")
    return Path(settings.VAR_DIR) / "backup-uploads" / f"{batch}.dump"


def _read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def upload_restore(
    *,
    environment: Environment,
    component: str,
    upload: Any,
    actor: User | None,
    confirmation: str = "",
    origin: Origin | None = None,
) -> Backup:
    """Restore a component from a dump file the customer uploaded (today: a PostgreSQL
    custom-format dump, ``pg_dump -Fc``). The file is checked first, by its header and by
    ``pg_restore --list`` of the component's own version (``Backend.check_dump``): a file
    they cannot read is refused (400) and nothing is kept or changed. A good one is stored in
    the organization's repository like any backup (a ``Backup`` of trigger *upload*), then
    restored in place the usual way: loaded into fresh volumes first, the replaced data kept
    until the customer keeps or undoes the restore. Admins only; audited."""

    organization = environment.project.organization
    if actor is not None:
        require_role(actor, organization, Role.ADMIN)
    if environment.status in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED):
        raise ServiceError("This environment has been destroyed.", status=409)
    spec, codes = _spec_of(environment)
    code = codes.get(component, "")
    if component not in codes:
        raise ServiceError("This stack has no such component.", field="component", status=404)
    if code not in UPLOADABLE:
        raise ServiceError(
            "Only PostgreSQL dumps (pg_dump -Fc) can be uploaded to restore.", field="component"
        )
    if confirmation.strip() != component:
        raise ServiceError(f"Type the component's name ({component}) to confirm.", field="confirmation")
    size = int(getattr(upload, "size", 0) or 0)
    if size > settings.STACKPORT_UPLOAD_MAX_BYTES:
        limit = settings.STACKPORT_UPLOAD_MAX_BYTES / 2**20
        raise ServiceError(
            f"The file is too large: a dump may be at most {limit:.0f} MB.", field="file", status=413
        )
    upload.seek(0)
    head = upload.read(11)
    if len(head) < 11 or not head.startswith(PG_CUSTOM_MARK) or head[10] != 1:
        raise ServiceError(
            "This file is not a PostgreSQL custom-format dump (made with pg_dump -Fc).", field="file"
        )
    batch = secrets.token_hex(8)
    path = _upload_path(batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    upload.seek(0)
    written = 0
    try:
        with path.open("xb") as out:
            while chunk := upload.read(CHUNK):
                written += len(chunk)
                if written > settings.STACKPORT_UPLOAD_MAX_BYTES:
                    raise ServiceError("The file is too large.", field="file", status=413)
                out.write(chunk)
        try:
            operations.backend_for(environment).check_dump(
                spec, environment.backend_state, component, code, _read_file(path)
            )
        except BackendError as exc:
            if not exc.permanent:
                raise ServiceError(f"The file could not be checked now: {exc.message}", status=503) from exc
            detail = exc.message.rsplit("pg_restore: ", 1)[-1].strip()[:200]
            raise ServiceError(
                f"pg_restore cannot read this file, so nothing was changed: {detail}", field="file"
            ) from exc
        with transaction.atomic():
            backup = Backup.objects.create(
                environment=environment,
                batch=batch,
                component=component,
                kind=code,
                trigger=Backup.Trigger.UPLOAD,
                requested_by=actor,
            )
            record_audit_event(
                action="backup.upload",
                actor=actor,
                organization=organization,
                target=f"environment {environment.pk}",
                data={"backup": backup.pk, "component": component, "bytes": written},
                origin=origin,
            )
            transaction.on_commit(functools.partial(tasks.run_backup_task.delay, backup.pk))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return backup


def _restore_upload(backup: Backup) -> str:
    """An uploaded dump is in the repository: restore it in place (the file goes)."""
    _upload_path(backup.batch).unlink(missing_ok=True)
    backup.refresh_from_db()
    try:
        request_restore(backup=backup, actor=backup.requested_by, confirmation=backup.component)
    except ServiceError as exc:
        Backup.objects.filter(pk=backup.pk).update(error=f"Stored, but not restored: {exc.message}"[:5000])
    return Backup.Status.SUCCEEDED


def backup_stream(
    organization_id: int, stream: Iterator[bytes], name: str, tags: list[str]
) -> dict[str, Any]:
    """``restic backup --stdin`` fed from ``stream``; restic's summary. When the stream raises,
    restic is killed before it can write a snapshot and the error propagates."""
    args = ["backup", "--stdin", "--stdin-filename", name, "--host", "stackport", "--json", "--quiet"]
    for tag in tags:
        args += ["--tag", tag]
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        _restic(organization_id, *args),
        env=_restic_env(organization_id),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    timer = threading.Timer(settings.STACKPORT_BACKUP_TIMEOUT, proc.kill)
    timer.start()
    stopped_early = False
    try:
        try:
            for chunk in stream:
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            stopped_early = True  # restic stopped reading (a lock, the store): stderr says why
            with contextlib.suppress(OSError):
                proc.stdin.close()
        code = proc.wait()
    except BaseException:
        proc.kill()  # no snapshot: restic writes it only after the end of its input
        proc.wait()
        raise
    finally:
        timer.cancel()
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a dump stopped half way removes its helper now
        for reader in readers:
            reader.join(timeout=10)
    if code != 0 or stopped_early:
        detail = b"".join(err).decode(errors="replace").strip()[-500:]
        raise BackupFailed(f"restic could not store the backup: {detail or f'exit {code}'}", transient=True)
    for line in reversed(b"".join(out).decode(errors="replace").splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if data.get("message_type") == "summary":
                return dict(data)
    raise BackupFailed("restic stored the backup but gave no summary", transient=True)


def read_snapshot(organization_id: int, snapshot_id: str, name: str) -> Iterator[bytes]:
    """Stream a stored file back (``restic dump``); raises ``BackupFailed`` at the end when
    restic failed (a damaged repository, a foreign snapshot id)."""
    repository = repository_for(organization_id)
    _check_store(repository)
    if not snapshot_id or not all(c in "0123456789abcdef" for c in snapshot_id):
        raise BackupFailed("This backup has no stored snapshot.")
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        _restic(organization_id, "dump", snapshot_id, f"/{name}"),
        env=_restic_env(organization_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        detail = proc.stderr.read().decode(errors="replace").strip()[-500:]
        raise BackupFailed(f"The backup could not be read from the store: {detail or f'exit {code}'}")


def fail_stale_backups() -> int:
    """Backups whose worker stopped sending heartbeats (killed): marked failed, nothing of
    them is kept (restic wrote no snapshot). The next run takes a new one. An upload still
    queued after ``UPLOAD_STALE_SECONDS`` (its task was never delivered) is failed too; the
    dump file of an upload failed here goes, and so do stray files (``sweep_uploads``)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS)
    lost = now - timedelta(seconds=UPLOAD_STALE_SECONDS)
    failed = 0
    batches: list[str] = []
    for rows, error in (
        (
            Backup.objects.filter(status=Backup.Status.RUNNING, heartbeat_at__lt=stale),
            "The worker stopped during the backup; nothing of it was kept.",
        ),
        (
            Backup.objects.filter(
                status=Backup.Status.QUEUED, trigger=Backup.Trigger.UPLOAD, created_at__lt=lost
            ),
            "The uploaded file was never restored (the task was lost); upload it again.",
        ),
    ):
        with transaction.atomic():
            picked = list(rows.select_for_update(skip_locked=True).values_list("pk", "trigger", "batch"))
            failed += Backup.objects.filter(pk__in=[pk for pk, _, _ in picked]).update(
                status=Backup.Status.FAILED, error=error, finished_at=now
            )
        batches += [batch for _, trigger, batch in picked if trigger == Backup.Trigger.UPLOAD]
    for batch in batches:
        with contextlib.suppress(BackupFailed):
            _upload_path(batch).unlink(missing_ok=True)
    sweep_uploads()
    return failed


def sweep_uploads() -> list[str]:
    """Remove the uploaded dump files older than ``UPLOAD_STALE_SECONDS`` that no queued or
    running backup names (a web process killed between the file and its row, a row failed
    elsewhere). The names removed."""
    folder = Path(settings.VAR_DIR) / "backup-uploads"
    if not folder.is_dir():
        return []
    oldest = time.time() - UPLOAD_STALE_SECONDS
    old = {}
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.is_file() and path.stat().st_mtime < oldest:
                old[path.name.split(".", 1)[0]] = path
    live = set(
        Backup.objects.filter(
            batch__in=list(old), status__in=[Backup.Status.QUEUED, Backup.Status.RUNNING]
        ).values_list("batch", flat=True)
    )
    removed = []
    for batch, path in old.items():
        if batch not in live:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("backup_uploads_swept", files=removed)
    return removed


# --- schedules and retention ---------------------------------------------------------------------
def run_schedules(now: Any = None) -> int:
    """Beat: fail lost backups, queue the scheduled backups that are due (by the plan of
    each organization), apply retention. The number of backups queued."""
    now = now or timezone.now()
    fail_stale_backups()
    queued = 0
    environments = Environment.objects.filter(
        status__in=[EnvironmentStatus.RUNNING, EnvironmentStatus.DEGRADED, EnvironmentStatus.STOPPED],
        current_release__isnull=False,
    ).select_related("project__organization", "project__region", "kernel", "current_release")
    for environment in environments:
        policy = stack_policy().backup_policy(organization=environment.project.organization)
        every = SCHEDULES.get(policy.schedule)
        if every is None:
            continue
        last = (
            Backup.objects.filter(environment=environment, trigger=Backup.Trigger.SCHEDULED)
            .exclude(status=Backup.Status.FAILED)
            .order_by("-created_at")
            .first()
        )
        if last is not None and last.created_at > now - every:
            continue
        try:
            queued += len(
                request_backup(environment=environment, actor=None, trigger=Backup.Trigger.SCHEDULED)
            )
        except ServiceError as exc:
            log.info("scheduled_backup_skipped", environment=environment.pk, reason=exc.message)
    return queued


def apply_retention(environment: Environment) -> int:
    """``restic forget --prune`` by the plan's retention, per component; the rows of the
    snapshots it removed go too. The number removed."""
    policy = stack_policy().backup_policy(organization=environment.project.organization)
    organization_id = environment.project.organization_id
    ensure_repository(organization_id)
    removed: list[str] = []
    components = Backup.objects.filter(environment=environment).values_list("component", flat=True).distinct()
    for component in sorted(set(components)):
        output = _run_restic(
            organization_id,
            "forget",
            "--tag",
            f"env-{environment.pk},component-{component}",
            "--group-by",
            "host",
            "--keep-last",
            "1",
            "--keep-daily",
            str(policy.keep_daily),
            "--keep-weekly",
            str(policy.keep_weekly),
            "--prune",
            "--json",
            timeout=settings.STACKPORT_BACKUP_TIMEOUT,
        )
        for line in output.splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                for group in json.loads(line):
                    for snapshot in group.get("remove") or []:
                        removed += [snapshot.get("id", ""), snapshot.get("short_id", "")]
    removed = [r for r in removed if r]
    if not removed:
        return 0
    done, _ = Backup.objects.filter(environment=environment, snapshot_id__in=removed).delete()
    return done


# --- restore -------------------------------------------------------------------------------------
def restore(
    backup: Backup, environment: Environment, host: str | None = None, log_line: Any = print
) -> list[str]:
    """Put ``backup``'s data into ``environment``'s component of the same name, in place (on
    ``host`` when given: a move restores on the new home). Returns the volumes that keep the
    replaced data. Raises ``BackupFailed``/``BackendError``; the running data is then as it was."""

    if backup.status != Backup.Status.SUCCEEDED:
        raise BackupFailed("Only a finished backup can be restored.")
    source_org = backup.environment.project.organization_id
    if source_org != environment.project.organization_id:
        raise BackupFailed("This backup belongs to another organization.")
    spec, _codes = _spec_of(environment)
    if not any(c.name == backup.component for c in spec.components):
        raise BackupFailed(f"This stack has no component {backup.component}.")
    backend = operations.backend_for(environment)
    state = environment.backend_state
    if host and host not in backend.hosts_of(state)[:1]:
        state = backend.rehome(state, host)
    name = FILE_NAMES[backup.kind].format(component=backup.component, volume=backup.volume)
    chunks = read_snapshot(source_org, backup.snapshot_id, name)
    token = f"{backup.pk}{secrets.token_hex(3)}"
    return backend.restore(
        spec, state, backup.component, backup.kind, chunks, token, backup.volume, log=log_line
    )


def _get_restorable(backup: Backup) -> None:
    if backup.status != Backup.Status.SUCCEEDED:
        raise ServiceError("Only a finished backup can be restored.", status=409)


def request_restore(
    *,
    backup: Backup,
    actor: User | None,
    new_environment: str = "",
    confirmation: str = "",
    origin: Origin | None = None,
) -> Operation:
    """Restore ``backup`` in place (its environment runs the restored data; the replaced
    data is kept until the customer keeps or undoes the restore), or with ``new_environment``
    the whole batch into a new environment of the same project (a staging copy). Admins
    only; the customer types the component's name to confirm an in-place restore."""

    source = backup.environment
    organization = source.project.organization
    if actor is not None:
        require_role(actor, organization, Role.ADMIN)
    _get_restorable(backup)
    with transaction.atomic():
        if new_environment:
            target = _copy_environment(source, new_environment, actor)
        else:
            if confirmation.strip() != backup.component:
                raise ServiceError(
                    f"Type the component's name ({backup.component}) to confirm.", field="confirmation"
                )
            target = Environment.objects.select_for_update().get(pk=source.pk)
            if target.status in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED):
                raise ServiceError("This environment has been destroyed.", status=409)
        params = {"backup": backup.pk, "batch": backup.batch, "component": backup.component}
        if new_environment:
            params["copy_of"] = source.pk
        try:
            with transaction.atomic():
                operation = Operation.objects.create(
                    environment=target,
                    kind=OperationKind.RESTORE,
                    release=target.current_release or target.releases.order_by("-number").first(),
                    previous_release=target.current_release,
                    params=params,
                    requested_by=actor,
                )
        except IntegrityError as exc:
            raise ServiceError(
                "Another operation is still running on this environment; try again when it has finished.",
                status=409,
            ) from exc
        record_audit_event(
            action="environment.restore",
            actor=actor,
            organization=organization,
            target=f"environment {target.pk}",
            data={"operation": operation.pk, **params},
            origin=origin,
        )
        transaction.on_commit(lambda: tasks.restore_task.delay(operation.pk))
    return operation


def _copy_environment(source: Environment, name: str, actor: User | None) -> Environment:
    """A new environment of the same project running the same release (components, versions,
    content) with the same settings: the data comes from the backup."""

    if not name or len(name) > 30 or not all(c.isdigit() or ("a" <= c <= "z") or c == "-" for c in name):
        raise ServiceError(
            "Environment names are 1 to 30 lower-case letters, digits and hyphens.", field="environment"
        )
    if source.project.environments.filter(name=name).exists():
        raise ServiceError("This project has an environment of that name already.", field="environment")
    release = source.current_release
    if release is None:
        raise ServiceError("The environment has nothing deployed to copy.", status=409)
    rows = release.spec.get("components", [])
    stack_policy().check_stack(organization=source.project.organization, rows=rows, environment=None)
    copy = Environment.objects.create(
        project=source.project,
        name=name,
        kernel=source.kernel,
        framework=source.framework,
        template=source.template,
    )
    set_component_rows(copy, rows)
    for var in Variable.objects.filter(environment=source):
        var.pk = None
        var.environment = copy
        var.save()
    Release.objects.create(
        environment=copy,
        number=1,
        spec={"components": rows},
        source=release.source,
        source_detail=release.source_detail,
        content_sha256=release.content_sha256,
        content_files=release.content_files,
        content_bytes=release.content_bytes,
        commit=release.commit,
        images=release.images,
        note=f"copy of {source.name}",
        created_by=actor,
    )
    return copy


def latest_complete_batch(environment: Environment) -> list[Backup]:
    """The pieces of the environment's newest backup whose every piece succeeded; [] when
    there is none."""
    rows = Backup.objects.filter(environment=environment).exclude(batch="").order_by("-created_at", "-pk")
    seen: set[str] = set()
    for batch in rows.values_list("batch", flat=True):
        if batch in seen:
            continue
        seen.add(batch)
        pieces = list(rows.filter(batch=batch))
        if all(p.status == Backup.Status.SUCCEEDED for p in pieces):
            return pieces
    return []


def restore_on_another_host(*, environment: Environment, lost_host: str) -> Operation:
    """The system's own restore (the reconciler; no actor) of a stateful environment whose
    host is lost: its latest complete backup onto the active host of its region and kernel
    line with the most free memory (enough for the stack), then a deploy there. Audited.
    ``ServiceError`` (409): no backup, no host with room, or an operation runs."""

    environment = Environment.objects.select_for_update().get(pk=environment.pk)
    if environment.status in (EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED):
        raise ServiceError("This environment has been destroyed.", status=409)
    if environment.current_release is None:
        raise ServiceError("This environment has nothing deployed yet.", status=409)
    pieces = latest_complete_batch(environment)
    if not pieces:
        raise ServiceError(f"{environment} has no complete backup to restore from.", status=409)
    hosts = list(
        DockerHost.objects.filter(
            region=environment.project.region, kernel=environment.kernel, state=DockerHost.State.ACTIVE
        ).exclude(name=lost_host)
    )
    needed = sum(c.size.memory_mb * c.replicas for c in environment.components.select_related("size"))
    free = operations.free_memory_mb(hosts)
    roomy = [h for h in hosts if free[h.name] >= needed]
    if not roomy:
        raise ServiceError(f"No other active host has {needed} MB free for {environment}.", status=409)
    target = max(roomy, key=lambda h: (free[h.name], h.name))
    taken = min(p.created_at for p in pieces)
    params = {
        "backup": pieces[0].pk,
        "batch": pieces[0].batch,
        "lost_host": lost_host,
        "to_host": target.name,
        "taken_at": taken.isoformat(),
        "reason": "host.down",
        "state_before": environment.backend_state,  # put back when the restore fails
    }
    try:
        with transaction.atomic():
            operation = Operation.objects.create(
                environment=environment,
                kind=OperationKind.RESTORE,
                release=environment.current_release,
                previous_release=environment.current_release,
                params=params,
            )
    except IntegrityError as exc:
        raise ServiceError("Another operation is still running on this environment.", status=409) from exc
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.DEPLOYING,
        status_detail=f"Restoring from the backup of {taken:%Y-%m-%d %H:%M} UTC on another host: "
        f"{lost_host} does not answer.",
    )
    record_audit_event(
        action="environment.restore",
        actor=None,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={"operation": operation.pk, **params},
    )
    transaction.on_commit(lambda: tasks.restore_task.delay(operation.pk))
    return operation


def host_restore_notice(environment: Environment, recent: list[Operation] | None = None) -> str:
    """What the environment page says after its stack was restored from a backup onto
    another host (its own was lost), while that restore is among its ``recent`` operations
    (newest first; read when not given) and the latest restore; "" otherwise."""
    if recent is None:
        recent = list(Operation.objects.filter(environment=environment).order_by("-created_at", "-id")[:6])
    op = next((o for o in recent if o.kind == OperationKind.RESTORE), None)
    if op is None or op.status != OperationStatus.SUCCEEDED or not op.params.get("lost_host"):
        return ""
    taken = op.params.get("taken_at", "")[:16].replace("T", " ")
    return (
        f"Restored from the backup of {taken} UTC on another host ({op.params.get('to_host')}): "
        f"host {op.params['lost_host']} stopped answering. Data written after that backup is lost."
    )


def run_restore(operation_id: int) -> str | None:
    """The worker's part of a restore (``request_restore``)."""

    with transaction.atomic():
        op = Operation.objects.select_for_update().filter(pk=operation_id, kind=OperationKind.RESTORE).first()
        if op is None or op.status != OperationStatus.QUEUED:
            return None
        op.status, op.started_at, op.heartbeat_at = OperationStatus.RUNNING, timezone.now(), timezone.now()
        op.attempts += 1
        op.save(update_fields=["status", "started_at", "heartbeat_at", "attempts"])
    environment = Environment.objects.select_related("project__region", "kernel", "current_release").get(
        pk=op.environment_id
    )
    lines: list[str] = []

    def line(text: str) -> None:
        lines.append(f"{timezone.now():%H:%M:%S} {text}")
        Operation.objects.filter(pk=op.pk).update(log="\n".join(lines)[-20000:])

    backup = Backup.objects.select_related("environment__project").get(pk=op.params["backup"])
    kept: dict[str, list[str]] = {}
    try:
        with _heartbeat(Operation, op.pk):
            if op.params.get("lost_host"):
                pieces = _rebuild_elsewhere(op, environment, line)
            elif op.params.get("copy_of"):
                release = environment.releases.order_by("-number").first()
                assert release is not None
                backend = operations.backend_for(environment)
                line("making the new environment's network and volumes")
                spec = build_spec(environment, release, running=False)
                operations.save_state(
                    environment, backend, backend.apply(spec, environment.backend_state, line)
                )
                Environment.objects.filter(pk=environment.pk).update(current_release=release)
                environment.current_release = release
                pieces = Backup.objects.filter(
                    environment_id=op.params["copy_of"],
                    batch=op.params["batch"],
                    status=Backup.Status.SUCCEEDED,
                )
            else:
                pieces = Backup.objects.filter(pk=backup.pk)
            for piece in pieces.select_related("environment__project"):
                line(f"restoring {piece.component} from the backup of {piece.created_at:%Y-%m-%d %H:%M} UTC")
                kept[piece.component] = restore(piece, environment, log_line=line)
    except (BackupFailed, BackendError, ServiceError, OSError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        line(f"failed: {message}")
        if op.params.get("lost_host"):
            _back_to_lost_host(op, environment)
        if op.params.get("copy_of") or op.params.get("lost_host"):
            Environment.objects.filter(pk=environment.pk).update(
                status=EnvironmentStatus.FAILED, status_detail=f"Restore failed: {message}"[:300]
            )
        else:
            line("the environment keeps its previous data")
        Operation.objects.filter(pk=op.pk).update(
            status=OperationStatus.FAILED, error=message[:5000], finished_at=timezone.now()
        )
        return OperationStatus.FAILED
    params = {**op.params, "kept": {k: v for k, v in kept.items() if v}}
    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.SUCCEEDED, params=params, finished_at=timezone.now()
    )
    if op.params.get("copy_of") or op.params.get("lost_host"):
        deploy = (
            {"reason": "host.down", "from_host": op.params["lost_host"]} if op.params.get("lost_host") else {}
        )
        with transaction.atomic():
            lifecycle.queue_operation(
                environment, OperationKind.DEPLOY, op.requested_by, release=op.release, params=deploy
            )
    return OperationStatus.SUCCEEDED


def _back_to_lost_host(op: Operation, environment: Environment) -> None:
    """A move off a lost host that failed: the environment lives on the lost host again (what
    was made on the new one holds no complete data; the reconciler removes it), so nothing
    starts it on empty volumes; the reconciler restores again later, or it waits for its host."""

    try:
        operations.save_state(
            environment, operations.backend_for(environment), op.params.get("state_before") or {}
        )
    except (BackendError, ServiceError, OSError, ValueError) as exc:
        log.warning("restore_placement_not_reverted", operation=op.pk, error=str(exc))


def _rebuild_elsewhere(op: Operation, environment: Environment, line: Any) -> Any:
    """A move off a lost host: the stack made afresh (stopped) on ``to_host``, its volumes
    empty; the pieces of the backup to restore into them."""

    line(f"{op.params['lost_host']} does not answer: making the stack on {op.params['to_host']}")
    return rebuild_on(environment, environment.backend_state, op.params["to_host"], op.params["batch"], line)


def rebuild_on(
    environment: Environment,
    state: dict[str, Any],
    host: str,
    batch: str,
    line: Any,
    backend: Backend | None = None,
) -> Any:
    """The stack (last at ``state``) made afresh and stopped on ``host``, its volumes empty,
    and recorded there; the pieces of backup ``batch`` to restore into them. A move off a
    lost host and a support move of a stateful environment (``operations``, which hands a
    ``backend`` that sees ``host`` only, so the old copy is not touched) both start here."""

    assert environment.current_release is not None
    backend = backend or operations.backend_for(environment)
    spec = build_spec(environment, environment.current_release, running=False)
    operations.save_state(environment, backend, backend.apply(spec, backend.rehome(state, host), line))
    return Backup.objects.filter(environment=environment, batch=batch, status=Backup.Status.SUCCEEDED)


def take_now(environment: Environment, line: Any, batch: str = "", actor: User | None = None) -> str:
    """A complete backup of every piece of the environment's data, taken here and now in
    the caller's process rather than by queued tasks (a stateful move's last backup, taken
    once writes have stopped); its batch. ``batch``, when every piece of it succeeded, is
    kept as it is (a move resumed after its worker died). Raises ``BackupFailed`` (the
    failed piece says why on its row), ``BackendError`` or ``ServiceError``."""

    done = Backup.objects.filter(environment=environment, batch=batch) if batch else Backup.objects.none()
    if done.exists() and not done.exclude(status=Backup.Status.SUCCEEDED).exists():
        line(f"the backup {batch} taken after the writes stopped is complete")
        return batch
    batch, rows = _new_batch(
        environment, _pieces_of(environment), trigger=Backup.Trigger.MANUAL, actor=actor, claimed=True
    )
    for row in rows:
        line(f"backing up {row.component}{' ' + row.volume if row.volume else ''} ({row.kind})")
        started = time.monotonic()
        try:
            with _heartbeat(Backup, row.pk):
                summary = _take(row, environment)
        except (BackupFailed, BackendError, ServiceError, OSError, ValueError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            Backup.objects.filter(batch=batch, status=Backup.Status.RUNNING).update(
                status=Backup.Status.FAILED, error=message[:5000], finished_at=timezone.now()
            )
            raise
        _succeeded(row, summary, started)
    return batch


def resume_restore(operation_id: int) -> str | None:
    """A restore handed to the operation runner again (the reconciler resumes operations whose
    worker died): a queued one runs; a running one whose worker stopped sending heartbeats
    is failed (``fail_interrupted_restore``), never run again as a redeploy."""
    op = Operation.objects.filter(pk=operation_id, kind=OperationKind.RESTORE).first()
    if op is None:
        return None
    if op.status == OperationStatus.QUEUED:
        return run_restore(operation_id)
    return OperationStatus.FAILED if fail_interrupted_restore(operation_id) else None


def fail_interrupted_restore(operation_id: int) -> bool:
    """Mark a restore whose worker died failed, with why and what to do, and leave its
    environment in a defined state: a copy (or a move off a lost host) that never got its
    data is ``failed``; an environment restored in place is ``degraded`` (the component may
    run on partly restored data) until it is restored again. False when it is not stale."""
    stale = timezone.now() - timedelta(seconds=settings.STACKPORT_OPERATION_STALE_SECONDS)
    with transaction.atomic():
        op = (
            Operation.objects.select_for_update()
            .filter(pk=operation_id, kind=OperationKind.RESTORE, status=OperationStatus.RUNNING)
            .first()
        )
        if op is None or (op.heartbeat_at is not None and op.heartbeat_at > stale):
            return False
        environment = Environment.objects.select_for_update().get(pk=op.environment_id)
        backup = Backup.objects.filter(pk=op.params.get("backup")).first()
        when = f"the backup of {backup.created_at:%Y-%m-%d %H:%M} UTC" if backup else "its backup"
        component = op.params.get("component", "")
        status: str
        if op.params.get("copy_of") or op.params.get("lost_host"):
            status = EnvironmentStatus.FAILED
            detail = f"Restore failed: the worker stopped while restoring {when}."
            detail += (
                " It is restored again automatically."
                if op.params.get("lost_host")
                else " Destroy this environment and restore the backup again."
            )
        else:
            status = (
                environment.status
                if environment.status == EnvironmentStatus.STOPPED
                else EnvironmentStatus.DEGRADED
            )
            detail = (
                f"Restore interrupted: the worker stopped while restoring {component} from {when}; "
                "its data may be only partly restored. Restore the backup again."
            )
        if op.params.get("lost_host"):
            _back_to_lost_host(op, environment)
        message = f"The worker stopped during the restore. {detail}"
        Operation.objects.filter(pk=op.pk).update(
            status=OperationStatus.FAILED,
            error=message[:5000],
            finished_at=timezone.now(),
            log=(op.log + f"{timezone.now():%H:%M:%S} failed: {message}\n")[-20000:],
        )
        Environment.objects.filter(pk=environment.pk).update(status=status, status_detail=detail[:300])
    log.warning("restore_interrupted", operation=operation_id, environment=environment.pk)
    return True


def pending_restore(environment: Environment) -> Operation | None:
    """The latest restore whose replaced data is still kept, waiting for the customer."""
    op = (
        Operation.objects.filter(environment=environment, kind=OperationKind.RESTORE, status="succeeded")
        .order_by("-created_at")
        .first()
    )
    if op is None or not op.params.get("kept") or op.params.get("settled"):
        return None
    return op


def settle_restore(
    *, operation: Operation, actor: User | None, undo: bool, origin: Origin | None = None
) -> None:
    """The customer keeps the restored data (the replaced data is deleted) or undoes the
    restore (the replaced data is put back). Runs at once: both are local copies."""

    environment = operation.environment
    if actor is not None:
        require_role(actor, environment.project.organization, Role.ADMIN)
    if pending_restore(environment) != operation:
        raise ServiceError("This restore has been settled already.", status=409)
    backend = operations.backend_for(environment)
    kept: dict[str, list[str]] = operation.params["kept"]
    try:
        if undo:
            spec, _codes = _spec_of(environment)
            for component, volumes in kept.items():
                backend.undo_restore(spec, environment.backend_state, component, volumes)
        else:
            for volumes in kept.values():
                backend.drop_kept(environment.key, environment.backend_state, volumes)
    except BackendError as exc:
        raise ServiceError(f"The engine refused: {exc.message}", status=503) from exc
    Operation.objects.filter(pk=operation.pk).update(
        params={**operation.params, "settled": "undone" if undo else "kept"}
    )
    record_audit_event(
        action="environment.restore_undo" if undo else "environment.restore_keep",
        actor=actor,
        organization=environment.project.organization,
        target=f"environment {environment.pk}",
        data={"operation": operation.pk},
        origin=origin,
    )


# --- download ------------------------------------------------------------------------------------
def download(
    *, backup: Backup, actor: User | None, origin: Origin | None = None
) -> tuple[str, Iterator[bytes]]:
    """(file name, stream) of a database backup as a standard dump file: PostgreSQL's custom
    format (``pg_restore``), MariaDB's SQL (``mariadb < file``). Admins only; audited."""
    organization = backup.environment.project.organization
    if actor is not None:
        require_role(actor, organization, Role.ADMIN)
    if not backup.downloadable:
        raise ServiceError("Only finished database backups can be downloaded.", status=409)
    name = FILE_NAMES[backup.kind].format(component=backup.component, volume=backup.volume)
    record_audit_event(
        action="backup.download",
        actor=actor,
        organization=organization,
        target=f"environment {backup.environment_id}",
        data={"backup": backup.pk, "component": backup.component},
        origin=origin,
    )
    stamp = backup.created_at.strftime("%Y%m%d-%H%M%S")
    filename = f"{backup.environment.key}-{stamp}-{name}"
    return filename, read_snapshot(organization.pk, backup.snapshot_id, name)
