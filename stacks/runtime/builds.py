"""Dependency builds: the release's content gets the packages its lock file names.

A runtime component (Python, Node.js, PHP-FPM) whose content has a lock file gets its
dependencies installed by the package manager of its own image (same image, by digest, as
the one that will run), in a build container on an internal network of its own (never the
stack's) whose only way out is an egress proxy that lets through the registries' (or the
mirrors') host names only (``egress``), through the backend (``Backend.build``). The
artifact, a tar of ``.deps/`` (pip, put on PYTHONPATH by the image), ``node_modules/`` (npm
ci) or ``vendor/`` (composer install), is kept in the content store under its build key and
unpacked into the release's content volume on top of the content.

The build key is the SHA-256 of the organization, the package manager, the runtime image
(by digest) and the build's inputs: the lock file and every file the package manager reads
besides it (``-r`` includes and constraints, ``requirements/``, ``.npmrc``, ``package.json``,
``composer.json``, ``auth.json``, ...). When the lock points at the content itself (local
paths, ``-e .``, ``file:`` packages, install scripts, composer path repositories or scripts),
the whole content counts too. So a code-only change reuses the build, a changed input rebuilds,
and an artifact is never shared between organizations. Each build
runs in a container and volume of its own (the key and a random suffix); the artifact is
capped at ``STACKPORT_BUILD_MAX_BYTES``. The log streams into the operation as it comes; a
failed build names the line that says why and fails the operation before anything was
switched. Build seconds are recorded on the operation (``params["build"]``) and metered
(``billing.metering``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import tarfile
import tempfile
import time
import tomllib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

from django.conf import settings

from stacks.backends.base import Backend, BuildJob, StackSpec
from stacks.models import ComponentVersion, Release
from stacks.runtime import content_store

STEP = "Build the dependencies"
RECIPE = "1"  # bump when the scripts below change what an artifact holds: old keys miss
MAX_LOCK_BYTES = 4 * 2**20
MAX_LOGGED_LINES = 3000  # a build's lines in the operation's log; the rest is counted

# STACKPORT_LOCK is the lock file's name, one of the fixed names of the builder below.
PIP_SCRIPT = r"""set -eu
mkdir -p /build/out/.deps
cd /build/app
exec python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input \
    --progress-bar off --no-warn-script-location --target /build/out/.deps -r "$STACKPORT_LOCK"
"""
# pyproject.toml without a lock: pip resolves the project's dependencies from the index (a dry
# run that reports what it would install), then installs exactly those, pinned, without the
# project itself (its code runs from /srv/app): so the artifact depends on pyproject.toml (and
# setup.py/setup.cfg), never on the code, and a code-only change may reuse it. The static
# ``[project] dependencies`` are read as they are (the project is not built: an app is rarely a
# package setuptools can discover); dynamic ones need the project's metadata, made by its build
# backend. The resolved pins are printed (a requirements.lock to commit for a locked build).
PIP_PROJECT_SCRIPT = r"""set -eu
mkdir -p /build/out/.deps
cd /build/app
if python3 - <<'PY' > /tmp/pip-wanted.txt
import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file).get("project", {})
if "dependencies" in project.get("dynamic", []):
    sys.exit(1)
print("\n".join(project.get("dependencies", [])))
PY
then
    set -- -r /tmp/pip-wanted.txt
else
    echo "pyproject.toml's dependencies are dynamic: pip builds the project's metadata to learn them"
    set -- .
fi
python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input --progress-bar off \
    --dry-run --ignore-installed --quiet --report /tmp/pip-report.json "$@"
python3 - <<'PY' > /tmp/pip-resolved.txt
import json

with open("/tmp/pip-report.json", encoding="utf-8") as report:
    for item in json.load(report)["install"]:
        info, meta = item.get("download_info") or {}, item["metadata"]
        if "dir_info" in info:
            continue  # the project itself: its code runs from /srv/app
        if item.get("is_direct"):
            print(f"{meta['name']} @ {info['url']}")
        else:
            print(f"{meta['name']}=={meta['version']}")
PY
echo "resolved from pyproject.toml (not locked; commit these lines as requirements.lock to lock them):"
sed 's/^/    /' /tmp/pip-resolved.txt
if [ ! -s /tmp/pip-resolved.txt ]; then
    echo "pyproject.toml declares no dependencies: nothing to install"
    exit 0
fi
exec python3 -m pip install --no-cache-dir --disable-pip-version-check --no-input \
    --progress-bar off --no-warn-script-location --target /build/out/.deps --no-deps \
    -r /tmp/pip-resolved.txt
"""
NPM_SCRIPT = r"""set -eu
cd /build/app
npm ci --omit=dev --no-audit --no-fund --no-update-notifier
mkdir -p node_modules
"""
COMPOSER_SCRIPT = r"""set -eu
cd /build/app
if [ -n "${STACKPORT_PACKAGIST_URL:-}" ]; then
    composer config --global repos.packagist composer "$STACKPORT_PACKAGIST_URL"
fi
composer install --no-dev --no-interaction --no-progress --prefer-dist --optimize-autoloader
mkdir -p vendor
"""


# The registries' host names each package manager needs when no mirror is set.
REGISTRY_HOSTS = {
    "pip": ("pypi.org", "files.pythonhosted.org"),
    "npm": ("registry.npmjs.org",),
    "composer": ("repo.packagist.org", "github.com", "codeload.github.com", "api.github.com"),
}


@dataclass(frozen=True)
class Builder:
    """How one runtime component's dependencies are built."""

    component: str  # the catalog component's code
    tool: str
    lock: tuple[str, ...]  # the lock file (the first of these found)
    also: tuple[str, ...]  # files that must come with it (and count in the key)
    script: str
    output: str
    # A file of ``lock`` that is no lock: found alone, it is built unlocked with this script.
    unlocked: tuple[tuple[str, str], ...] = ()
    # A file of ``lock`` this builder cannot read yet: found first, the build fails saying why.
    refused: tuple[tuple[str, str], ...] = ()


BUILDERS = {
    b.component: b
    for b in (
        Builder(
            "python",
            "pip",
            ("requirements.txt", "requirements.lock", "pylock.toml", "pyproject.toml"),
            (),
            PIP_SCRIPT,
            "/build/out/.deps",
            unlocked=(("pyproject.toml", PIP_PROJECT_SCRIPT),),
            refused=(
                (
                    "pylock.toml",
                    "pylock.toml is not read by the pip of Python's images (pip 23 and 25; "
                    "installing from it needs pip 26.1): export the lock as requirements.lock "
                    "(uv export --no-emit-project -o requirements.lock, pdm export, poetry export) "
                    "and commit it next to pyproject.toml.",
                ),
            ),
        ),
        Builder(
            "nodejs",
            "npm",
            ("package-lock.json", "npm-shrinkwrap.json"),
            ("package.json",),
            NPM_SCRIPT,
            "/build/app/node_modules",
        ),
        Builder(
            "php-fpm",
            "composer",
            ("composer.lock",),
            ("composer.json",),
            COMPOSER_SCRIPT,
            "/build/app/vendor",
        ),
    )
}


class BuildFailed(Exception):
    """The build ran and failed (or cannot run): ``message`` is for the customer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Plan:
    builder: Builder
    image: str
    lock_name: str
    key: str
    locked: bool = True  # False: pyproject.toml alone, resolved from the index at build time

    @property
    def script(self) -> str:
        return dict(self.builder.unlocked).get(self.lock_name, self.builder.script)


def open_artifact(key: str) -> BinaryIO:
    """The built dependencies of ``key`` (the caller closes it). FileNotFoundError if gone."""
    return content_store.build_path(key).open("rb")


def wants_build(release: Release) -> bool:
    """May this release's content need a build (a runtime component with a builder)?"""
    return any(row.get("component") in BUILDERS for row in release.spec.get("components", []))


def top_files(archive: Path, names: set[str]) -> dict[str, bytes]:
    """The top-level files of the content tar among ``names``, with their bytes."""
    found: dict[str, bytes] = {}
    with tarfile.open(archive, mode="r:") as tar:  # seekable: file data is skipped, not read
        for member in tar:
            if member.isfile() and member.name in names:
                if member.size > MAX_LOCK_BYTES:
                    raise BuildFailed(f"{member.name} is larger than {MAX_LOCK_BYTES // 2**20} MB.")
                handle = tar.extractfile(member)
                found[member.name] = handle.read() if handle else b""
    return found


# Files each package manager reads besides its lock, anywhere in the content (a path relative
# to the content's root); each counts in the build key.
INPUT_FILES = {
    "pip": re.compile(
        r"^(requirements[^/]*\.(txt|in|lock)|constraints[^/]*\.txt|requirements/.*|pip\.conf|"
        r"setup\.py|setup\.cfg|pyproject\.toml)$"
    ),
    "npm": re.compile(r"^(package\.json|package-lock\.json|npm-shrinkwrap\.json|\.npmrc)$"),
    "composer": re.compile(r"^(composer\.json|composer\.lock|auth\.json)$"),
}
# Signs, in an input file, that the build reads the content itself (so the whole content
# counts in the key): local paths, editable installs, file: packages, install scripts.
LOCAL_INPUTS: dict[str, tuple[tuple[str, re.Pattern[bytes]], ...]] = {
    "pip": (
        ("requirements.txt", re.compile(rb"(?m)^\s*(-e|--editable|\.|/|file:)|@\s*file:")),
        ("requirements.lock", re.compile(rb"(?m)^\s*(-e|--editable|\.|/|file:)|@\s*file:")),
        ("pyproject.toml", re.compile(rb"@\s*file:")),
    ),
    "npm": (
        ("package-lock.json", re.compile(rb'"(resolved"\s*:\s*"file:|link"\s*:\s*true)')),
        ("npm-shrinkwrap.json", re.compile(rb'"(resolved"\s*:\s*"file:|link"\s*:\s*true)')),
        ("package.json", re.compile(rb'"(preinstall|install|postinstall|prepare)"\s*:')),
    ),
    "composer": (
        ("composer.lock", re.compile(rb'"type"\s*:\s*"path"')),
        ("composer.json", re.compile(rb'"(type"\s*:\s*"path|scripts")')),
    ),
}


def build_inputs(archive: Path, builder: Builder) -> dict[str, bytes]:
    """The files of the content tar that the builder's package manager reads, with their bytes
    (each at most ``MAX_LOCK_BYTES``)."""
    pattern = INPUT_FILES[builder.tool]
    found: dict[str, bytes] = {}
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and pattern.match(name):
                if member.size > MAX_LOCK_BYTES:
                    raise BuildFailed(f"{name} is larger than {MAX_LOCK_BYTES // 2**20} MB.")
                handle = tar.extractfile(member)
                found[name] = handle.read() if handle else b""
    return found


def project_without_dependencies(pyproject: bytes) -> str:
    """Why a pyproject.toml names no dependencies to build ('' when it does): only a PEP 621
    ``[project]`` table with ``dependencies`` (or dynamic ones) does. A pyproject.toml of tool
    settings only (``[tool.ruff]``) or of Poetry 1 (``[tool.poetry.dependencies]``) builds nothing."""
    try:
        data = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"is not valid TOML ({exc})"
    project = data.get("project")
    if not isinstance(project, dict):
        return "has no [project] table (PEP 621)"
    if project.get("dependencies") or dynamic_dependencies(pyproject):
        return ""
    return "declares no dependencies in [project]"


def dynamic_dependencies(pyproject: bytes) -> bool:
    """Does the pyproject.toml leave its dependencies to its build backend (``dynamic``)?"""
    try:
        project = tomllib.loads(pyproject.decode("utf-8")).get("project")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    dynamic = project.get("dynamic") if isinstance(project, dict) else None
    return isinstance(dynamic, list) and "dependencies" in dynamic


def plan(release: Release, spec: StackSpec, log: Callable[[str], None]) -> Plan | None:
    """What to build for the release's content, or None (no runtime component, no lock)."""
    images = {c.name: c.image for c in spec.components if c.content_path}
    rows = [r for r in release.spec.get("components", []) if r.get("name") in images]
    builders = [(BUILDERS[r["component"]], images[r["name"]]) for r in rows if r.get("component") in BUILDERS]
    if not builders or not release.content_sha256:
        return None
    organization = release.environment.project.organization_id
    builder, image = builders[0]  # the first runtime component's image builds for all of them
    wanted = {*builder.lock, *builder.also}
    files = top_files(content_store.path(release.content_sha256), wanted)
    lock = next((name for name in builder.lock if name in files), None)
    if lock is None:
        if builder.component == "nodejs" and "package.json" in files:
            log("package.json without package-lock.json: nothing installed (commit the lock file to build)")
        elif builder.component == "python":
            log(
                "no requirements.txt: no dependencies to install "
                "(no requirements.lock or pyproject.toml either)"
            )
        else:
            log(f"no {' or '.join(builder.lock)}: no dependencies to install")
        return None
    refused = dict(builder.refused).get(lock)
    if refused:
        raise BuildFailed(refused)
    locked = lock not in dict(builder.unlocked)
    if not locked:
        why_not = project_without_dependencies(files[lock])
        if why_not:
            log(f"{lock} {why_not}: no dependencies to install")
            return None
        log(
            f"{lock} without a lock (requirements.txt or requirements.lock): NOT LOCKED, its "
            f"dependencies are resolved from the package index now and the build is cached by the "
            f"hash of {lock}; the same {lock} reuses this build, whatever the index offers later"
        )
    missing = [name for name in builder.also if name not in files]
    if missing:
        raise BuildFailed(f"{lock} needs {', '.join(missing)} next to it.")
    inputs = build_inputs(content_store.path(release.content_sha256), builder)
    local = any(pattern.search(inputs.get(name, b"")) for name, pattern in LOCAL_INPUTS[builder.tool])
    # Dynamic dependencies come from the project's build backend, which reads the content.
    local = local or (not locked and dynamic_dependencies(files[lock]))
    key = hashlib.sha256(
        json.dumps(
            {
                "recipe": RECIPE,
                "organization": organization,
                "tool": builder.tool,
                "image": image,
                # The lock reads the content itself: only the same content may reuse the build.
                "content": release.content_sha256 if local else None,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(inputs.items())},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return Plan(builder, image, lock, key, locked)


def job_for(plan_: Plan) -> BuildJob:
    env = {
        "HOME": "/tmp",  # noqa: S108 - the container's tmpfs
        "npm_config_cache": "/tmp/npm-cache",  # noqa: S108
        "STACKPORT_LOCK": plan_.lock_name,  # one of the builder's fixed names
    }
    files: list[tuple[str, bytes]] = []
    if settings.STACKPORT_PIP_INDEX_URL:
        env["PIP_INDEX_URL"] = settings.STACKPORT_PIP_INDEX_URL
    if settings.STACKPORT_NPM_REGISTRY:
        env["npm_config_registry"] = settings.STACKPORT_NPM_REGISTRY
    if settings.STACKPORT_COMPOSER_REPO_URL:
        env["STACKPORT_PACKAGIST_URL"] = settings.STACKPORT_COMPOSER_REPO_URL
    if settings.STACKPORT_BUILD_CA_BUNDLE:
        files.append(("ca.pem", Path(settings.STACKPORT_BUILD_CA_BUNDLE).read_bytes()))
        env.update(
            PIP_CERT="/build/ca.pem",
            npm_config_cafile="/build/ca.pem",
            COMPOSER_CAFILE="/build/ca.pem",
            SSL_CERT_FILE="/build/ca.pem",
        )
    mirror = {
        "pip": settings.STACKPORT_PIP_INDEX_URL,
        "npm": settings.STACKPORT_NPM_REGISTRY,
        "composer": settings.STACKPORT_COMPOSER_REPO_URL,
    }[plan_.builder.tool]
    tunnels, plain = egress(mirror, REGISTRY_HOSTS[plan_.builder.tool], settings.STACKPORT_BUILD_HOSTS)
    return BuildJob(
        name=f"{plan_.key[:24]}-{secrets.token_hex(4)}",  # two runs of one key never meet
        image=plan_.image,
        script=plan_.script,
        output=plan_.builder.output,
        network=settings.STACKPORT_BUILD_NETWORK,
        env=tuple(sorted(env.items())),
        files=tuple(files),
        tunnels=tunnels,
        plain=plain,
        addresses=resolve(sorted({item.rsplit(":", 1)[0] for item in (*tunnels, *plain)})),
        # pip builds run their proxy in their own image (pulled already); npm and composer
        # builds in the catalog's Python image (the PHP images have no Python).
        proxy_image=plan_.image if plan_.builder.tool == "pip" else python_image(),
        cpus=float(settings.STACKPORT_BUILD_CPUS),
        memory_mb=int(settings.STACKPORT_BUILD_MEMORY_MB),
        timeout=float(settings.STACKPORT_BUILD_TIMEOUT_SECONDS),
    )


def egress(
    mirror: str, registries: tuple[str, ...], extra: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where a build may connect through its proxy: ("name:port" by CONNECT, "name:port" by
    plain GET). The registries on 443, or instead the mirror's host on its port (by GET when
    it is an http:// one), and each of ``extra`` (STACKPORT_BUILD_HOSTS: "name" for 443, or
    "name:port")."""
    tunnels: set[str] = set()
    plain: set[str] = set()
    if mirror:
        parts = urlsplit(mirror)
        host = (parts.hostname or "").lower()
        if host:
            port = parts.port or (80 if parts.scheme == "http" else 443)
            (plain if parts.scheme == "http" else tunnels).add(f"{host}:{port}")
    else:
        tunnels.update(f"{name}:443" for name in registries)
    for item in extra:
        name, _, port_text = str(item).strip().lower().partition(":")
        if name:
            tunnels.add(f"{name}:{int(port_text) if port_text.isdigit() else 443}")
    return tuple(sorted(tunnels)), tuple(sorted(plain))


def resolve(names: list[str]) -> tuple[tuple[str, str], ...]:
    """Each allowed name with its IPv4 addresses (name, address), looked up here: the build's
    proxy connects there (the build network may reach no resolver: the hosts' egress rules
    refuse private addresses, where the host's resolver often is). A name that does not
    resolve is left out (the proxy then tries its own resolver)."""
    found: list[tuple[str, str]] = []
    for name in names:
        try:
            infos = socket.getaddrinfo(name, 443, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for address in dict.fromkeys(str(info[4][0]) for info in infos):
            found.append((name, address))
    return tuple(found)


def python_image() -> str:
    """The newest published Python runtime image (by digest): the egress proxy's image for
    the builds whose own image has no Python."""
    versions = (
        ComponentVersion.objects.filter(component__code="python").exclude(digest="").exclude(image_ref="")
    )
    found = max(versions, key=lambda v: tuple(int(p) for p in re.findall(r"\d+", v.version)), default=None)
    if found is None:
        raise BuildFailed("No published Python image to run the build's egress proxy in.")
    return found.pinned_reference


_FAILING_LINE = {
    # pip: the last "ERROR:" line is the verdict ("No matching distribution found for x==9").
    "pip": (re.compile(r"^ERROR: (?!Exception)"), "last"),
    # npm 9: "npm ERR! 404 Not Found - GET ...", npm 10: "npm error 404 ..." (not the code line).
    "npm": (re.compile(r"^npm (ERR!|error) (?!code |errno |A complete log|Log files|\s*$)"), "first"),
    # composer: the problem's first explanation line ("  - Root composer.json requires ...").
    "composer": (re.compile(r"^\s+- |^\s*\[[A-Za-z\\]+Exception\]|^In [A-Za-z]+\.php"), "first"),
}


def failing_line(tool: str, lines: list[str]) -> str:
    """The line of a failed build's output that says why (else its last non-empty line)."""
    pattern, which = _FAILING_LINE.get(tool, (None, "last"))
    if pattern is not None:
        matches = [line.strip() for line in lines if pattern.search(line)]
        if matches:
            return matches[-1] if which == "last" else matches[0]
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


class _Log:
    """Build output into the operation's log: every line as it comes (the page polls it),
    at most ``MAX_LOGGED_LINES``; the last lines are kept to find the failing one."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self.line, self.count = line, 0
        self.tail: deque[str] = deque(maxlen=400)

    def __call__(self, text: str) -> None:
        self.count += 1
        self.tail.append(text)
        if self.count <= MAX_LOGGED_LINES:
            self.line(f"  | {text}")
        elif self.count == MAX_LOGGED_LINES + 1:
            self.line("  | (more output is left out of this log)")


class _Capped:
    """The artifact's file, refusing bytes past ``limit`` (the copy out of the build stops
    there and the build fails; the partial file is removed)."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out, self.limit, self.written = out, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            size = f"{self.limit // 2**20} MB" if self.limit >= 2**20 else f"{self.limit} bytes"
            raise BuildFailed(
                f"The built dependencies exceed {size} "
                "(STACKPORT_BUILD_MAX_BYTES): fewer or smaller packages, or ask the operator."
            )
        return self.out.write(data)


@dataclass(frozen=True)
class Outcome:
    key: str
    tool: str
    cached: bool
    seconds: float

    def as_params(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tool": self.tool,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "cpus": float(settings.STACKPORT_BUILD_CPUS),
            "memory_mb": int(settings.STACKPORT_BUILD_MEMORY_MB),
        }


def build(release: Release, spec: StackSpec, backend: Backend, line: Callable[[str], None]) -> Outcome | None:
    """Make sure the release's dependencies are built (from the cache when its key is
    there) and name them on the release (``build_key``). Raises ``BuildFailed``."""
    try:
        found = plan(release, spec, line)
    except FileNotFoundError:
        raise BuildFailed(
            f"The content of release {release.number} is no longer stored. Deploy the content again."
        ) from None
    if found is None:
        if release.build_key:
            release.build_key = ""
            Release.objects.filter(pk=release.pk).update(build_key="")
        return None
    target = content_store.build_path(found.key)
    cached = target.exists()
    started = time.monotonic()
    if cached:
        os.utime(target)  # fresh again: kept by pruning while it is in use
        tool = found.builder.tool
        line(f"{found.lock_name} and its inputs unchanged: reusing the {tool} build {found.key[:12]}")
    else:
        _run(found, release, backend, target, line)
    seconds = time.monotonic() - started
    if release.build_key != found.key:
        release.build_key = found.key
        Release.objects.filter(pk=release.pk).update(build_key=found.key)
    return Outcome(found.key, found.builder.tool, cached, seconds)


def _run(found: Plan, release: Release, backend: Backend, target: Path, line: Callable[[str], None]) -> None:
    what = found.lock_name if found.locked else f"the dependencies of {found.lock_name} (not locked)"
    line(f"installing {what} with {found.builder.tool} in {found.image.rsplit('/', 1)[-1][:60]}")
    job = job_for(found)
    output = _Log(line)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=content_store.TMP_PREFIX)
    try:
        limit = int(settings.STACKPORT_BUILD_MAX_BYTES)
        with os.fdopen(fd, "wb") as raw, content_store.open_archive(release.content_sha256) as archive:
            code = backend.build(job, archive, cast(BinaryIO, _Capped(raw, limit)), output)
        if code != 0:
            why = failing_line(found.builder.tool, list(output.tail))
            raise BuildFailed(f"The dependency build failed ({found.builder.tool} exited with {code}): {why}")
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)
    line(f"built {found.key[:12]} ({target.stat().st_size // 1024} KB)")
