"""Release content on the portal's disk: one uncompressed tar per content hash, written
atomically under ``STACKPORT_VAR_DIR/content``. Operations read it back to fill a stack's
content volume on whichever host needs it (also for a rollback, long after the upload)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

SHA_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Stored:
    sha256: str
    files: int
    size: int


def directory() -> Path:
    path = Path(settings.VAR_DIR) / "content"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(archive: bytes) -> Stored:
    sha = hashlib.sha256(archive).hexdigest()
    files = size = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                files += 1
                size += member.size
    target = directory() / f"{sha}.tar"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(archive)
        os.replace(tmp, target)
    return Stored(sha, files, size)


def read(sha: str) -> bytes:
    if not SHA_RE.fullmatch(sha):
        raise ValueError("invalid content hash")
    return (directory() / f"{sha}.tar").read_bytes()


def exists(sha: str) -> bool:
    return bool(SHA_RE.fullmatch(sha)) and (directory() / f"{sha}.tar").exists()
