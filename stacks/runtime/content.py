"""Customer application content (an uploaded archive or a git branch) made into one safe tar.

The tar holds regular files and folders only, owned by root, normalized modes, a fixed mtime,
sorted: the same content always hashes the same. It is what ``put_archive`` gets. No database,
no settings; every refusal is a ``ContentError`` whose message can be shown to the customer.

Nothing is held in memory whole: the upload is spooled to disk, every file's bytes go to one
temporary file as they are unpacked (counted against the limits as they come), and the tar is
written to a file of its own while it is hashed (``Content.path``, in ``workdir``).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import math
import os
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO, Protocol, cast
from urllib.parse import urlsplit

from stacks.runtime.addresses import AddressRefused, check_host, resolve_public

MAX_ARCHIVE_BYTES = 100 * 2**20  # compressed upload
MAX_UNPACKED_BYTES = 512 * 2**20  # sum of file sizes after unpacking
MAX_FILES = 20_000  # files and folders
GIT_TIMEOUT = 120.0  # seconds for the whole fetch

_SPOOL_IN_MEMORY = 2**20  # an upload up to this size is not written to disk before unpacking
_MTIME = 315_532_800  # 1980-01-01, the zip epoch: fixed so equal content hashes equally
_CHUNK = 64 * 1024
_FORMATS = "zip, tar, tar.gz, tar.bz2 or tar.xz"
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_SCP_URL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*):(?!//)\S+$")
_PORTS = {"https": 443, "http": 80, "ssh": 22}
# git check-ref-format: no leading "-" or "/", no trailing "/" or ".", not "@", no "..", "@{",
# "//", no control characters, space or ~^:?*[\, no part starting with "." or ending in ".lock".
_BAD_BRANCH = re.compile(r"^[-/]|[/.]$|^@$|^HEAD$|\.\.|@\{|//|[\x00-\x20\x7f~^:?*\[\\]|(^|/)\.|\.lock(/|$)")
_ZIP_KINDS = {0: "file", stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}
NO_DEPLOY_KEY = (
    "ssh addresses are fetched with the project's deploy key, and this project has none yet: an "
    "admin generates it on the project page. Add its public half to your git host, then deploy."
)
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


# Files the runtime images read line by line get Unix line ends (the images stay unchanged).
PROCFILE = "Procfile"
_MAX_NORMALIZED_BYTES = 1024 * 1024


class ContentError(Exception):
    """Content was refused. ``message`` is fit for the customer; ``field`` names the form field
    it belongs to: "archive", "git_url" or "branch"."""

    def __init__(self, message: str, field: str = "archive") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Content:
    """A normalized, uncompressed tar ready for ``put_archive`` (the file at ``path``, the
    caller's: move it away, e.g. into the content store, or ``discard`` it; used as a context
    manager it is discarded at the end), and facts about it."""

    path: Path
    sha256: str
    files: int  # regular files
    size: int  # bytes of file data
    root_stripped: str | None = None
    commit: str | None = None
    known_hosts: str = ""  # after a fetch over ssh: the host keys known (recorded on first use)

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Content:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _show(name: str) -> str:
    """A name fit for a message: control characters and undecodable bytes escaped, length capped."""
    escaped = (
        name.encode("unicode_escape") if _BAD_CHARS.search(name) else name.encode("utf-8", "backslashreplace")
    )
    shown = escaped.decode("utf-8")
    return shown if len(shown) <= 200 else shown[:200] + "…"


def _human(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _chunks(src: Readable) -> Iterator[bytes]:
    while chunk := src.read(_CHUNK):
        yield chunk


def _kind(*, link: bool, folder: bool, file: bool) -> str:
    return "link" if link else "dir" if folder else "file" if file else "other"


class _Hashing:
    """A file that hashes what is written to it (and tells how much: tarfile asks)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.digest, self.count = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.count += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.count


class _Tree:
    """Collects checked entries of one archive or work tree, then writes the normalized tar.
    File contents go to one temporary file (``spool``), one after the other: never to memory."""

    def __init__(
        self, source: str, field: str, max_files: int, max_unpacked_bytes: int, workdir: str | None
    ) -> None:
        self.source, self.field = source, field  # "archive" / "repository"
        self.max_files, self.max_unpacked_bytes = max_files, max_unpacked_bytes
        self.workdir = workdir
        self.spool = tempfile.TemporaryFile(dir=workdir)  # closed by __exit__
        self.files: dict[str, tuple[int, int, bool]] = {}  # path: offset, length, executable
        self.dirs: set[str] = set()
        self.parents: set[str] = set()
        self.size = 0

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.spool.close()

    def refuse(self, what: str) -> ContentError:
        return ContentError(f"The {self.source} {what}", self.field)

    def clean(self, name: str) -> str:
        """The relative, normalized form of an entry name; refuses anything that could escape."""
        if _BAD_CHARS.search(name):
            raise self.refuse(f"contains a name with a backslash or a control character: {_show(name)}.")
        if name.startswith("/"):
            raise self.refuse(f"contains an absolute path: {_show(name)}. Paths must be relative.")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(f"contains a path that points outside of it: {_show(name)}.")
        if len(name) > 4096 or any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in parts):
            raise self.refuse(f"contains a name that is too long: {_show(name)}.")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise self.refuse(f"contains a name that is not valid UTF-8: {_show(name)}.") from None
        return "/".join(parts)

    def _claim(self, path: str, *, is_dir: bool) -> None:
        ancestors = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if path in self.files or path in self.dirs:
            raise self.refuse(f"contains {_show(path)} more than once.")
        if any(a in self.files for a in ancestors) or (not is_dir and path in self.parents):
            raise self.refuse(f"contains {_show(path)} both as a file and as a folder.")
        if len(self.files) + len(self.dirs) >= self.max_files:
            raise self.refuse(f"contains more than {self.max_files} files and folders.")
        self.parents.update(ancestors)

    def add(self, name: str, kind: str, src: Readable | None = None, mode: int = 0, target: str = "") -> None:
        """Add one entry of ``kind`` "file", "dir", "link" or anything else (refused)."""
        path = self.clean(name)
        if kind == "link":
            raise self.refuse(f"contains a link: {_show(name)} -> {_show(target)}. Links are not allowed.")
        if kind not in ("file", "dir"):
            raise self.refuse(
                f"contains a device or pipe: {_show(name)}. Only files and folders are allowed."
            )
        if kind == "dir":
            if path:  # "./" names the root itself
                self._claim(path, is_dir=True)
                self.dirs.add(path)
            return
        if not path or src is None:
            raise self.refuse(f"contains a file without a name: {_show(name)}.")
        self._claim(path, is_dir=False)
        start = self.spool.tell()
        for chunk in _chunks(src):  # count what really comes out, never what a header claims
            self.size += len(chunk)
            if self.size > self.max_unpacked_bytes:
                raise self.refuse(f"is larger than {_human(self.max_unpacked_bytes)} when unpacked.")
            self.spool.write(chunk)
        self.files[path] = (start, self.spool.tell() - start, bool(mode & 0o111))

    def _normalize_line_ends(self, path: str) -> None:
        """Rewrite the file at ``path`` (if any) with Unix line ends: a ``Procfile`` saved on
        Windows would otherwise give the runtime a start command ending in ``\r``."""
        entry = self.files.get(path)
        if entry is None or entry[1] > _MAX_NORMALIZED_BYTES:
            return
        offset, length, executable = entry
        self.spool.seek(offset)
        data = self.spool.read(length)
        fixed = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if fixed == data:
            return
        self.spool.seek(0, os.SEEK_END)
        start = self.spool.tell()
        self.spool.write(fixed)
        self.size += len(fixed) - length
        self.files[path] = (start, len(fixed), executable)

    def build(self, *, strip: bool, commit: str | None = None) -> Content:
        if not self.files:
            raise self.refuse("is empty." if not self.dirs else "contains no files, only folders.")
        dirs = self.dirs | self.parents
        root = None
        tops = {path.split("/", 1)[0] for path in dirs | self.files.keys()}
        if strip and len(tops) == 1 and (top := tops.pop()) in dirs:
            root, cut = top, len(top) + 1
            dirs = {d[cut:] for d in dirs if d != top}
            self.files = {path[cut:]: entry for path, entry in self.files.items()}
        self._normalize_line_ends(PROCFILE)
        fd, name = tempfile.mkstemp(dir=self.workdir, prefix=".tmp-content-", suffix=".tar")
        try:
            with os.fdopen(fd, "wb") as out:
                sink = _Hashing(out)
                with tarfile.open(fileobj=cast(IO[bytes], sink), mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in sorted(dirs | self.files.keys()):
                        info = tarfile.TarInfo(path)
                        info.mtime, info.uid, info.gid, info.uname, info.gname = _MTIME, 0, 0, "", ""
                        if path in dirs:
                            info.type, info.mode = tarfile.DIRTYPE, 0o755
                            tar.addfile(info)
                        else:
                            offset, length, executable = self.files[path]
                            info.size, info.mode = length, 0o755 if executable else 0o644
                            self.spool.seek(offset)
                            tar.addfile(info, self.spool)
        except BaseException:
            os.unlink(name)
            raise
        digest = sink.digest.hexdigest()
        return Content(Path(name), digest, len(self.files), self.size, root, commit)


# --- uploaded archives -------------------------------------------------------------------------


class _Limited:
    """A stream that refuses to yield more than ``limit`` bytes: decompression bombs stop here,
    including those hidden in tar headers, which tarfile reads into memory whole."""

    def __init__(self, raw: Readable, limit: int, error: ContentError) -> None:
        self.raw, self.limit, self.error, self.count = raw, limit, error, 0

    def read(self, size: int = -1) -> bytes:
        left = self.limit + 1 - self.count
        data = self.raw.read(left if size < 0 else min(size, left))
        self.count += len(data)
        if self.count > self.limit:
            raise self.error
        return data


def normalize_archive(
    fileobj: Readable,
    filename: str,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_files: int = MAX_FILES,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    workdir: str | None = None,
) -> Content:
    """Check an uploaded archive (format told by its content) and return it as a normalized tar
    (a file in ``workdir``, by default the system's temporary folder)."""
    with (
        _Tree("archive", "archive", max_files, max_unpacked_bytes, workdir) as tree,
        tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=workdir) as spool,
    ):
        for chunk in _chunks(fileobj):
            if spool.tell() + len(chunk) > max_bytes:  # refused before it is written
                raise tree.refuse(f"is larger than {_human(max_bytes)}.")
            spool.write(chunk)
        spool.seek(0)
        head = spool.read(512)
        spool.seek(0)
        if not head:
            raise tree.refuse("is empty.")
        try:
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                _read_zip(spool, tree)
            elif (stream := _decompressed(head, spool)) is not None:
                bomb = tree.refuse(f"is larger than {_human(max_unpacked_bytes)} when unpacked.")
                _read_tar(_Limited(stream, max_unpacked_bytes + 8192 * (max_files + 2), bomb), tree)
            else:
                name = _show(os.path.basename(filename)) or "The file"
                raise ContentError(f"{name} is not a supported archive; upload a {_FORMATS} file.")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise tree.refuse("could not be read; it is damaged or not a valid archive.") from exc
        except NotImplementedError as exc:  # zip compression methods zipfile does not know
            raise tree.refuse("uses a compression method that is not supported.") from exc
        spool.close()  # not needed any more: the tree has what it holds
        return tree.build(strip=True)


def _decompressed(head: bytes, raw: IO[bytes]) -> Readable | None:
    """The tar stream inside an upload, told by magic bytes; None if it is no tar we know."""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw if head[257:262] == b"ustar" or not head.strip(b"\0") else None


def _read_zip(raw: IO[bytes], tree: _Tree) -> None:
    with zipfile.ZipFile(raw) as archive:
        if len(archive.infolist()) > tree.max_files:
            raise tree.refuse(f"contains more than {tree.max_files} files and folders.")
        for info in archive.infolist():
            if info.flag_bits & 0x1:
                raise tree.refuse(f"contains an encrypted file: {_show(info.filename)}. Remove the password.")
            mode = info.external_attr >> 16  # unix mode, when the zip was made on unix
            with archive.open(info) as src:
                target = src.read(4096).decode("utf-8", "replace") if stat.S_ISLNK(mode) else ""
                kind = "dir" if info.is_dir() else _ZIP_KINDS.get(stat.S_IFMT(mode), "other")
                tree.add(info.filename, kind, src, mode, target)


def _read_tar(stream: _Limited, tree: _Tree) -> None:
    # "r|": one forward pass, no seeking, nothing read that we do not count.
    with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as archive:
        for m in archive:
            kind = _kind(link=m.issym() or m.islnk(), folder=m.isdir(), file=m.isreg())
            tree.add(m.name, kind, archive.extractfile(m) if kind == "file" else None, m.mode, m.linkname)


# --- git repositories --------------------------------------------------------------------------

# Only the transports we name may run (no ext::, fd::, ...). Links are checked out as links so
# the walk below sees and refuses them; core.symlinks=false would silently turn them into files.
_GIT_CONFIG = (
    "protocol.allow=never protocol.https.allow=always protocol.http.allow=always protocol.ssh.allow=always"
    " protocol.file.allow=never http.followRedirects=false"
    " core.symlinks=true core.hooksPath=/dev/null core.fsmonitor=false submodule.recurse=false"
).split()
_GIT_ENV = {
    "LC_ALL": "C",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_LFS_SKIP_SMUDGE": "1",
}
_AUTH_FAILED = re.compile(
    r"terminal prompts disabled|Authentication failed|could not read (Username|Password)"
    r"|Permission denied|Host key verification failed"
)


def fetch_git(
    url: str,
    branch: str,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_files: int = MAX_FILES,
    max_download_bytes: int = MAX_UNPACKED_BYTES,
    timeout: float = GIT_TIMEOUT,
    trusted_hosts: Collection[str] = (),
    workdir: str | None = None,
    ssh_key: str | None = None,
    known_hosts: str = "",
) -> Content:
    """Shallow-clone one branch (or tag) of a repository and return its files as a normalized tar
    (a file in ``workdir``, by default the system's temporary folder).

    Only public hosts (or the operator's ``trusted_hosts``, "host" or "host:port"): the host is
    resolved once, checked, and git is pinned to that address; no redirects; the clone is
    bounded in time, in bytes on disk (no file git writes may pass ``max_download_bytes``, and
    the clone's folder is measured while it grows) and in files. Never the worker's own disk,
    keys or git setup; git runs in processes of its own, so the worker's memory stays small.

    Over ssh only with ``ssh_key`` (the project's deploy key, OpenSSH format), written to a
    file of mode 600 for the clone and removed right after, and with the project's own
    ``known_hosts`` (a host seen for the first time is accepted and recorded: the returned
    ``Content.known_hosts`` is the caller's to store; a changed host key is refused).
    """
    source = _check_url(url, trusted_hosts=trusted_hosts)
    _check_branch(branch)
    if source.scheme == "ssh" and not ssh_key:
        raise ContentError(NO_DEPLOY_KEY, "git_url")
    try:
        address = resolve_public(source.host, source.port, trusted=trusted_hosts)
    except AddressRefused as exc:
        raise ContentError(f"Refused: {exc.message}", "git_url") from None
    deadline = time.monotonic() + timeout
    with (
        _Tree("repository", "git_url", max_files, max_unpacked_bytes, workdir) as tree,
        tempfile.TemporaryDirectory(prefix=".tmp-git-", dir=workdir) as home,
    ):
        # A clean environment: nothing from the worker's own git setup, only PATH and proxies.
        env = {name: os.environ[name] for name in ("PATH", *_PROXY_VARS) if name in os.environ}
        identity = _write_private(Path(home, "deploy_key"), ssh_key) if source.scheme == "ssh" else None
        Path(home, "known_hosts").write_text(known_hosts if source.scheme == "ssh" else "")
        env.update(_GIT_ENV, HOME=home, GIT_SSH_COMMAND=_ssh_command(source, address, home, identity))
        pin = [f"http.curloptResolve={source.host}:{source.port}:{_bracketed(address)}"]
        work = Path(home, "work")
        clone = ["clone", "--depth", "1", "--single-branch", "--no-tags", "--branch", branch, "--template="]
        args = [a for c in (*_GIT_CONFIG, *pin) for a in ("-c", c)] + clone + ["--", url, str(work)]
        # git's own files (refs, index, packs) come on top of the work tree's.
        watch = _Watch(work, max_download_bytes, max_files + _GIT_OWN_FILES)
        try:
            code, _, err = _git(args, env, deadline, watch=watch)
        finally:
            if identity is not None:
                identity.unlink(missing_ok=True)  # the key is on disk only while git connects
        if code != 0:
            raise _git_error(err, url, branch, source)
        hosts = Path(home, "known_hosts").read_text() if source.scheme == "ssh" else ""
        commit = _git(["rev-parse", "HEAD"], env, deadline, cwd=work)[1].strip() or None
        for entry in _git(["ls-files", "--stage", "-z"], env, deadline, cwd=work)[1].split("\0"):
            if entry.startswith("160000 "):
                path = entry.partition("\t")[2]
                raise tree.refuse(f"uses a submodule ({_show(path)}). Submodules are not supported.")
        _read_worktree(work, tree)
        shutil.rmtree(work)  # the clone's disk is given back before the tar takes its own
        return replace(tree.build(strip=False, commit=commit), known_hosts=hosts)


@dataclass(frozen=True)
class _Source:
    scheme: str  # https, http or ssh (scp-like addresses are ssh)
    host: str  # lower case, IPv6 without brackets
    port: int


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _write_private(path: Path, key: str | None) -> Path:
    """The deploy key in a file only its owner may read (ssh refuses any other mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key or "")
    return path


def _ssh_command(source: _Source, address: str, home: str, identity: Path | None = None) -> str:
    """ssh pinned to the checked address, with nothing of the worker's: no config, agent,
    identity or known hosts of its user (OpenSSH reads those from the real home, not $HOME).
    Its only identity is the project's deploy key; its only known hosts the project's."""
    options = {
        "BatchMode": "yes",
        "HostName": address,
        "HostKeyAlias": source.host,
        "UserKnownHostsFile": f"{home}/known_hosts",
        "GlobalKnownHostsFile": os.devnull,
        "StrictHostKeyChecking": "accept-new",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "ProxyCommand": "none",
        "ProxyJump": "none",
        "ConnectTimeout": "20",
    }
    key = ["-i", str(identity)] if identity else ["-oIdentityFile=" + f"{home}/no-identity"]
    return shlex.join(["ssh", "-F", os.devnull, *key, *(f"-o{k}={v}" for k, v in options.items())])


def validate_git_source(url: str, branch: str, *, trusted_hosts: Collection[str] = ()) -> str:
    """Check a repository address and branch without running anything or resolving names (for
    the request: the worker resolves and checks the host again before it connects). Returns
    the transport: "https", "http" or "ssh" (which needs the project's deploy key)."""
    source = _check_url(url, trusted_hosts=trusted_hosts)
    _check_branch(branch)
    return source.scheme


def redact_url(url: str) -> str:
    return _redact(url)


def _check_url(url: str, *, trusted_hosts: Collection[str]) -> _Source:
    bad = ContentError(
        f"{_show(_redact(url))} is not a repository address we can fetch. "
        "Use https://host/path, ssh://host/path or git@host:path.",
        "git_url",
    )
    if not url or len(url) > 2048 or url.startswith("-") or _BAD_CHARS.search(url) or re.search(r"\s", url):
        raise bad
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    scheme = match[1].lower() if match else None
    if scheme == "file" or (scheme is None and url.startswith((".", "/", "~"))):
        raise ContentError(
            "Repositories on this server's disk are not allowed: use a public address.", "git_url"
        )
    if scheme is None:
        scp = _SCP_URL.match(url)  # also refuses transports such as ext::command
        if not scp:
            raise bad
        source = _Source("ssh", scp["host"].lower(), 22)
    else:
        try:
            parts = urlsplit(url)
            host, user, port = parts.hostname or "", parts.username or "", parts.port
        except ValueError:
            raise bad from None
        if scheme not in _PORTS or not host or host.startswith("-") or user.startswith("-"):
            raise bad
        source = _Source(scheme, host, port or _PORTS[scheme])
    try:
        check_host(source.host, source.port, trusted=trusted_hosts)
    except AddressRefused as exc:
        raise ContentError(f"Refused: {exc.message}", "git_url") from None
    return source


def _check_branch(branch: str) -> None:
    """The rules of ``git check-ref-format --branch``, checked here so no process sees bad input."""
    if not branch or len(branch) > 255 or _BAD_BRANCH.search(branch):
        raise ContentError(f"{_show(branch) or 'An empty name'} is not a valid branch name.", "branch")


def _redact(url: str) -> str:
    """The URL without the credentials a customer may have put in it: user and password, and
    every query and fragment value (``?private_token=...``). A plain git@ user stays."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]*@", r"\1***@", url)
    url = re.sub(r"^[^/@:]*:[^/@]*@", "***@", url)
    return re.sub(r"([?&#][^=&#]*=)[^&#]*", r"\1***", url)


def _git_error(stderr: str, url: str, branch: str, source: _Source) -> ContentError:
    shown = _show(_redact(url))
    if re.search(r"Remote branch .* not found", stderr):
        return ContentError(f"The branch {_show(branch)} does not exist in {shown}.", "branch")
    if source.scheme == "ssh" and re.search(
        r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed", stderr
    ):
        return ContentError(
            f"The ssh host key of {_show(source.host)} is not the one recorded at this project's first "
            "fetch from it. If the server's key really changed, forget the recorded host keys on the "
            "project page and deploy again.",
            "git_url",
        )
    if source.scheme == "ssh" and re.search(r"Permission denied \(publickey", stderr):
        return ContentError(
            f"{shown} refused the project's deploy key. Add the public key shown on the project "
            "page to the repository (read access is enough) and deploy again.",
            "git_url",
        )
    if _AUTH_FAILED.search(stderr):
        return ContentError(f"The repository {shown} asks for credentials or refused them.", "git_url")
    if re.search(r"returned error: 30[1278]|redirect", stderr, re.IGNORECASE):
        return ContentError(f"The repository {shown} redirects elsewhere; give its final address.", "git_url")
    return ContentError(f"The repository {shown} could not be fetched. Check the address.", "git_url")


_GIT_OWN_FILES = 1000
_FILE_TOO_LARGE = re.compile(r"File too large|File size limit exceeded")


@dataclass(frozen=True)
class _Watch:
    """A clone's folder and how far it may grow: bytes on disk, and files and folders."""

    folder: Path
    max_bytes: int
    max_entries: int

    def limit_files(self) -> None:
        """In git's process, before it starts: no file it writes may pass ``max_bytes`` (the
        kernel stops it there, so a fast download cannot run far past the limit between two
        looks at the folder). Its write fails ("File too large") rather than killing git."""
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored stays ignored in git's helpers
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_bytes, self.max_bytes))


def _git(
    args: list[str],
    env: dict[str, str],
    deadline: float,
    cwd: Path | None = None,
    watch: _Watch | None = None,
) -> tuple[int, str, str]:
    """Run git; ``watch``: stop it once its folder grows past the limits."""
    # Its own session: on timeout we kill git with its helpers (ssh, git-remote-https) at once.
    proc = subprocess.Popen(  # noqa: S603 - an argument list, no shell; url and branch checked above
        ["git", *args],  # noqa: S607 - the server's git, found on its PATH
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=watch.limit_files if watch else None,  # resource limits only
    )
    while True:
        out: bytes | None
        err: bytes | None
        try:
            out, err = proc.communicate(timeout=min(max(deadline - time.monotonic(), 0.01), 0.25))
        except subprocess.TimeoutExpired:
            out = err = None
        refusal = _over_limits(deadline if out is None else math.inf, watch)
        if out is not None and err is not None and proc.returncode != 0 and watch and not refusal:
            if _FILE_TOO_LARGE.search(err.decode("utf-8", "replace")):  # stopped at the file limit
                refusal = _too_large(watch)
        if refusal and out is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if refusal:
            raise refusal
        if out is not None and err is not None:
            return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _too_large(watch: _Watch) -> ContentError:
    return ContentError(f"The repository is larger than {_human(watch.max_bytes)} to download.", "git_url")


def _over_limits(deadline: float, watch: _Watch | None) -> ContentError | None:
    """Why git must stop now, if it must."""
    if watch:
        size, entries = _folder_usage(watch.folder)
        if size > watch.max_bytes:
            return _too_large(watch)
        if entries > watch.max_entries:
            return ContentError(
                f"The repository contains more than {watch.max_entries - _GIT_OWN_FILES} files and folders.",
                "git_url",
            )
    if time.monotonic() >= deadline:
        return ContentError("Fetching the repository took too long.", "git_url")
    return None


def _folder_usage(root: Path) -> tuple[int, int]:
    """Bytes of the files under ``root``, and how many files and folders there are."""
    total = entries = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total, entries


def _read_worktree(root: Path, tree: _Tree) -> None:
    for dirpath, dirnames, filenames in os.walk(root):  # never follows links: they are refused
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            rel, mode = full.relative_to(root).as_posix(), full.lstat().st_mode
            if stat.S_ISREG(mode):
                with full.open("rb") as src:
                    tree.add(rel, "file", src, mode)
            else:
                kind = _kind(link=stat.S_ISLNK(mode), folder=stat.S_ISDIR(mode), file=False)
                tree.add(rel, kind, target=os.readlink(full) if kind == "link" else "")
