"""Content stays within its limits with memory to spare, and stored content is pruned.

The memory-bound tests run the real code in a fresh Python (the worker's or the web
process's part), so what is measured is that code alone: the peak resident memory (VmHWM,
reset when the measured code begins) may rise only ``BOUND`` above where it stood. Keeping
every file of a 150 MB archive in memory, as content once did, would take three times that.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from projects.models import Environment
from projects.services import ServiceError
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import content_store, lifecycle, operations
from tests.conftest import Team, add_memory_host, client_for
from tests.stacks.conftest import REPO_ROOT
from tests.stacks.gitserver import GitServer

MB = 2**20
GB = 2**30
BOUND = 64 * MB

PRELUDE = """
import json, os, sys
import django
django.setup()
from django.conf import settings

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

class Endless:
    '''``size`` bytes of a 1 MB pattern, made as they are read (never held whole).'''
    def __init__(self, size):
        self.size, self.count = size, 0
        self.block = bytes(range(256)) * 4096
    def read(self, n=-1):
        n = self.size - self.count if n is None or n < 0 else min(n, self.size - self.count)
        self.count += n
        return (self.block * (n // len(self.block) + 1))[:n]
    def readline(self, n=-1):
        return self.read(min(n, 65536) if n and n > 0 else 65536)

base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
"""

EPILOGUE = """
print(json.dumps({"result": result, "growth": status("VmHWM") - base}))
"""


def measured(code: str) -> dict[str, Any]:
    """Run ``code`` (it sets ``result``) in a fresh Python: its result, and how far its peak
    resident memory rose while it ran."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + EPILOGUE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    print(f"peak memory growth: {outcome['growth'] / MB:.1f} MB")
    return outcome


# --- memory -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_2gb_upload_is_refused_by_the_web_layer_without_reading_it() -> None:
    outcome = measured("""
from django.core.handlers.wsgi import WSGIHandler
handler = WSGIHandler()

def post(path, body):
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
        "wsgi.url_scheme": "http", "wsgi.input": body, "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": "multipart/form-data; boundary=x", "CONTENT_LENGTH": str(body.size),
        "HTTP_HOST": "localhost",
    }
    answer = {}
    chunks = handler(environ, lambda status, headers: answer.update(status=status, headers=headers))
    answer["body"] = b"".join(chunks).decode()
    return answer

post("/api/warm-up", Endless(2 * 2**30))  # the URL conf and views are imported once
body = Endless(2 * 2**30)
page = post("/environments/1/content/upload/", body)
api = post("/api/environments/1/content", Endless(2 * 2**30))
result = {"page": page["status"], "text": page["body"], "api": api["status"], "json": api["body"],
          "read": body.count, "limit": settings.STACKPORT_UPLOAD_MAX_BYTES}
""")
    result = outcome["result"]
    assert result["page"].startswith("413") and result["api"].startswith("413")
    limit_mb = result["limit"] // MB
    assert result["text"].startswith(f"The upload is too large: an archive may be at most {limit_mb} MB.")
    assert json.loads(result["json"])["detail"] == result["text"]
    assert result["read"] == 0  # refused on its declared length: not a byte of it read
    assert outcome["growth"] < BOUND


@pytest.mark.slow
def test_a_2gb_archive_is_refused_at_the_upload_limit_with_little_memory(tmp_path: Path) -> None:
    outcome = measured(f"""
from stacks.runtime.content import ContentError, normalize_archive
upload = Endless(2 * 2**30)
try:
    normalize_archive(upload, "huge.tar", max_bytes=settings.STACKPORT_UPLOAD_MAX_BYTES, workdir={str(tmp_path)!r})
    result = {{"refused": None}}
except ContentError as exc:
    result = {{"refused": exc.message, "read": upload.count, "limit": settings.STACKPORT_UPLOAD_MAX_BYTES}}
""")
    result = outcome["result"]
    assert result["refused"] == f"The archive is larger than {result['limit'] // MB} MB."
    assert result["read"] < result["limit"] + 2 * MB  # it stopped reading at the limit
    assert outcome["growth"] < BOUND
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_an_archive_of_150mb_unpacked_is_normalized_with_little_memory(tmp_path: Path) -> None:
    """Within the limits: the tar (150 MB of data) is made on disk, hashed as it is written."""
    archive = tmp_path / "site.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for index, size in enumerate([100 * MB, 30 * MB, 20 * MB]):
            info = tarfile.TarInfo(f"site/data-{index}.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    assert archive.stat().st_size < 50 * MB
    work = tmp_path / "work"
    work.mkdir()
    outcome = measured(f"""
import hashlib
from stacks.runtime.content import normalize_archive
with open({str(archive)!r}, "rb") as upload:
    content = normalize_archive(upload, "site.tar.gz", max_bytes=settings.STACKPORT_UPLOAD_MAX_BYTES,
        max_unpacked_bytes=settings.STACKPORT_CONTENT_MAX_BYTES, workdir={str(work)!r})
result = {{"path": str(content.path), "sha256": content.sha256, "files": content.files, "size": content.size}}
""")
    result = outcome["result"]
    assert (result["files"], result["size"]) == (3, 150 * MB)
    assert [p.name for p in work.iterdir()] == [Path(result["path"]).name]
    stored = Path(result["path"])
    assert stored.stat().st_size > 150 * MB
    with tarfile.open(stored) as tar:
        assert [(m.name, m.size) for m in tar] == [
            ("data-0.bin", 100 * MB),
            ("data-1.bin", 30 * MB),
            ("data-2.bin", 20 * MB),
        ]
    assert outcome["growth"] < BOUND


def big_repository(root: Path, size: int) -> None:
    """A bare repository whose one commit holds a ``size`` file that does not compress (a
    1 MB random block over and over: beyond deflate's window), made fast by git's stream to
    a pack."""
    repo = root / "big.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    blob = root / "big.bin"
    block = os.urandom(MB)
    with blob.open("wb") as out:
        for _ in range(size // MB):
            out.write(block)
    git = ["git", f"--git-dir={repo}", "-c", "core.compression=0", "-c", "pack.compression=0"]
    sha = subprocess.run([*git, "hash-object", "-w", str(blob)], check=True, capture_output=True, text=True)
    blob.unlink()
    tree = subprocess.run(
        [*git, "mktree"],
        input=f"100644 blob {sha.stdout.strip()}\tbig.bin\n",
        check=True,
        capture_output=True,
        text=True,
    )
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t"}
    made = subprocess.run(
        [*git, "commit-tree", tree.stdout.strip(), "-m", "big"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **who, "GIT_COMMITTER_EMAIL": "t@example.org"},
    )
    subprocess.run([*git, "update-ref", "refs/heads/main", made.stdout.strip()], check=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_1gb_git_repository_is_refused_by_the_download_limit_with_little_memory(
    tmp_path: Path, git_server: GitServer
) -> None:
    big_repository(tmp_path, GB)
    assert sum(f.stat().st_size for f in (tmp_path / "big.git").rglob("*") if f.is_file()) > GB
    work = tmp_path / "work"
    work.mkdir()
    outcome = measured(f"""
from stacks.runtime.content import ContentError, fetch_git
try:
    fetch_git({git_server.url("big.git")!r}, "main", trusted_hosts=[{git_server.host!r}],
        max_unpacked_bytes=settings.STACKPORT_CONTENT_MAX_BYTES, max_files=settings.STACKPORT_CONTENT_MAX_FILES,
        max_download_bytes=settings.STACKPORT_GIT_MAX_DOWNLOAD_BYTES, timeout=settings.STACKPORT_GIT_TIMEOUT_SECONDS,
        workdir={str(work)!r})
    result = {{"refused": None}}
except ContentError as exc:
    result = {{"refused": exc.message, "limit": settings.STACKPORT_GIT_MAX_DOWNLOAD_BYTES}}
""")
    result = outcome["result"]
    assert result["refused"] == f"The repository is larger than {result['limit'] // MB} MB to download."
    assert outcome["growth"] < BOUND
    assert not list(work.iterdir())  # the partial clone is gone


# --- pruning ------------------------------------------------------------------------------------


def zip_of(text: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.html", text)
    buffer.seek(0)
    return buffer


@pytest.fixture
def environment(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tmp_path: Path,
) -> Environment:
    from stacks import tasks

    settings.VAR_DIR = tmp_path  # a content store of this test's own

    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *args: None)
    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )
    add_memory_host(env)
    assert operations.run_operation(env.operations.get().pk) == OperationStatus.SUCCEEDED
    return env


def deploy(env: Environment, team: Team, text: str, *, run: bool = True) -> int:
    op = lifecycle.deploy_content(
        environment=env, actor=team.developer, archive=zip_of(text), filename="s.zip"
    )
    if run:
        assert operations.run_operation(op.pk) == OperationStatus.SUCCEEDED
    assert op.release is not None
    return op.release.number


def age_the_store() -> None:
    for entry in content_store.directory().iterdir():
        os.utime(entry, (0, 0))


@pytest.mark.django_db
def test_prune_keeps_what_rollback_and_operations_need(environment: Environment, team: Team) -> None:
    numbers = [deploy(environment, team, f"v{n}") for n in range(2, 6)]  # releases 2..5; 5 runs
    assert numbers == [2, 3, 4, 5]
    pending = deploy(environment, team, "v6", run=False)  # queued: its operation needs it
    sha = {r.number: r.content_sha256 for r in environment.releases.all()}
    stray = content_store.directory() / (".tmp-content-" + "x.tar")
    stray.write_bytes(b"left by a killed worker")
    age_the_store()
    fresh = content_store.save(b"\0" * 10240)  # stored a moment ago: its release may be in the making

    removed = content_store.prune(keep_releases=3)

    # Kept: the running release (5), those that ran among the last three (5, 4; 6 did not run
    # yet), the newest (6, its operation queued). Gone: 1, 2, 3 and the stray file.
    assert removed == sorted({sha[1], sha[2], sha[3]} - {fresh.sha256})
    assert all(content_store.exists(sha[n]) for n in (4, 5, pending))
    assert not any(content_store.exists(sha[n]) for n in (1, 2, 3)) and not stray.exists()
    assert content_store.exists(fresh.sha256)


@pytest.mark.django_db
def test_a_release_whose_content_was_pruned_is_no_rollback_target(
    environment: Environment, team: Team, settings: Any
) -> None:
    settings.STACKPORT_CONTENT_KEEP_RELEASES = 2
    for n in range(2, 5):
        deploy(environment, team, f"v{n}")  # releases 2, 3, 4 (running)
    age_the_store()
    content_store.prune()
    with pytest.raises(ServiceError) as refused:
        lifecycle.rollback(environment=environment, actor=team.developer, release_number=2)
    assert refused.value.message == (
        "The content of release 2 was removed to save space (only the last 2 releases keep "
        "theirs), so it cannot be rolled back to. Choose a newer release."
    )
    page = client_for(team.developer).get(reverse("stacks:environment", args=[environment.pk]))
    html = page.content.decode()
    assert html.count("content removed") == 2  # releases 1 and 2
    assert "Roll back to 3" in html and "Roll back to 2" not in html and "Roll back to 1" not in html
    op = lifecycle.rollback(environment=environment, actor=team.developer, release_number=3)
    assert operations.run_operation(op.pk) == OperationStatus.SUCCEEDED


@pytest.mark.django_db
def test_stored_content_is_moved_in_not_copied(tmp_path: Path, settings: Any) -> None:
    settings.VAR_DIR = tmp_path
    from stacks.runtime.content import normalize_archive

    content = normalize_archive(zip_of("hello"), "a.zip", workdir=content_store.workdir())
    stored = content_store.save(content.path)
    assert not content.path.exists() and stored.sha256 == content.sha256 and stored.files == 1
    with content_store.open_archive(stored.sha256) as archive, tarfile.open(fileobj=archive) as tar:
        assert tar.getnames() == ["index.html"]
    again = normalize_archive(zip_of("hello"), "b.zip", workdir=content_store.workdir())
    assert content_store.save(again.path) == stored and not again.path.exists()
    assert [p.name for p in content_store.directory().iterdir()] == [f"{stored.sha256}.tar"]
