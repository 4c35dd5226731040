"""Uploaded archives and git branches become one normalized, safe tar (stacks.runtime.content)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stacks.runtime import addresses
from stacks.runtime.content import (
    Content,
    ContentError,
    _check_branch,
    fetch_git,
    normalize_archive,
    redact_url,
)
from tests.stacks.gitserver import GitServer

MTIME = 315_532_800
MB = 2**20


@pytest.fixture(scope="module", autouse=True)
def _temporary_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tars these tests make (and everything git and the spools write) in a folder of the
    module's own, not the system's temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("content")))
        yield


# --- helpers -------------------------------------------------------------------------------------


def make_zip(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """(name, data or None for a folder, unix mode) -> zip bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name + ("/" if data is None else ""), (2020, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data or b"")
    return buffer.getvalue()


def member(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = len(data), 0o644, 1_700_000_000, 1000, 1000
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def make_tar(members: list[tuple[tarfile.TarInfo, bytes]], compression: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def normalize(data: bytes, filename: str = "upload", **limits: int) -> Content:
    limits = {"max_bytes": 10 * MB, "max_files": 100, "max_unpacked_bytes": 10 * MB, **limits}
    return normalize_archive(io.BytesIO(data), filename, **limits)


def listing(content: Content) -> list[tuple[str, str, int, bytes | None]]:
    """(name, "dir"/"file", mode, data) per output member, checking the invariant fields."""
    result = []
    with tarfile.open(content.path, mode="r:") as archive:
        for info in archive:
            assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "", "", MTIME)
            assert info.isdir() or info.isreg()
            data = archive.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            result.append((info.name, "dir" if info.isdir() else "file", info.mode, data))
    return result


def refusal(data: bytes, **limits: int) -> str:
    with pytest.raises(ContentError) as caught:
        normalize(data, **limits)
    assert caught.value.field == "archive"
    return caught.value.message


FILES = {"app.py": b"print('hi')\n", "static/site.css": b"body{}", "bin/run": b"#!/bin/sh\n"}


def files_as_tar(compression: str = "") -> bytes:
    return make_tar(
        [member(name, data, mode=0o775 if name == "bin/run" else 0o600) for name, data in FILES.items()],
        compression,
    )


# --- normalized output -------------------------------------------------------------------------


def test_output_is_sorted_root_owned_with_normalized_modes_and_fixed_mtime():
    content = normalize(files_as_tar("gz"), "app.tar.gz")
    assert listing(content) == [
        ("app.py", "file", 0o644, FILES["app.py"]),
        ("bin", "dir", 0o755, None),
        ("bin/run", "file", 0o755, FILES["bin/run"]),
        ("static", "dir", 0o755, None),
        ("static/site.css", "file", 0o644, FILES["static/site.css"]),
    ]
    assert (content.files, content.size, content.root_stripped, content.commit) == (3, 28, None, None)
    assert len(content.sha256) == 64
    with pytest.raises(FrozenInstanceError):
        content.files = 4  # type: ignore[misc]


def test_the_tar_is_a_file_in_the_workdir_hashed_as_written(tmp_path):
    with normalize_archive(io.BytesIO(files_as_tar("gz")), "app.tar.gz", workdir=str(tmp_path)) as content:
        assert content.path.parent == tmp_path and content.path.name.endswith(".tar")
        with content.open() as tar:
            assert hashlib.sha256(tar.read()).hexdigest() == content.sha256
        assert [p.name for p in tmp_path.iterdir()] == [content.path.name]  # no spool left
    assert not list(tmp_path.iterdir())  # discarded at the end of the block


@pytest.mark.parametrize(
    ("data", "limits"),
    [
        (make_tar([member("a", b"x" * 3000), member("b", b"y" * 3000)], "gz"), {"max_unpacked_bytes": 5000}),
        (make_tar([member("a", b"x"), member("link", type=tarfile.SYMTYPE, linkname="/etc")]), {}),
        (b"PK\x03\x04 not really a zip" * 100, {}),
        (b"x" * 3000, {"max_bytes": 2000}),
    ],
)
def test_a_refused_archive_leaves_no_file_behind(tmp_path, data, limits):
    with pytest.raises(ContentError):
        normalize_archive(io.BytesIO(data), "a", workdir=str(tmp_path), **limits)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz", "zip"])
def test_every_format_gives_the_same_tar(compression):
    if compression == "zip":
        data = make_zip([(n, d, 0o100775 if n == "bin/run" else 0o100600) for n, d in FILES.items()])
    else:
        data = files_as_tar(compression)
    assert normalize(data).sha256 == normalize(files_as_tar()).sha256


def test_format_is_told_by_content_not_by_name():
    assert normalize(files_as_tar("xz"), "app.zip").files == 3
    message = refusal(b"just some text, not an archive" * 20)
    assert "not a supported archive" in message
    with pytest.raises(ContentError, match=r"^notes\.zip is not a supported archive; upload a zip, tar"):
        normalize(b"Rar!\x1a\x07\x00" + bytes(600), "notes.zip")


@pytest.mark.parametrize(
    "data",
    [files_as_tar("gz")[:-40], b"\x1f\x8b" + bytes(100), make_zip([("a", b"x" * 1000, 0o100644)])[:-30]],
    ids=["truncated-gz", "bad-gz", "truncated-zip"],
)
def test_damaged_archives_are_refused(data):
    assert "damaged or not a valid archive" in refusal(data)


def test_gzip_of_something_else_is_refused():
    import gzip

    assert "damaged or not a valid archive" in refusal(gzip.compress(b"hello " * 200))


path_segment = st.text("abcxyz019._-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
file_trees = st.dictionaries(
    st.lists(path_segment, min_size=1, max_size=3).map("/".join), st.binary(max_size=40), min_size=1
).filter(lambda tree: not any(other.startswith(path + "/") for path in tree for other in tree))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=file_trees, data=st.data())
def test_same_files_give_same_sha256_whatever_order_owner_and_time(tree, data):
    order = data.draw(st.permutations(sorted(tree)))
    times = data.draw(st.lists(st.integers(0, 2**33), min_size=len(order), max_size=len(order)))
    shuffled = make_tar([member(n, tree[n], mtime=t, uid=t % 5000) for n, t in zip(order, times)], "gz")
    as_zip = make_zip([(name, tree[name], 0o100640) for name in sorted(tree)])
    first, second = normalize(shuffled), normalize(as_zip)
    assert first.sha256 == second.sha256 and first.path.read_bytes() == second.path.read_bytes()
    prefix = f"{first.root_stripped}/" if first.root_stripped else ""
    unpacked = {prefix + name: body for name, kind, _, body in listing(first) if kind == "file"}
    assert unpacked == tree


@pytest.mark.parametrize(
    ("names", "stripped", "expected"),
    [
        (["project-main/a.txt", "project-main/src/b.py"], "project-main", ["a.txt", "src", "src/b.py"]),
        (["./project-main/", "./project-main/a.txt"], "project-main", ["a.txt"]),
        (["project-main/a.txt", "README"], None, ["README", "project-main", "project-main/a.txt"]),
        (["README"], None, ["README"]),
    ],
)
def test_a_single_top_folder_is_stripped(names, stripped, expected):
    content = normalize(
        make_tar([member(n, type=tarfile.DIRTYPE) if n.endswith("/") else member(n) for n in names])
    )
    assert content.root_stripped == stripped
    assert [name for name, *_ in listing(content)] == expected


def test_a_procfile_saved_on_windows_gets_unix_line_ends():
    """The runtime images read the Procfile with sed: a ``\\r`` would end the start command."""
    procfile = b"web: gunicorn app:app\r\nworker: python jobs.py\r\n"
    other = b"line one\r\nline two\r\n"
    content = normalize(
        make_zip([("app-main/Procfile", procfile, 0o644), ("app-main/notes.txt", other, 0o644)])
    )
    files = {name: data for name, kind, _, data in listing(content)}
    assert files["Procfile"] == b"web: gunicorn app:app\nworker: python jobs.py\n"
    assert files["notes.txt"] == other  # only the Procfile is touched
    assert content.size == len(files["Procfile"]) + len(other)
    unix = normalize(make_zip([("Procfile", files["Procfile"], 0o644), ("notes.txt", other, 0o644)]))
    assert unix.sha256 == content.sha256  # the same app hashes the same whatever its line ends


def test_a_procfile_in_a_subfolder_is_left_alone():
    content = normalize(make_tar([member("docs/Procfile", b"web: x\r\n"), member("app.py")]))
    assert dict((n, d) for n, _, _, d in listing(content))["docs/Procfile"] == b"web: x\r\n"


# --- refusals ----------------------------------------------------------------------------------


def encrypted(data: bytes) -> bytes:
    """Set the 'encrypted' flag on every entry (zipfile cannot write encrypted archives)."""
    raw = bytearray(data)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        while at != -1:
            raw[at + flag_offset] |= 0x1
            at = raw.find(signature, at + 4)
    return bytes(raw)


def pax_named(name: str) -> bytes:
    info, data = member("placeholder", b"x")
    info.pax_headers = {"path": name}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


REFUSALS = {
    "absolute": (make_tar([member("/etc/cron.d/x")]), "contains an absolute path: /etc/cron.d/x."),
    "dotdot": (make_tar([member("a/../../x")]), "contains a path that points outside of it: a/../../x."),
    "zip-dotdot": (make_zip([("../x", b"", 0o100644)]), "points outside of it: ../x."),
    "backslash": (make_zip([("a\\..\\x", b"", 0o100644)]), r"backslash or a control character: a\\..\\x."),
    "newline": (make_tar([member("a\nb")]), r"control character: a\nb."),
    "nul": (pax_named("a\x00b"), r"control character: a\x00b."),
    "symlink": (
        make_tar([member("a/b", type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
        "The archive contains a link: a/b -> /etc/passwd. Links are not allowed.",
    ),
    "hardlink": (
        make_tar([member("a"), member("b", type=tarfile.LNKTYPE, linkname="a")]),
        "contains a link: b -> a.",
    ),
    "zip-symlink": (make_zip([("up", b"../..", 0o120777)]), "contains a link: up -> ../... Links"),
    "device": (make_tar([member("tty", type=tarfile.CHRTYPE)]), "contains a device or pipe: tty."),
    "block": (make_tar([member("sda", type=tarfile.BLKTYPE)]), "contains a device or pipe: sda."),
    "fifo": (make_tar([member("pipe", type=tarfile.FIFOTYPE)]), "contains a device or pipe: pipe."),
    "zip-fifo": (make_zip([("pipe", b"", 0o010644)]), "contains a device or pipe: pipe."),
    "duplicate": (make_tar([member("a", b"1"), member("./a", b"2")]), "contains a more than once."),
    "file-and-folder": (
        make_tar([member("a", b"1"), member("a/b", b"2")]),
        "contains a/b both as a file and as a folder.",
    ),
    "folder-then-file": (
        make_tar([member("a/b", b"1"), member("a", b"2")]),
        "contains a both as a file and as a folder.",
    ),
    "not-utf8": (make_tar([member("caf\udce9.txt")]), r"not valid UTF-8: caf\udce9.txt."),
    "empty-tar": (make_tar([]), "The archive is empty."),
    "empty-upload": (b"", "The archive is empty."),
    "empty-zip": (make_zip([]), "The archive is empty."),
    "only-folders": (make_zip([("a", None, 0o40755)]), "contains no files, only folders."),
    "encrypted": (encrypted(make_zip([("secret.txt", b"x", 0o100644)])), "an encrypted file: secret.txt."),
}


@pytest.mark.parametrize(("data", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_unsafe_archives_are_refused(data, message):
    assert message in refusal(data)


def test_duplicate_zip_entries_are_refused():
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip([("a.txt", b"1", 0o100644), ("a.txt", b"2", 0o100644)])
    assert refusal(data) == "The archive contains a.txt more than once."


@pytest.mark.parametrize("compression", ["gz", "zip"])
def test_too_many_files_are_refused(compression):
    names = [f"f{i}" for i in range(6)]
    data = (
        make_zip([(n, b"", 0o100644) for n in names])
        if compression == "zip"
        else make_tar(map(member, names))
    )
    assert refusal(data, max_files=5) == "The archive contains more than 5 files and folders."
    assert normalize(data, max_files=6).files == 6


def test_upload_over_max_bytes_is_refused():
    data = make_tar([member("a", os.urandom(50_000))])
    assert refusal(data, max_bytes=40_000) == "The archive is larger than 39 KB."


def test_zip_bomb_is_refused_by_counting_real_bytes():
    data = make_zip([("bomb.bin", bytes(50 * MB), 0o100644)])
    assert len(data) < 100_000
    started = time.monotonic()
    assert refusal(data, max_unpacked_bytes=MB) == "The archive is larger than 1 MB when unpacked."
    assert time.monotonic() - started < 2


def test_tar_gz_bomb_is_refused():
    assert "1 MB when unpacked" in refusal(
        make_tar([member("bomb", bytes(20 * MB))], "gz"), max_unpacked_bytes=MB
    )


def test_bomb_hidden_in_a_tar_header_is_refused():
    info, data = member("a", b"x")
    info.pax_headers = {"comment": "x" * (30 * MB)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
    assert "1 MB when unpacked" in refusal(buffer.getvalue(), max_unpacked_bytes=MB, max_files=10)


def test_many_small_files_add_up_to_the_limit():
    data = make_zip([(f"f{i}", bytes(300_000), 0o100644) for i in range(4)])
    assert "1 MB when unpacked" in refusal(data, max_unpacked_bytes=MB)


@settings(max_examples=150, deadline=None)
@given(name=st.text(max_size=30))
def test_any_member_name_is_refused_or_comes_out_safe(name):
    try:
        content = normalize(make_tar([member(name, b"x"), member("other", b"y")]))
    except ContentError as exc:
        assert exc.field == "archive" and exc.message.startswith("The archive ")
        return
    for out, *_ in listing(content):
        assert not out.startswith("/") and ".." not in out.split("/") and "\\" not in out
        assert all(ch >= " " and ch != "\x7f" for ch in out)


# --- git -----------------------------------------------------------------------------------------

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "T",
    "GIT_AUTHOR_EMAIL": "t@example.test",
    "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout


def commit(repo: Path, files: dict[str, bytes], message: str) -> str:
    for name, data in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"app.py": b"v1\n", "run.sh": b"#!/bin/sh\n"}, "one")
    (repo / "run.sh").chmod(0o755)
    commit(repo, {"lib/util.py": b"u\n"}, "two")
    git(repo, "checkout", "-q", "-b", "feature/new-ui")
    commit(repo, {"app.py": b"v2\n", "ui/index.html": b"<p>"}, "three")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.fixture
def fetch(git_server: GitServer) -> Callable[..., Content]:
    def fetch(repo: Path, branch: str, **limits: float) -> Content:
        options = {"max_unpacked_bytes": MB, "max_files": 100, "timeout": 30, **limits}
        url = git_server.url(repo.name)
        return fetch_git(url, branch, trusted_hosts=[git_server.host], **options)  # type: ignore[arg-type]

    return fetch


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name resolves to one public address (the fake git of these tests never connects)."""

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)


def test_fetch_each_branch(repo, fetch):
    main, feature = fetch(repo, "main"), fetch(repo, "feature/new-ui")
    assert main.commit == git(repo, "rev-parse", "main").strip()
    assert feature.commit == git(repo, "rev-parse", "feature/new-ui").strip()
    assert listing(main) == [
        ("app.py", "file", 0o644, b"v1\n"),
        ("lib", "dir", 0o755, None),
        ("lib/util.py", "file", 0o644, b"u\n"),
        ("run.sh", "file", 0o755, b"#!/bin/sh\n"),
    ]
    assert {name: body for name, _, _, body in listing(feature)}["app.py"] == b"v2\n"
    assert (feature.files, feature.root_stripped) == (4, None)
    assert fetch(repo, "main").sha256 == main.sha256 != feature.sha256


def test_git_and_archive_of_the_same_files_hash_alike(repo, fetch):
    files = {"app.py": b"v1\n", "lib/util.py": b"u\n", "run.sh": b"#!/bin/sh\n"}
    data = make_zip([(n, d, 0o100755 if n == "run.sh" else 0o100644) for n, d in files.items()])
    assert normalize(data).sha256 == fetch(repo, "main").sha256


def test_unknown_branch_is_a_clear_error(repo, fetch, git_server):
    with pytest.raises(ContentError) as caught:
        fetch(repo, "nope")
    assert caught.value.field == "branch"
    assert caught.value.message == f"The branch nope does not exist in {git_server.url('repo')}."


def test_symlink_in_repository_is_refused(repo, fetch):
    (repo / "passwd").symlink_to("/etc/passwd")
    commit(repo, {}, "link")
    with pytest.raises(ContentError, match=r"^The repository contains a link: passwd -> /etc/passwd\. Links"):
        fetch(repo, "main")


def test_submodule_in_repository_is_refused(repo, fetch):
    git(
        repo,
        "update-index",
        "--add",
        "--cacheinfo",
        f"160000,{git(repo, 'rev-parse', 'HEAD').strip()},vendor/lib",
    )
    git(repo, "commit", "-q", "-m", "submodule")
    with pytest.raises(ContentError, match=r"uses a submodule \(vendor/lib\)"):
        fetch(repo, "main")


def test_repository_limits_apply(repo, fetch):
    with pytest.raises(ContentError, match=r"^The repository contains more than 2 files and folders"):
        fetch(repo, "main", max_files=2)
    with pytest.raises(ContentError, match=r"^The repository is larger than 5 bytes when unpacked"):
        fetch(repo, "main", max_unpacked_bytes=5)


def test_unreachable_repository(tmp_path, fetch):
    with pytest.raises(ContentError) as caught:
        fetch(tmp_path / "missing", "main")
    assert caught.value.field == "git_url"
    assert caught.value.message.endswith("could not be fetched. Check the address.")


@pytest.fixture
def fake_git(tmp_path, monkeypatch):
    """A `git` first on PATH whose behaviour a test writes as a shell script body."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def install(body: str) -> Path:
        script = bin_dir / "git"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        return script

    return install


def test_timeout_kills_git_and_its_helpers(fake_git, tmp_path, public_dns):
    marker = tmp_path / "survived"
    fake_git(f"(sleep 1; touch {marker}) & sleep 30")
    started = time.monotonic()
    with pytest.raises(ContentError, match=r"^Fetching the repository took too long"):
        fetch_git("https://git.example.test/a.git", "main", timeout=0.3)
    assert time.monotonic() - started < 1
    time.sleep(1.5)
    assert not marker.exists()


def test_credentials_never_reach_messages(fake_git, public_dns):
    fake_git("echo \"fatal: unable to access 'https://bob:s3cret@git.example.test/a.git/'\" >&2; exit 128")
    with pytest.raises(ContentError) as caught:
        fetch_git("https://bob:s3cret@git.example.test/a.git", "main")
    assert (
        caught.value.message
        == "The repository https://***@git.example.test/a.git could not be fetched. Check the address."
    )
    fake_git(
        "echo 'fatal: could not read Username for https://git.example.test: terminal prompts disabled' >&2; exit 128"
    )
    with pytest.raises(ContentError, match="asks for credentials"):
        fetch_git("https://tok3n@git.example.test/a.git", "main")
    for url in ("https://bob:s3cret@git.example.test/a b.git", "bob:s3cret@git.example.test:a.git"):
        with pytest.raises(ContentError) as caught:
            fetch_git(url, "main")
        assert "s3cret" not in caught.value.message and "***@git.example.test" in caught.value.message


def test_git_gets_a_safe_argument_list_and_environment(fake_git, tmp_path, public_dns):
    log = tmp_path / "log"
    fake_git(
        f'for a in "$@"; do echo "$a" >> {log}; done; env >> {log}; stat -c "key=%a %s" "$HOME/deploy_key" >> {log}'
        "; exit 1"
    )
    with pytest.raises(ContentError):
        fetch_git("git@git.example.test:acme/app.git", "release/1.0", timeout=5, ssh_key="KEY\n")
    lines = log.read_text().splitlines()
    clone = lines.index("clone")
    assert lines[clone:clone + 11] == [
        "clone", "--depth", "1", "--single-branch", "--no-tags", "--branch", "release/1.0", "--template=", "--",
        "git@git.example.test:acme/app.git", lines[clone + 10],
    ]  # fmt: skip
    assert {
        "protocol.allow=never",
        "protocol.file.allow=never",
        "http.followRedirects=false",
        "http.curloptResolve=git.example.test:22:93.184.215.14",
        "core.symlinks=true",
    } <= set(lines)
    ssh = next(line for line in lines if line.startswith("GIT_SSH_COMMAND="))
    home = Path(lines[clone + 10]).parent
    for option in (
        "-F /dev/null",
        "-oHostName=93.184.215.14",
        "-oIdentityAgent=none",
        "-oIdentitiesOnly=yes",
    ):
        assert option in ssh
    # Only the project's deploy key, from a file of mode 600 removed once git is done.
    assert f"-oUserKnownHostsFile={home}/known_hosts" in ssh and f"-i {home}/deploy_key" in ssh
    assert "IdentityFile" not in ssh and "key=600 4" in lines and not home.exists()
    assert {
        "GIT_TERMINAL_PROMPT=0",
        "GIT_CONFIG_NOSYSTEM=1",
        f"HOME={Path(lines[clone + 10]).parent}",
    } <= set(lines)


BAD_URLS = [
    "ext::sh -c touch% /tmp/pwned",
    "ext::sh",
    "--upload-pack=touch /tmp/pwned",
    "-u",
    "ssh://-oProxyCommand=touch%20/tmp/pwned/x",
    "ssh://-oProxyCommand=x@host/x",
    "git@-oProxyCommand=x:path",
    "https://host/a.git --upload-pack=x",
    "https://host/a\n.git",
    "fd::17",
    "file:///etc",
    "/srv/repos/app.git",
    "../app.git",
    "git://host/a.git",
    "ftp://host/a.git",
    "https:///nohost",
    "",
]
BAD_BRANCHES = [
    "--upload-pack=touch /tmp/x",
    "-b",
    "main;rm -rf /",
    "a b",
    "a..b",
    "a//b",
    "/main",
    "main/",
    "main.",
    "main.lock",
    "x/.hidden",
    "a@{1}",
    "@",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[",
    "a\\b",
    "a\x00",
    "",
]


@pytest.mark.parametrize(
    ("url", "branch"),
    [(u, "main") for u in BAD_URLS] + [("https://git.example.org/a.git", b) for b in BAD_BRANCHES],
)
def test_injection_is_refused_before_any_process_runs(monkeypatch, url, branch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    with pytest.raises(ContentError) as caught:
        fetch_git(url, branch)
    assert caught.value.field == ("git_url" if branch == "main" else "branch")


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/app.git",
        "http://git.example.org:8080/a",
        "ssh://git@git.example.org:2222/a.git",
        "git@github.com:acme/app.git",
    ],
)
def test_ordinary_urls_are_accepted(fake_git, url, public_dns):
    fake_git("exit 1")
    with pytest.raises(ContentError, match="could not be fetched"):
        fetch_git(url, "main", ssh_key="KEY\n")


@settings(max_examples=200, deadline=None)
@given(branch=st.text(st.characters(codec="utf-8"), min_size=1, max_size=12))
@example(branch="HEAD")  # found by this test in CI: git refuses it as a branch name
def test_branch_rules_are_never_looser_than_git(branch):
    try:
        _check_branch(branch)
    except ContentError:
        return
    checked = subprocess.run(
        ["git", "check-ref-format", "--branch", branch], capture_output=True, env=GIT_ENV
    )
    assert checked.returncode == 0, branch


# --- git fetches cannot be pointed inward ----------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A loopback port that records every connection made to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    accepted: list[object] = []
    yield int(sock.getsockname()[1]), accepted
    while True:
        try:
            accepted.append(sock.accept())
        except (TimeoutError, OSError):
            break
    sock.close()


HOSTILE_URLS = [
    "file:///work/main",
    "file://localhost/etc",
    "/work/main/.git",
    "./repo",
    "~/repo",
    "ext::sh -c id",
    "--upload-pack=touch /tmp/x",
    "http://127.0.0.1:{port}/a.git",
    "http://localhost:{port}/a.git",
    "http://LOCALHOST.:{port}/a.git",
    "http://app.localhost:{port}/a.git",
    "http://127.1:{port}/a.git",
    "http://2130706433:{port}/a.git",
    "http://0x7f000001:{port}/a.git",
    "http://0177.0.0.1:{port}/a.git",
    "http://0.0.0.0:{port}/a.git",
    "http://[::1]:{port}/a.git",
    "http://[::]:{port}/a.git",
    "http://[::ffff:127.0.0.1]:{port}/a.git",
    "http://[::ffff:7f00:1]:{port}/a.git",
    "http://[2002:7f00:1::1]:{port}/a.git",
    "http://[64:ff9b::7f00:1]:{port}/a.git",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/a.git",
    "http://[fd00::1]/a.git",
    "http://10.0.0.1/a.git",
    "http://172.16.5.4/a.git",
    "http://192.168.1.1/a.git",
    "http://100.64.0.1/a.git",
    "http://224.0.0.1/a.git",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://printer.local/a.git",
    "http://gitserver:{port}/a.git",
    "ssh://git@127.0.0.1:{port}/a.git",
    "git@localhost:acme/app.git",
    "git@10.1.2.3:acme/app.git",
]


@pytest.mark.parametrize("template", HOSTILE_URLS)
def test_hostile_git_urls_are_refused_before_any_connection(monkeypatch, listener, template):
    port, accepted = listener
    url = template.format(port=port)

    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    with pytest.raises(ContentError) as caught:
        fetch_git(url, "main")
    assert caught.value.field == "git_url"
    assert caught.value.message.startswith(("Refused: ", "Repositories on this server's disk", url[:8]))
    assert not accepted


def test_a_name_that_resolves_inward_is_refused_when_fetched(monkeypatch, listener):
    port, accepted = listener

    def getaddrinfo(host, port, *args, **kwargs):
        answers = {"inward.example.org": "127.0.0.1", "mixed.example.org": "10.0.0.7"}
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers.get(host, "93.184.215.14"), port))] + (
            [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]
            if host == "mixed.example.org"
            else []
        )

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)
    for host in ("inward.example.org", "mixed.example.org"):
        with pytest.raises(ContentError) as caught:
            fetch_git(f"http://{host}:{port}/a.git", "main")
        assert (
            caught.value.message
            == f"Refused: {host} points to an address that is not public; only public hosts can be fetched from."
        )
        assert "127.0.0.1" not in caught.value.message and "10.0.0.7" not in caught.value.message
    assert not accepted


def test_git_connects_to_the_address_it_checked(monkeypatch, repo, git_server):
    """The name is resolved once by us and git is pinned to that answer: a name nothing else
    resolves (repo.example.org) reaches the git_server at the address we checked."""

    def getaddrinfo(host, port, *args, **kwargs):
        assert host == "repo.example.org"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)
    url = f"http://repo.example.org:{git_server.port}/repo"
    content = fetch_git(url, "main", trusted_hosts=[f"repo.example.org:{git_server.port}"], timeout=30)
    assert content.commit == git(repo, "rev-parse", "main").strip()
    with pytest.raises(
        ContentError, match=r"^Refused: repo.example.org points to an address that is not public"
    ):
        fetch_git(url, "main", trusted_hosts=[f"repo.example.org:{git_server.port + 1}"], timeout=30)


def test_redirects_are_not_followed(repo, git_server, listener):
    port, accepted = listener
    git_server.redirects["/moved/"] = f"http://127.0.0.1:{port}/"
    with pytest.raises(ContentError) as caught:
        fetch_git(git_server.url("moved/repo"), "main", trusted_hosts=[git_server.host], timeout=30)
    assert caught.value.message == (
        f"The repository {git_server.url('moved/repo')} redirects elsewhere; give its final address."
    )
    assert not accepted


def test_a_fetch_leaves_only_its_tar_in_the_workdir(repo, git_server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    content = fetch_git(git_server.url("repo"), "main", trusted_hosts=[git_server.host], workdir=str(work))
    assert [p.name for p in work.iterdir()] == [content.path.name]
    with pytest.raises(ContentError):
        fetch_git(git_server.url("repo"), "nope", trusted_hosts=[git_server.host], workdir=str(work))
    assert [p.name for p in work.iterdir()] == [content.path.name]


def test_a_large_download_is_stopped_at_its_limit(repo, git_server):
    commit(repo, {"blob.bin": os.urandom(3 * MB)}, "big")
    with pytest.raises(ContentError, match=r"^The repository is larger than 1 MB to download"):
        fetch_git(
            git_server.url("repo"), "main", trusted_hosts=[git_server.host], max_download_bytes=MB, timeout=60
        )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bob:s3cret@git.example.org/a.git", "https://***@git.example.org/a.git"),
        (
            "https://git.example.org/a.git?private_token=s3cret",
            "https://git.example.org/a.git?private_token=***",
        ),
        (
            "https://git.example.org/a.git?x=1&token=s3cret#k=s3cret",
            "https://git.example.org/a.git?x=***&token=***#k=***",
        ),
        ("oauth2:s3cret@git.example.org:a.git", "***@git.example.org:a.git"),
        ("git@git.example.org:acme/app.git", "git@git.example.org:acme/app.git"),
    ],
)
def test_credentials_are_redacted(url, shown):
    assert redact_url(url) == shown
