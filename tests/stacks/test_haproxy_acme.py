"""stacks.backends.acme_client against Debian's Pebble (an ACME test CA on loopback, started
by scripts/pebble.sh as tests/stacks/test_https.py does) and the HAProxy edge of
tests/stacks/test_haproxy_edge.py: the CA resolves the name through a dnsmasq of the test's
own (pointing at 127.0.0.1) and validates HTTP-01 on the edge's HTTP port, where the token
map answers. Nothing leaves loopback. No Docker engine."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from stacks.backends.acme_client import issue_and_install
from stacks.backends.edge import EdgeError
from stacks.backends.haproxy import HAProxyRouter
from tests.stacks import test_haproxy_edge
from tests.stacks.conftest import REPO_ROOT, fetch, unused_loopback_port, wait_until
from tests.stacks.test_domains import DnsServer
from tests.stacks.test_haproxy_edge import Edge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# Fixtures of that module, used here too.
edge, router = test_haproxy_edge.edge, test_haproxy_edge.router
NAME = "shop.haproxy.test"


@dataclass
class Pebble:
    directory_url: str
    ca_root: Path  # the certificate of Pebble's own HTTPS listener
    issuing_root: Path  # the root of the certificates it issues (fetched at its start)


@pytest.fixture
def pebble(edge: Edge, tmp_path: Path) -> Iterator[Pebble]:
    """Pebble validating on the edge's ports, resolving *.haproxy.test to 127.0.0.1."""
    dns = DnsServer(tmp_path)
    dns.start(addresses={"haproxy.test": "127.0.0.1"})
    listen, management = (f"127.0.0.1:{unused_loopback_port()}" for _ in range(2))
    env = {
        **os.environ,
        "STACKPORT_PEBBLE_DIR": str(tmp_path / "pebble"),
        "STACKPORT_PEBBLE_LISTEN": listen,
        "STACKPORT_PEBBLE_MANAGEMENT": management,
        "STACKPORT_PEBBLE_HTTP_PORT": str(edge.port),
        "STACKPORT_PEBBLE_TLS_PORT": str(edge.https_port),
        "STACKPORT_PEBBLE_DNS": f"127.0.0.1:{dns.port}",
    }
    log = tmp_path / "pebble.log"
    process = subprocess.Popen(
        [str(REPO_ROOT / "scripts" / "pebble.sh")], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    ca_root = tmp_path / "pebble" / "cert.pem"

    def directory_answers() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return fetch("GET", f"https://{listen}/dir", verify=str(ca_root)).status_code == 200
        except (requests.RequestException, OSError):
            return False

    try:
        wait_until(directory_answers, 30, "pebble's directory")
        issuing_root = tmp_path / "pebble-root.pem"
        issuing_root.write_text(fetch("GET", f"https://{management}/roots/0", verify=str(ca_root)).text)
        yield Pebble(f"https://{listen}/dir", ca_root, issuing_root)
    finally:
        process.terminate()
        process.wait(10)
        dns.stop()


def _verified_handshake(edge: Edge, host: str, cafile: Path) -> str:
    """The subject of the certificate served for ``host``, verified (chain and name)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection((edge.host, edge.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return str(tls.getpeercert()["subjectAltName"])


def test_a_certificate_is_ordered_over_http01_and_served(
    edge: Edge, router: HAProxyRouter, pebble: Pebble
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _verified_handshake(edge, NAME, pebble.issuing_root)  # the default certificate
    issued = issue_and_install(
        router, [NAME, f"www.{NAME}"], directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_root)
    )
    assert issued.hosts == [NAME, f"www.{NAME}"]
    for host in issued.hosts:
        assert host in _verified_handshake(edge, host, pebble.issuing_root)
    assert set(router.certificates()) == {NAME, f"www.{NAME}"}
    # Due for renewal only within its validity's end; a name without one needs it now.
    assert not router.needs_renewal(NAME)
    assert router.needs_renewal(NAME, days=100 * 365)
    assert router.needs_renewal("other.haproxy.test")
    # The account key was kept (mode 0600) and signs the next order: the same account.
    key_file = edge.directory / "acme-account.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_bytes()
    again = issue_and_install(
        router, [NAME], directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_root)
    )
    assert again.account == issued.account != ""
    assert key_file.read_bytes() == key
    assert not router.needs_renewal(NAME)
    # The tokens are gone from the router.
    assert router._state().maps["acme"] == {}
    # A name that does not resolve here cannot be validated: a permanent error, no token left.
    with pytest.raises(EdgeError) as caught:
        issue_and_install(
            router, ["elsewhere.test"], directory_url=pebble.directory_url, ca_bundle=str(pebble.ca_root)
        )
    assert caught.value.permanent
    assert router._state().maps["acme"] == {}
