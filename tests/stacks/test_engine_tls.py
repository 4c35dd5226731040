"""Mutual TLS to Docker engines on tcp:// (stacks/runtime/engine_ca.py): the portal's CA,
the netns hosts' dockerd listening with --tlsverify (scripts/docker-hosts.sh), host rows
with tcp:// addresses reached with the portal's client certificate, and nothing else let
in. Also: a host's capacity is read when it is added, whatever door added it.

The engine tests start the shared netns hosts: run them under ``flock /tmp/netns.lock``."""

from __future__ import annotations

import multiprocessing
import os
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import pytest
import requests
from cryptography import x509
from django.contrib.admin.sites import site
from docker.errors import DockerException

from stacks.backends.base import BackendError, EngineTLS
from stacks.backends.docker import DockerBackend, engine_client
from stacks.models import DockerHost, Region
from stacks.runtime import engine_ca
from stacks.runtime.hosts import host_record, register_host
from tests.stacks.test_multihost import netns_hosts  # noqa: F401 (fixture)

FABRIC_CA = Path("/var/lib/stackport/hosts/ca")  # scripts/docker-hosts.sh


# --- the CA ---------------------------------------------------------------------------------------
def test_the_ca_keeps_its_keys_private_and_issues_certificates_that_chain_to_it(tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "host"
    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.2", "engine.example.test"], out)
    tls = engine_ca.client_tls(ca_dir)

    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    for key in (ca_dir / "ca-key.pem", out / "key.pem", Path(tls.client_key)):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    for path in (out / "cert.pem", Path(tls.client_cert)):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
    server = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.199.9.2"]
    assert "engine.example.test" in names.get_values_for_type(x509.DNSName)


def test_issuing_again_changes_nothing(tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "host"
    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.2"], out)
    engine_ca.client_tls(ca_dir)
    before = {p.name: p.read_bytes() for p in [*ca_dir.iterdir(), *out.iterdir()]}
    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.2"], out)
    engine_ca.client_tls(ca_dir)
    assert {p.name: p.read_bytes() for p in [*ca_dir.iterdir(), *out.iterdir()]} == before
    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.3"], out)  # a new address: a new certificate
    assert (out / "cert.pem").read_bytes() != before["cert.pem"]


def test_certificates_near_their_end_are_issued_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "host"
    monkeypatch.setattr(engine_ca, "LEAF_DAYS", engine_ca.RENEW_DAYS - 1)
    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.2"], out)
    engine_ca.client_tls(ca_dir)
    old = {name: path.read_bytes() for name, path in _leaves(ca_dir, out).items()}
    ca_before = (ca_dir / "ca.pem").read_bytes()
    monkeypatch.setattr(engine_ca, "LEAF_DAYS", 825)

    engine_ca.issue_server(ca_dir, "sp9", ["10.199.9.2"], out)
    engine_ca.client_tls(ca_dir)

    assert (ca_dir / "ca.pem").read_bytes() == ca_before  # the CA itself is kept
    for name, path in _leaves(ca_dir, out).items():
        assert path.read_bytes() != old[name], name
        if name.endswith("cert"):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            left = cert.not_valid_after_utc - cert.not_valid_before_utc
            assert left.days >= 824, name


def _leaves(ca_dir: Path, out: Path) -> dict[str, Path]:
    return {
        "server cert": out / "cert.pem",
        "server key": out / "key.pem",
        "client cert": ca_dir / "client.pem",
        "client key": ca_dir / "client-key.pem",
    }


def test_keys_are_never_written_through_a_leftover_readable_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    leftover = ca_dir / ".ca-key.pem.tmp"  # what an older version left after a crash
    leftover.write_bytes(b"")
    leftover.chmod(0o644)
    modes: list[int] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        modes.append(stat.S_IMODE(os.stat(name).st_mode))
        return fd, name

    monkeypatch.setattr(engine_ca.tempfile, "mkstemp", mkstemp)
    engine_ca.client_tls(ca_dir)

    assert modes and set(modes) == {0o600}  # private from the first byte on
    assert leftover.read_bytes() == b""
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp") and p != leftover]


def _make_ca(ca_dir: str, barrier: Any) -> None:
    barrier.wait()
    engine_ca.ensure_ca(Path(ca_dir))


def test_processes_making_the_ca_at_once_leave_one_matching_key_and_certificate(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_make_ca, args=(str(ca_dir), barrier)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]

    cert, key = engine_ca.ensure_ca(ca_dir)
    assert cert.public_key() == key.public_key()
    tls = engine_ca.client_tls(ca_dir)
    x509.load_pem_x509_certificate(Path(tls.client_cert).read_bytes()).verify_directly_issued_by(cert)


def test_a_tcp_engine_without_a_client_certificate_is_never_tried_in_the_clear() -> None:
    with pytest.raises(BackendError) as caught:
        engine_client("tcp://10.199.1.2:2376", timeout=5)
    assert caught.value.permanent and "TLS" in caught.value.message


# --- real engines (netns hosts) ------------------------------------------------------------------
@pytest.fixture
def fabric_ca(settings: Any) -> Path:
    settings.STACKPORT_ENGINE_CA_DIR = str(FABRIC_CA)
    return FABRIC_CA


def tcp_url(host: dict[str, str]) -> str:
    return f"tcp://{host['address']}:2376"


def refused(**tls: Any) -> bool:
    """A client with only ``tls`` (no portal certificate) gets nowhere."""
    try:
        client = docker.DockerClient(version="1.41", timeout=5, **tls)
        client.api.trust_env = False  # the environment's CA bundle would replace ours
        client.ping()
    except (DockerException, requests.exceptions.RequestException, OSError):
        return True
    return False


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.django_db
def test_a_tcp_host_is_reached_with_mutual_tls_and_its_capacity_read_when_added(
    netns_hosts: list[dict[str, str]],  # noqa: F811
    fabric_ca: Path,
    catalog: None,
) -> None:
    sp1 = netns_hosts[0]
    host = register_host(name="sp1-tls", url=tcp_url(sp1), region="eu-west", kernel_line="6.12")
    assert host.last_error == "" and host.cpus > 0 and host.memory_mb > 0 and host.engine_id
    record = host_record(host)
    assert record.tls is not None and record.tls.verify
    backend = DockerBackend([record])
    assert backend.client().ping()

    # The row's tls_verify has behaviour: off, the engine's certificate is not checked
    # (the client certificate is still presented, the engine still demands it).
    DockerHost.objects.filter(pk=host.pk).update(tls_verify=False)
    host.refresh_from_db()
    assert host_record(host).tls == EngineTLS(
        ca_cert=str(fabric_ca / "ca.pem"),
        client_cert=str(fabric_ca / "client.pem"),
        client_key=str(fabric_ca / "client-key.pem"),
        verify=False,
    )
    assert DockerBackend([host_record(host)]).client().ping()


@pytest.mark.engine
@pytest.mark.slow
def test_an_engine_refuses_clients_without_the_portals_certificate(
    netns_hosts: list[dict[str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    url = f"https://{netns_hosts[0]['address']}:2376"
    ca = str(FABRIC_CA / "ca.pem")
    # The right CA, no client certificate.
    assert refused(base_url=url, tls=docker.tls.TLSConfig(ca_cert=ca, verify=ca))
    # A client certificate of another CA.
    other = engine_ca.client_tls(tmp_path / "other-ca")
    assert refused(
        base_url=url,
        tls=docker.tls.TLSConfig(client_cert=(other.client_cert, other.client_key), ca_cert=ca, verify=ca),
    )
    # Plain HTTP on the TLS port.
    assert refused(base_url=f"tcp://{netns_hosts[0]['address']}:2376")
    # The portal's certificate does it (the control).
    own = engine_ca.client_tls(FABRIC_CA)
    assert not refused(
        base_url=url,
        tls=docker.tls.TLSConfig(client_cert=(own.client_cert, own.client_key), ca_cert=ca, verify=ca),
    )
    # And the portal checks the engine: a CA that did not issue its certificate fails.
    with pytest.raises(BackendError):
        engine_client(
            f"tcp://{netns_hosts[0]['address']}:2376",
            timeout=5,
            tls=EngineTLS(ca_cert=other.ca_cert, client_cert=own.client_cert, client_key=own.client_key),
        ).ping()


@pytest.mark.engine
@pytest.mark.django_db
def test_a_host_added_in_admin_has_its_capacity_read(catalog: None, rf: Any, admin_user: Any) -> None:
    region = Region.objects.filter(backend="docker").first()
    assert region is not None
    host = DockerHost(name="added-in-admin", url="unix:///var/run/docker.sock", region=region)
    request = rf.post("/")
    request.user = admin_user
    site._registry[DockerHost].save_model(request, host, SimpleNamespace(changed_data=["url"]), False)
    host.refresh_from_db()
    assert host.cpus > 0 and host.memory_mb > 0 and host.engine_id and host.last_error == ""
