"""The image pipeline: build each catalog version from its recipe, verify it hardened with
real probes, publish it with its digest. Nothing reaches customers unverified.

Each step is idempotent and cached by the recipe hash (recipe files + build arguments +
base image): building twice builds once, verifying a verified image with an unchanged
hash is a no-op, publishing twice pushes once. Status changes go through filtered updates.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from django.conf import settings
from django.utils import timezone
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound

from stacks.catalog.loader import IMAGES_DIR
from stacks.catalog.registry import RegistryClient, RegistryError
from stacks.models import VERSION_TRANSITIONS, ComponentVersion, VersionStatus

HASH_LABEL = "org.stackport.recipe-hash"
VERIFY_MEMORY = "512m"
HEALTH_TIMEOUT = 180  # seconds; RabbitMQ takes its time on two cores
# An exec probe is killed after this long (coreutils' timeout inside the image): the engine
# API has no timeout for an exec, and a command stuck on a loaded machine must fail the probe
# (and be tried again), never hang the pipeline.
EXEC_PROBE_TIMEOUT = 60  # seconds
Log = Callable[[str], None]


class PipelineError(Exception):
    """The build host or registry could not be used (not a verdict on an image)."""


def docker_client() -> docker.DockerClient:
    try:
        client = docker.DockerClient(
            base_url=settings.STACKPORT_BUILD_DOCKER_URL, version="auto", timeout=600
        )
        client.ping()
    except DockerException as exc:
        raise PipelineError(
            f"the Docker engine at {settings.STACKPORT_BUILD_DOCKER_URL} does not answer: {exc}"
        ) from exc
    return client


def repository(cv: ComponentVersion) -> str:
    return f"{settings.STACKPORT_IMAGE_NAMESPACE}/{cv.component.code}"


def image_tag(cv: ComponentVersion) -> str:
    return f"{settings.STACKPORT_REGISTRY}/{repository(cv)}:{cv.version}"


def recipe_hash(cv: ComponentVersion, client: docker.DockerClient, images_dir: Path = IMAGES_DIR) -> str:
    """Everything that decides the image's content, hashed."""
    digest = hashlib.sha256()
    folder = images_dir / cv.component.recipe
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        base_id = client.images.get(f"stackport/debian:{cv.debian}").id
    except ImageNotFound:
        raise PipelineError(
            f"base image stackport/debian:{cv.debian} is missing: run scripts/base-images.sh"
        ) from None
    digest.update(
        json.dumps({"debian": cv.debian, "base": base_id, "args": cv.build_args}, sort_keys=True).encode()
    )
    return digest.hexdigest()


def _set_status(cv: ComponentVersion, status: str, **fields: Any) -> None:
    if status != cv.status and status not in VERSION_TRANSITIONS[cv.status]:
        raise PipelineError(f"{cv} cannot go from {cv.status} to {status}")
    ComponentVersion.objects.filter(pk=cv.pk, status=cv.status).update(status=status, **fields)
    cv.refresh_from_db()


def _fail(cv: ComponentVersion, reason: str, log: str = "") -> None:
    """A failed build or probe: back to candidate, with the reason on record."""
    status = VersionStatus.CANDIDATE if cv.status != VersionStatus.END_OF_LIFE else cv.status
    ComponentVersion.objects.filter(pk=cv.pk).update(
        status=status, failure_reason=reason[:2000], verification_log=log[-20000:], verified_at=None
    )
    cv.refresh_from_db()


# --- build ---------------------------------------------------------------------------------------
def build_version(
    cv: ComponentVersion, *, client: docker.DockerClient, images_dir: Path = IMAGES_DIR, log: Log = print
) -> bool:
    """Build the version's image unless one with the same recipe hash exists. True if usable."""
    wanted = recipe_hash(cv, client, images_dir)
    tag = image_tag(cv)
    try:
        if client.images.get(tag).labels.get(HASH_LABEL) == wanted:
            _record_build(cv, wanted, tag, built=False)
            log(f"{cv}: image up to date ({wanted[:12]})")
            return True
    except ImageNotFound:
        pass
    log(f"{cv}: building {tag}")
    started = time.monotonic()
    try:
        client.images.build(
            path=str(images_dir / cv.component.recipe),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            buildargs={"DEBIAN": cv.debian, **{k: str(v) for k, v in cv.build_args.items()}},
            labels={
                HASH_LABEL: wanted,
                "org.stackport.component": cv.component.code,
                "org.stackport.version": cv.version,
            },
        )
    except BuildError as exc:
        lines = [str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log]
        _fail(cv, f"build failed: {exc.msg}", "".join(lines))
        log(f"{cv}: BUILD FAILED: {exc.msg}")
        return False
    except APIError as exc:
        _fail(cv, f"build failed: {exc.explanation or exc}")
        log(f"{cv}: BUILD FAILED: {exc}")
        return False
    _record_build(cv, wanted, tag, built=True)
    log(f"{cv}: built in {time.monotonic() - started:.0f}s")
    return True


def _record_build(cv: ComponentVersion, wanted: str, tag: str, *, built: bool) -> None:
    if cv.recipe_hash == wanted and cv.image_ref == tag:
        return
    # A new image must pass verification again before anyone gets it.
    fields: dict[str, Any] = {
        "recipe_hash": wanted,
        "image_ref": tag,
        "built_at": timezone.now(),
        "verified_at": None,
        "failure_reason": "",
    }
    if cv.status in (VersionStatus.VERIFIED, VersionStatus.CURRENT, VersionStatus.DEPRECATED):
        fields["status"] = VersionStatus.CANDIDATE
    ComponentVersion.objects.filter(pk=cv.pk).update(**fields)
    cv.refresh_from_db()


# --- verify --------------------------------------------------------------------------------------
@dataclass
class Verification:
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    reason: str = ""

    def note(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, reason: str) -> None:
        if self.ok:
            self.ok, self.reason = False, reason
        self.lines.append(f"FAILED: {reason}")


def verify_version(cv: ComponentVersion, *, client: docker.DockerClient, log: Log = print) -> bool:
    """Start the image hardened, wait for its health check, run its probes, inspect it."""
    if not cv.recipe_hash or not cv.image_ref:
        _fail(cv, "not built")
        return False
    if cv.verified_at and cv.status != VersionStatus.CANDIDATE:
        log(f"{cv}: already verified ({cv.recipe_hash[:12]})")
        return True
    log(f"{cv}: verifying")
    result = Verification()
    run_hardened_probe(cv, client, result)
    if not result.ok:
        _fail(cv, result.reason, "\n".join(result.lines))
        log(f"{cv}: NOT VERIFIED: {result.reason}")
        return False
    _set_status(
        cv,
        VersionStatus.VERIFIED,
        verified_at=timezone.now(),
        failure_reason="",
        verification_log="\n".join(result.lines),
    )
    log(f"{cv}: verified")
    return True


def hardened_run_options(cv: ComponentVersion) -> dict[str, Any]:
    """The container settings docs/security.md asks for, from the catalog's contract."""
    comp = cv.component
    return {
        "cap_drop": ["ALL"],
        "cap_add": list(comp.capabilities),
        "security_opt": ["no-new-privileges:true"],
        "read_only": comp.read_only_root,
        "tmpfs": {path: "rw,nosuid,nodev,size=64m" for path in comp.tmpfs},
        "mem_limit": VERIFY_MEMORY,
        "memswap_limit": VERIFY_MEMORY,
        "pids_limit": 512,
        "nano_cpus": 1_000_000_000,
        "privileged": False,
        "log_config": {"type": "json-file", "config": {"max-size": "1m", "max-file": "2"}},
        "restart_policy": {"Name": "no"},
    }


def run_hardened_probe(cv: ComponentVersion, client: docker.DockerClient, result: Verification) -> None:
    name = f"sp-verify-cv{cv.pk}-{secrets.token_hex(3)}"
    network = volumes = container = None
    try:
        network = client.networks.create(name, driver="bridge", labels={"org.stackport.verify": "1"})
        volumes = {
            client.volumes.create(f"{name}-{v['name']}").name: {"bind": v["path"], "mode": "rw"}
            for v in cv.component.volumes
        }
        container = client.containers.run(
            cv.image_ref,
            name=name,
            detach=True,
            network=name,
            volumes=volumes,
            environment={k: str(v) for k, v in (cv.component.verify.get("env") or {}).items()},
            labels={"org.stackport.verify": "1"},
            **hardened_run_options(cv),
        )
        if _wait_healthy(container, result):
            _inspect(cv, container, result)
            ip = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
            for probe in cv.component.verify.get("probes", []):
                _run_probe(container, ip, probe, result)
        if not result.ok:
            logs = container.logs(tail=40).decode(errors="replace")
            result.note("container log (last lines):\n" + logs)
    except (APIError, NotFound) as exc:
        result.fail(f"could not start: {getattr(exc, 'explanation', None) or exc}")
    finally:
        _remove(client, container, network, volumes)


def _remove(
    client: docker.DockerClient, container: Any, network: Any, volumes: dict[str, Any] | None
) -> None:
    # Each removal on its own: "already gone" is success, and one failure must not keep the rest.
    targets: list[Any] = [
        container,
        *(client.volumes.get(v) for v in (volumes or {}) if _exists(client, v)),
        network,
    ]
    for target in targets:
        if target is None:
            continue
        try:
            target.remove(force=True) if target is not network else target.remove()
        except (NotFound, APIError):
            pass


def _exists(client: docker.DockerClient, volume: str) -> bool:
    try:
        client.volumes.get(volume)
    except NotFound:
        return False
    return True


def _wait_healthy(container: Any, result: Verification) -> bool:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    started = time.monotonic()
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        if state.get("Status") in ("exited", "dead"):
            result.fail(f"container exited with code {state.get('ExitCode')}")
            return False
        if health is None:
            result.fail("the image has no health check")
            return False
        if health == "healthy":
            result.note(f"healthy after {time.monotonic() - started:.1f}s")
            return True
        if health == "unhealthy":
            last = (state["Health"].get("Log") or [{}])[-1].get("Output", "").strip()
            result.fail(f"health check failed: {last[:300]}")
            return False
        time.sleep(0.5)
    result.fail(f"not healthy within {HEALTH_TIMEOUT}s")
    return False


def _cap_count(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bin(int(line.split()[1], 16)).count("1")
    return -1


def _inspect(cv: ComponentVersion, container: Any, result: Verification) -> None:
    comp = cv.component
    exit_code, out = container.exec_run(["id", "-un"])
    user = out.decode(errors="replace").strip()
    result.note(f"runs as {user!r}")
    if exit_code != 0 or user != comp.user:
        result.fail(f"runs as {user!r}, the catalog says {comp.user!r}")
    if comp.user != "root" and user == "root":
        result.fail("runs as root")
    _, status = container.exec_run(["cat", "/proc/1/status"])
    caps = _cap_count(status.decode(errors="replace"))
    result.note(f"effective capabilities of PID 1: {caps}")
    if caps > len(comp.capabilities):
        result.fail(f"PID 1 has {caps} capabilities, the allowlist has {len(comp.capabilities)}")
    host = container.attrs["HostConfig"]
    if host.get("Privileged") or "ALL" not in (host.get("CapDrop") or []):
        result.fail("not started hardened")


def _run_probe(container: Any, ip: str, probe: dict[str, Any], result: Verification) -> None:
    expect = str(probe.get("expect", ""))
    output = ""
    for _ in range(10):  # a service may answer its health check a moment before everything
        output = _probe_once(container, ip, probe)
        if expect in output:
            result.note(f"probe {_describe(probe)}: {output.strip()[:200]!r}")
            return
        time.sleep(1)
    result.fail(f"probe {_describe(probe)} expected {expect!r}, got {output.strip()[:300]!r}")


def _describe(probe: dict[str, Any]) -> str:
    if "exec" in probe:
        return "exec " + " ".join(probe["exec"])[:120]
    if "http" in probe:
        return f"http :{probe['http']['port']}{probe['http'].get('path', '/')}"
    return f"tcp :{probe['tcp']['port']}"


def _probe_once(container: Any, ip: str, probe: dict[str, Any]) -> str:
    try:
        if "exec" in probe:
            command = ["timeout", "-k", "5", str(EXEC_PROBE_TIMEOUT), *map(str, probe["exec"])]
            code, out = container.exec_run(command)
            text = out.decode(errors="replace")
            return text if code == 0 else f"exit {code}: {text}"
        if "http" in probe:
            spec = probe["http"]
            response = requests.get(f"http://{ip}:{spec['port']}{spec.get('path', '/')}", timeout=5)
            return (
                response.text
                if response.status_code == 200
                else f"HTTP {response.status_code}: {response.text[:200]}"
            )
        spec = probe["tcp"]
        with socket.create_connection((ip, int(spec["port"])), timeout=5) as sock:
            if spec.get("send"):
                sock.sendall(str(spec["send"]).encode())
            return sock.recv(4096).decode(errors="replace")
    except (OSError, requests.RequestException, APIError) as exc:
        return f"error: {exc}"


# --- publish -------------------------------------------------------------------------------------
def publish_version(cv: ComponentVersion, *, client: docker.DockerClient, log: Log = print) -> bool:
    """Push a verified image and record its digest; then give it the status the hoster asked for."""
    if not cv.verified_at or cv.status == VersionStatus.CANDIDATE:
        log(f"{cv}: not verified, not published" + (f" ({cv.failure_reason})" if cv.failure_reason else ""))
        return False
    registry = RegistryClient(f"http://{settings.STACKPORT_REGISTRY}")
    try:
        digest = registry.digest(repository(cv), cv.version)
        local = client.images.get(cv.image_ref)
        pushed = (
            any(d.endswith(f"@{digest}") for d in local.attrs.get("RepoDigests", [])) if digest else False
        )
        if not pushed:
            for chunk in client.images.push(
                f"{settings.STACKPORT_REGISTRY}/{repository(cv)}", tag=cv.version, stream=True, decode=True
            ):
                if "error" in chunk:
                    raise PipelineError(f"push of {cv.image_ref} failed: {chunk['error']}")
            digest = registry.digest(repository(cv), cv.version)
    except RegistryError as exc:
        raise PipelineError(f"registry {settings.STACKPORT_REGISTRY}: {exc}") from exc
    if not digest:
        raise PipelineError(f"registry lists no digest for {cv.image_ref} after the push")
    target = cv.target_status if cv.target_status in VERSION_TRANSITIONS[cv.status] else cv.status
    fields: dict[str, Any] = {"digest": digest}
    if cv.digest != digest or not cv.published_at:
        fields["published_at"] = timezone.now()
    _set_status(cv, target, **fields)
    log(f"{cv}: published {digest[:19]}… as {cv.status}")
    return True
