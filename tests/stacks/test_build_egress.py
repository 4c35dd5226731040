"""A build's egress on the real engine (docs/builds.md, "Isolation"): the build container sits
on an internal network of its own, its egress proxy (stacks/backends/build_proxy.py) is its only
way out, and the proxy lets through only the package registries, by name.

First at the backend: a build whose script tries every way out downloads a package from the
real PyPI through the proxy, while a direct connection (to an "internet" address routed like
one, test_egress's outside namespace, and to PyPI's own address) finds no route, a name does
not resolve, and the proxy refuses an address or another name with a 403 saying why. Then one
deploy: a requirements.txt naming a wheel on another host fails the build with the proxy's
refusal in the failing line, and the running release stays as it was.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import tarfile
from pathlib import Path
from typing import Any

import docker
import pytest

from projects.models import Environment
from stacks.backends.base import BuildJob, HostRecord
from stacks.backends.docker import DockerBackend
from stacks.models import ComponentVersion, OperationStatus
from stacks.runtime import builds, lifecycle
from stacks.runtime.operations import run_operation
from tests.stacks import test_lifecycle
from tests.stacks.conftest import Caddy
from tests.stacks.test_egress import OUTSIDE_PORT, outside  # noqa: F401 (fixture)
from tests.stacks.test_lifecycle import deploy
from tests.stacks.test_multihost import netns_hosts  # noqa: F401 (fixture)
from tests.stacks.test_operations import zip_archive

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]

stackport = test_lifecycle.stackport
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup

PYTHON = [
    {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 1, "public": True}
]

# Every way out a build might try; one JSON line per attempt.
PROBE = r"""set -eu
python3 - <<'PY'
import json, os, socket, ssl, subprocess, urllib.error, urllib.request

def attempt(what, call):
    try:
        result = call()
        outcome = {"what": what, "ok": True, "detail": str(result)[:200]}
    except urllib.error.HTTPError as exc:
        outcome = {"what": what, "ok": False, "detail": f"HTTP {exc.code} {exc.reason}"}
    except Exception as exc:
        outcome = {"what": what, "ok": False, "detail": repr(exc)[:300]}
    print("PROBE " + json.dumps(outcome), flush=True)

def direct(address, port):
    with socket.create_connection((address, port), timeout=5):
        return "connected"

outside = os.environ["PROBE_OUTSIDE"]
port = int(os.environ["PROBE_PORT"])
attempt("direct outside", lambda: direct(outside, port))
attempt("direct registry", lambda: direct(os.environ["PROBE_REGISTRY"], 443))
attempt("resolve", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("proxy http address", lambda: urllib.request.urlopen(f"http://{outside}:{port}/", timeout=10).status)
attempt("proxy https address", lambda: urllib.request.urlopen(f"https://{outside}:{port}/", timeout=10).status)
attempt("proxy other name", lambda: urllib.request.urlopen("https://example.org/", timeout=10).status)
attempt("proxy registry", lambda: urllib.request.urlopen("https://pypi.org/simple/flask/", timeout=30).status)
PY
python3 -m pip download --no-cache-dir --disable-pip-version-check --no-deps --progress-bar off \
    -d /build/out flask==3.1.0
"""


def probes(lines: list[str]) -> dict[str, dict[str, Any]]:
    found = [json.loads(line.split("PROBE ", 1)[1]) for line in lines if line.startswith("PROBE ")]
    return {p["what"]: p for p in found}


def ca_bundle() -> tuple[tuple[tuple[str, bytes], ...], dict[str, str]]:
    """This machine reaches the registries through a TLS-intercepting proxy: its CA bundle
    goes into the build, as STACKPORT_BUILD_CA_BUNDLE does (test_builds' build_settings)."""
    bundle = os.environ.get("SSL_CERT_FILE", "")
    if not bundle or not Path(bundle).is_file():
        return (), {}
    return (("ca.pem", Path(bundle).read_bytes()),), {
        "PIP_CERT": "/build/ca.pem",
        "SSL_CERT_FILE": "/build/ca.pem",
    }


def test_a_build_reaches_the_registry_through_its_proxy_and_nothing_else(
    catalog: None,
    outside: str,  # noqa: F811
    engine_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    image = ComponentVersion.objects.get(component__code="python", version="3.13").pinned_reference
    registry_address = socket.getaddrinfo("pypi.org", 443, family=socket.AF_INET)[0][4][0]
    files, ca_env = ca_bundle()
    tunnels, plain = builds.egress("", builds.REGISTRY_HOSTS["pip"], [])
    job = BuildJob(
        name="egress-probe-" + os.urandom(4).hex(),
        image=image,
        script=PROBE,
        output="/build/out",
        network="stackport-build",
        env=(
            ("HOME", "/tmp"),
            ("PROBE_OUTSIDE", outside),
            ("PROBE_PORT", str(OUTSIDE_PORT)),
            ("PROBE_REGISTRY", registry_address),
            *sorted(ca_env.items()),
        ),
        files=files,
        tunnels=tunnels,
        plain=plain,
        addresses=builds.resolve(["pypi.org", "files.pythonhosted.org"]),
        proxy_image=image,
        timeout=300,
    )
    backend = DockerBackend(hosts=[HostRecord(name="local", url="unix:///var/run/docker.sock")])
    lines: list[str] = []
    with (tmp_path / "out.tar").open("wb") as out:
        code = backend.build(job, _content(), out, lines.append)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    seen = probes(lines)

    # No way out but the proxy: no route from the internal network, no resolver.
    for what in ("direct outside", "direct registry"):
        assert not seen[what]["ok"] and "No route to host" in seen[what]["detail"], seen[what]
    assert not seen["resolve"]["ok"], seen["resolve"]

    # The proxy refuses addresses and other names, saying why; the client shows it.
    assert seen["proxy http address"]["detail"].startswith("HTTP 403 Forbidden by the Stackport build proxy")
    assert "is an IP address" in seen["proxy http address"]["detail"]
    assert "Tunnel connection failed: 403" in seen["proxy https address"]["detail"]
    assert "is an IP address" in seen["proxy https address"]["detail"]
    assert "example.org:443 is not a package registry of this build" in seen["proxy other name"]["detail"]
    # ... and the proxy's own refusals are in the build's log.
    assert f"stackport build proxy: refused CONNECT {outside}:{OUTSIDE_PORT}" in text
    assert "stackport build proxy: refused CONNECT example.org:443" in text

    # The registry by name: the index and a real download.
    assert seen["proxy registry"] == {"what": "proxy registry", "ok": True, "detail": "200"}, seen
    assert "Saved ./out/flask-3.1.0-py3-none-any.whl" in text and "Successfully downloaded flask" in text
    assert (tmp_path / "out.tar").stat().st_size > 50_000

    # Nothing of the build is left: container, proxy, internal network, volume.
    name = f"sp-build-{job.name}"
    assert not [c.name for c in engine_client.containers.list(all=True) if c.name.startswith(name)]
    assert not [n.name for n in engine_client.networks.list() if n.name.startswith(name)]
    assert not [v.name for v in engine_client.volumes.list() if v.name.startswith(name)]


def test_a_build_on_a_routed_host_reaches_the_registry_through_its_proxy(
    catalog: None,
    netns_hosts: list[dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """On a host with an address pool (scripts/docker-hosts.sh) only the pool is routed and let
    out: the build network takes the pool's first /24, the builds' own networks /28s of its
    last, and the proxy reaches PyPI from there."""
    host = netns_hosts[0]
    image = ComponentVersion.objects.get(component__code="python", version="3.13").pinned_reference
    files, ca_env = ca_bundle()
    tunnels, plain = builds.egress("", builds.REGISTRY_HOSTS["pip"], [])
    script = PROBE.replace('attempt("direct outside", lambda: direct(outside, port))\n', "")
    job = BuildJob(
        name="egress-routed-" + os.urandom(4).hex(),
        image=image,
        script=script,
        output="/build/out",
        network="stackport-build",
        env=(
            ("HOME", "/tmp"),
            ("PROBE_OUTSIDE", "198.51.100.2"),
            ("PROBE_PORT", str(OUTSIDE_PORT)),
            ("PROBE_REGISTRY", socket.getaddrinfo("pypi.org", 443, family=socket.AF_INET)[0][4][0]),
            *sorted(ca_env.items()),
        ),
        files=files,
        tunnels=tunnels,
        plain=plain,
        addresses=builds.resolve(["pypi.org", "files.pythonhosted.org"]),
        proxy_image=image,
        timeout=300,
    )
    backend = DockerBackend(hosts=[HostRecord(name=host["name"], url=host["url"], pool=host["pool"])])
    lines: list[str] = []
    with (tmp_path / "out.tar").open("wb") as out:
        code = backend.build(job, _content(), out, lines.append)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    seen = probes(lines)
    assert not seen["direct registry"]["ok"], seen
    assert seen["proxy registry"]["ok"], seen
    assert "Saved ./out/flask-3.1.0-py3-none-any.whl" in text and "Successfully downloaded flask" in text
    client = docker.DockerClient(base_url=host["url"])
    try:
        subnet = client.networks.get("stackport-build").attrs["IPAM"]["Config"][0]["Subnet"]
    finally:
        client.close()
    pool = ipaddress.ip_network(host["pool"])
    assert ipaddress.ip_network(subnet) == next(pool.subnets(new_prefix=24)), subnet


def _content() -> Any:
    """An empty content archive (the probe reads none)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    buffer.seek(0)
    return buffer


def test_a_requirement_from_another_host_fails_the_build_with_the_proxys_refusal(
    team: Any, stackport: Caddy, cleanup: list[Environment], settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = str(tmp_path / "var")
    bundle = os.environ.get("SSL_CERT_FILE", "")
    settings.STACKPORT_BUILD_CA_BUNDLE = bundle if bundle and Path(bundle).is_file() else ""
    env = deploy(team, cleanup, components=PYTHON)
    release = env.current_release
    files = {
        "app.py": "def app(environ, start_response):\n    return []\n",
        "requirements.txt": "six @ http://198.51.100.2:8099/six-1.16.0-py2.py3-none-any.whl\n",
    }
    op = lifecycle.deploy_content(
        environment=env, actor=team.developer, archive=zip_archive(files), filename="app.zip"
    )
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED, op.log[-2000:]
    assert "The dependency build failed (pip exited with 1)" in op.error, op.error
    assert "Stackport build proxy" in op.error and "is an IP address" in op.error, op.error
    assert "stackport build proxy: refused GET http://198.51.100.2:8099/" in op.log, op.log[-2000:]
    env.refresh_from_db()
    assert env.current_release == release  # nothing switched


def test_an_npm_build_on_a_routed_host_installs_through_its_proxy(
    catalog: None,
    netns_hosts: list[dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    """npm's registry through the proxy from a host with an address pool: the Express app's lock
    installed by the product's own npm script, the proxy in the catalog's Python image (the
    Node image has no Python), as ``builds.job_for`` sets it up."""
    host = netns_hosts[0]
    image = ComponentVersion.objects.get(component__code="nodejs", version="20").pinned_reference
    files, ca_env = ca_bundle()
    if ca_env:
        ca_env = {"npm_config_cafile": "/build/ca.pem", "SSL_CERT_FILE": "/build/ca.pem"}
    tunnels, plain = builds.egress("", builds.REGISTRY_HOSTS["npm"], [])
    app = Path(__file__).parent / "build_apps" / "express"
    content = io.BytesIO()
    with tarfile.open(fileobj=content, mode="w") as tar:
        for name in ("package.json", "package-lock.json"):
            tar.add(app / name, arcname=name)
    content.seek(0)
    job = BuildJob(
        name="npm-routed-" + os.urandom(4).hex(),
        image=image,
        script=builds.NPM_SCRIPT,
        output="/build/app/node_modules",
        network="stackport-build",
        env=(("HOME", "/tmp"), ("npm_config_cache", "/tmp/npm-cache"), *sorted(ca_env.items())),
        files=files,
        tunnels=tunnels,
        plain=plain,
        addresses=builds.resolve(list(builds.REGISTRY_HOSTS["npm"])),
        proxy_image=builds.python_image(),
        timeout=300,
    )
    backend = DockerBackend(hosts=[HostRecord(name=host["name"], url=host["url"], pool=host["pool"])])
    lines: list[str] = []
    with (tmp_path / "out.tar").open("wb") as out:
        code = backend.build(job, content, out, lines.append)
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    with tarfile.open(tmp_path / "out.tar") as tar:
        names = tar.getnames()
    assert any(n.endswith("express/package.json") for n in names), names[:20]
