"""Hosts pull the catalog's images over TLS with credentials (docs/install.md, "The image
registry"): scripts/docker-hosts.sh has scripts/registry.sh serve the registry's storage
read-only on 10.199.0.1:5443 with a certificate of the fabric's CA and basic auth, and every
engine here trusts that CA for it. A host with a ``RegistryPull`` pulls the catalog's
reference (127.0.0.1:5000/...@sha256:...) from there, same digest, with the credentials.

The engine tests start the shared netns hosts: run them under ``flock /tmp/netns.lock``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from docker.errors import APIError, ImageNotFound

from stacks.backends.base import HostRecord, RegistryPull
from stacks.backends.docker import DockerBackend
from stacks.models import DockerHost
from stacks.runtime.hosts import host_record
from tests.stacks.test_multihost import netns_hosts  # noqa: F401 (fixture)

REGISTRY = "127.0.0.1:5000"
TLS_ADDR = "10.199.0.1:5443"  # scripts/docker-hosts.sh
REGISTRY_DIR = Path("/var/lib/stackport/registry")  # scripts/registry.sh
CA_CERT = Path(f"/etc/docker/certs.d/{TLS_ADDR}/ca.crt")


# --- the reference a host pulls ----------------------------------------------------------------
def test_catalog_references_are_pulled_from_the_tls_address_with_the_same_digest() -> None:
    pull = RegistryPull(prefix=REGISTRY, address=TLS_ADDR, username="u", password="s3cret-pw")
    image = f"{REGISTRY}/stackport/redis@sha256:{'a' * 64}"
    assert pull.source(image) == f"{TLS_ADDR}/stackport/redis@sha256:{'a' * 64}"
    assert pull.source("stackport/debian:bookworm") == ""  # not the registry's: as it is
    assert pull.source(f"{REGISTRY}0/x@sha256:{'a' * 64}") == ""  # another port
    assert "s3cret-pw" not in repr(pull)


def test_host_records_carry_the_pull_address_and_credentials_from_the_settings(settings: Any) -> None:
    host = DockerHost(name="sp1", url="unix:///run/stackport/h1/docker.sock")
    settings.STACKPORT_REGISTRY_PULL_URL = ""
    assert host_record(host).registry is None  # the default: references as they are
    settings.STACKPORT_REGISTRY_PULL_URL = f"https://{TLS_ADDR}"
    settings.STACKPORT_REGISTRY_USERNAME = "stackport-pull"
    settings.STACKPORT_REGISTRY_PASSWORD = "secret"
    assert host_record(host).registry == RegistryPull(REGISTRY, TLS_ADDR, "stackport-pull", "secret")


# --- real pulls from a netns host --------------------------------------------------------------
@pytest.fixture(scope="module")
def credentials(netns_hosts: list[dict[str, str]]) -> tuple[str, str]:  # noqa: F811
    user, _, password = (REGISTRY_DIR / "pull-credentials").read_text().strip().partition(":")
    return user, password


@pytest.fixture(scope="module")
def catalog_image(published_catalog: dict[tuple[str, str], dict[str, Any]]) -> str:
    """A published catalog image's pinned reference (the smallest at hand: redis)."""
    refs = sorted(
        (0 if code == "redis" else 1, f"{REGISTRY}/{result['repository']}@{result['digest']}")
        for (code, _version), result in published_catalog.items()
        if result["status"] in ("current", "deprecated") and str(result["digest"]).startswith("sha256:")
    )
    assert refs, "no catalog image was published"
    return refs[0][1]


def _forget(client: docker.DockerClient, *references: str) -> None:
    """The host no longer knows the image under these names (the layers may stay)."""
    for reference in references:
        try:
            client.images.remove(reference, noprune=True)
        except ImageNotFound:
            pass


@pytest.mark.engine
@pytest.mark.slow
def test_a_host_pulls_a_catalog_image_over_tls_with_credentials_and_runs_it(
    netns_hosts: list[dict[str, str]],  # noqa: F811
    credentials: tuple[str, str],
    catalog_image: str,
) -> None:
    host = netns_hosts[0]
    pull = RegistryPull(REGISTRY, TLS_ADDR, *credentials)
    backend = DockerBackend([HostRecord(host["name"], host["url"], host["pool"], registry=pull)])
    client = backend.client(host["name"])
    source = pull.source(catalog_image)
    _forget(client, catalog_image, source)

    local = backend._ensure_image(client, catalog_image)

    assert local == source and source.startswith(f"{TLS_ADDR}/")
    assert source.split("@")[1] == catalog_image.split("@")[1]  # the same digest
    image = client.images.get(source)
    assert source in image.attrs["RepoDigests"]
    output = client.containers.run(
        local, entrypoint=["sh", "-c", "echo pulled over tls"], network_disabled=True, remove=True
    )
    assert output.strip() == b"pulled over tls"
    assert backend._ensure_image(client, catalog_image) == source  # there now: no second pull


def _pull_error(client: docker.DockerClient, repo: str, digest: str, auth: dict[str, str] | None) -> str:
    """The engine's error for this pull (it reports it in the progress stream)."""
    try:
        stream = client.api.pull(repo, tag=digest, auth_config=auth, stream=True, decode=True)
        return " ".join(str(line.get("error", "")) for line in stream if "error" in line)
    except APIError as exc:
        return str(exc)


@pytest.mark.engine
@pytest.mark.slow
def test_a_pull_without_credentials_is_refused(
    netns_hosts: list[dict[str, str]],  # noqa: F811
    credentials: tuple[str, str],
    catalog_image: str,
) -> None:
    host = netns_hosts[0]
    source = RegistryPull(REGISTRY, TLS_ADDR).source(catalog_image)
    client = docker.DockerClient(base_url=host["url"], version="auto", timeout=120)
    try:
        _forget(client, source)
        repo, _, digest = source.partition("@")
        message = _pull_error(client, repo, digest, None).lower()
        assert "no basic auth credentials" in message or "unauthorized" in message, message
        wrong = {"username": credentials[0], "password": "wrong"}
        assert "unauthorized" in _pull_error(client, repo, digest, wrong).lower()
        with pytest.raises(ImageNotFound):
            client.images.get(source)
    finally:
        client.close()
    # The registry's own answers, from the root namespace with the CA.
    url = f"https://{TLS_ADDR}/v2/"
    assert requests.get(url, verify=str(CA_CERT), timeout=10).status_code == 401
    assert requests.get(url, verify=str(CA_CERT), auth=credentials, timeout=10).status_code == 200


@pytest.mark.engine
@pytest.mark.slow
def test_plain_http_to_the_tls_port_gets_nothing(
    netns_hosts: list[dict[str, str]],  # noqa: F811
    credentials: tuple[str, str],
    catalog_image: str,
) -> None:
    repository, _, digest = catalog_image.removeprefix(f"{REGISTRY}/").partition("@")
    answer = requests.get(
        f"http://{TLS_ADDR}/v2/{repository}/manifests/{digest}", auth=credentials, timeout=10
    )
    assert answer.status_code == 400  # Go's TLS server to a plain-HTTP client
    assert "HTTPS" in answer.text and digest not in answer.text
    # Nor does the TLS listener take pushes: it is read-only, pushes stay on loopback.
    upload = requests.post(
        f"https://{TLS_ADDR}/v2/stackport-test/registry-tls/blobs/uploads/",
        auth=credentials,
        verify=str(CA_CERT),
        timeout=10,
    )
    assert upload.status_code in (405, 503), upload.text
