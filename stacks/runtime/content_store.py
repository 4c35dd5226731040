"""Release content on the portal's disk: one uncompressed tar per content hash, written
atomically under ``STACKPORT_VAR_DIR/content``. Operations read it back to fill a stack's
content volume on whichever host needs it (also for a rollback, long after the upload).

Content is made in the store's own folder (``workdir``) and moved in by ``save``: a rename,
never a copy through memory. ``prune`` removes the tars no release still needs: the current
release of every live environment, the releases that ran among its last
``STACKPORT_CONTENT_KEEP_RELEASES``, its newest release, and those of unfinished operations.
A release whose content is gone can no longer be rolled back to (``lifecycle.rollback`` says so).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from django.conf import settings
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber

from projects.models import EnvironmentStatus
from stacks.models import ACTIVE_OPERATION_STATUSES, Operation, Release

SHA_RE = re.compile(r"[0-9a-f]{64}")
TMP_PREFIX = ".tmp-"  # being written (here or by stacks.runtime.content), not content yet
FRESH_SECONDS = 3600  # a tar stored (or stored again) this recently stays: its release may be in the making
STALE_TMP_SECONDS = 24 * 3600  # a temporary file this old was left by a killed process
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Stored:
    sha256: str
    files: int
    size: int


def directory() -> Path:
    path = Path(settings.VAR_DIR) / "content"
    path.mkdir(parents=True, exist_ok=True)
    return path


def workdir() -> str:
    """Where content is made before it is stored: the store's folder, so storing is a rename."""
    return str(directory())


def save(archive: Path | bytes) -> Stored:
    """Keep a content tar and say what it holds. A path (a file the caller made, such as
    ``Content.path``) is moved into the store, or removed when the store has that content
    already; bytes (small archives: the template samples) are written to the store."""
    if isinstance(archive, bytes):
        fd, name = tempfile.mkstemp(dir=directory(), prefix=TMP_PREFIX)
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive)
        archive = Path(name)
    try:
        stored = _facts(archive)
        target = directory() / f"{stored.sha256}.tar"
        try:
            os.utime(target)  # stored already; fresh again: prune leaves it while its release is made
        except FileNotFoundError:
            _move(archive, target)
    finally:
        archive.unlink(missing_ok=True)
    return stored


def _move(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Made on another file system: copied next to the target first, then renamed.
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            os.replace(name, target)
        finally:
            Path(name).unlink(missing_ok=True)


class _HashingReader:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def _facts(path: Path) -> Stored:
    """Hash, regular files and their bytes of a tar, in one pass that holds no file in memory."""
    files = size = 0
    with path.open("rb") as raw:
        reader = _HashingReader(raw)
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
            for member in tar:
                if member.isfile():
                    files += 1
                    size += member.size
        while reader.read(_CHUNK):  # the end-of-archive padding tarfile leaves unread
            pass
    return Stored(reader.digest.hexdigest(), files, size)


def path(sha: str) -> Path:
    if not SHA_RE.fullmatch(sha):
        raise ValueError("invalid content hash")
    return directory() / f"{sha}.tar"


def open_archive(sha: str) -> BinaryIO:
    """The stored tar, open for reading (the caller closes it). FileNotFoundError if pruned."""
    return path(sha).open("rb")


def build_path(key: str) -> Path:
    """Where the dependencies built under ``key`` are kept (``stacks.runtime.builds``)."""
    if not SHA_RE.fullmatch(key):
        raise ValueError("invalid build key")
    folder = directory() / "builds"
    folder.mkdir(exist_ok=True)
    return folder / f"{key}.tar"


def exists(sha: str) -> bool:
    return bool(SHA_RE.fullmatch(sha)) and (directory() / f"{sha}.tar").exists()


def pruned(releases: Iterable[Release]) -> set[int]:
    """The ids of those ``releases`` that had content and whose content is gone."""
    return {r.pk for r in releases if r.content_sha256 and not exists(r.content_sha256)}


def needed(keep_releases: int | None = None) -> set[str]:
    """The content hashes some release still needs (see the module docstring)."""

    keep = settings.STACKPORT_CONTENT_KEEP_RELEASES if keep_releases is None else keep_releases
    live = Release.objects.exclude(
        environment__status__in=[EnvironmentStatus.DESTROYING, EnvironmentStatus.DESTROYED]
    )
    ranked = live.annotate(
        rank=Window(RowNumber(), partition_by=[F("environment_id")], order_by=F("number").desc())
    )
    recent = ranked.filter(Q(rank=1) | Q(rank__lte=keep, ran_at__isnull=False))
    current = live.filter(environment__current_release=F("pk"))
    active = Operation.objects.filter(status__in=ACTIVE_OPERATION_STATUSES)
    in_use = Release.objects.filter(
        Q(pk__in=active.values("release_id")) | Q(pk__in=active.values("previous_release_id"))
    )
    shas: set[str] = set()
    for query in (recent, current, in_use):
        shas |= set(query.exclude(content_sha256="").values_list("content_sha256", flat=True))
    return shas


def prune(keep_releases: int | None = None) -> list[str]:
    """Remove the stored content no release needs any more, and temporary files left behind
    by killed processes; returns the hashes removed. Tars stored within ``FRESH_SECONDS`` stay
    (the release naming one may not be committed yet)."""
    keep = needed(keep_releases)
    now = time.time()
    removed = []
    for entry in directory().iterdir():
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if entry.name.startswith(TMP_PREFIX):
            if age > STALE_TMP_SECONDS:  # a tar being made, or a git clone (a folder)
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            continue
        sha = entry.name.removesuffix(".tar")
        if entry.suffix == ".tar" and SHA_RE.fullmatch(sha) and sha not in keep and age > FRESH_SECONDS:
            entry.unlink(missing_ok=True)
            removed.append(sha)
    _prune_builds(keep, now)
    return sorted(removed)


def _prune_builds(keep: set[str], now: float) -> None:
    """Built dependencies go with the last kept content that names them (a cache hit
    refreshes an artifact's time, so one in use stays)."""

    folder = directory() / "builds"
    if not folder.exists():
        return
    kept = Release.objects.filter(content_sha256__in=keep).exclude(build_key="")
    wanted = set(kept.values_list("build_key", flat=True))
    for entry in folder.iterdir():
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        key = entry.name.removesuffix(".tar")
        if entry.name.startswith(TMP_PREFIX):
            if age > STALE_TMP_SECONDS:
                entry.unlink(missing_ok=True)
        elif SHA_RE.fullmatch(key) and key not in wanted and age > FRESH_SECONDS:
            entry.unlink(missing_ok=True)
