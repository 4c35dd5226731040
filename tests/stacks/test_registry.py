"""stacks.catalog.registry.RegistryClient against the real registry (scripts/registry.sh), with real
images pushed by the real Docker Engine. Each run pushes under its own random repository
names and deletes what it pushed."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.images import Image

from stacks.catalog import registry
from stacks.catalog.registry import RegistryClient, RegistryError

pytestmark = [pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_ADDR = "127.0.0.1:5000"
REGISTRY_URL = f"http://{REGISTRY_ADDR}"
# Where scripts/registry.sh keeps repositories; emptied of ours after the run.
REGISTRY_REPOSITORIES = Path("/var/lib/stackport/registry/data/docker/registry/v2/repositories")

Push = Callable[[Image, str, str], str]


def run_script(name: str, **env: str) -> None:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"scripts/{name} failed:\n{result.stdout}\n{result.stderr}"


def unused_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    try:
        client.ping()
    except docker.errors.DockerException:
        run_script("docker-engine.sh")
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry_url() -> str:
    run_script("registry.sh", STACKPORT_REGISTRY_ADDR=REGISTRY_ADDR)
    return REGISTRY_URL


@pytest.fixture
def client(registry_url: str) -> Iterator[RegistryClient]:
    with RegistryClient(registry_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def busybox_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context for a tiny image: Debian's static busybox on scratch."""
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "busybox-static"], capture_output=True, text=True
    )
    if "install ok installed" not in installed.stdout:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "busybox-static"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=True,
            capture_output=True,
            timeout=300,
        )
    context = tmp_path_factory.mktemp("busybox-image")
    shutil.copy2("/bin/busybox", context / "busybox")
    dockerfile = 'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox", "true"]\n'
    (context / "Dockerfile").write_text(dockerfile)
    return context


@pytest.fixture(scope="module")
def images(docker_client: docker.DockerClient, busybox_context: Path) -> Iterator[tuple[Image, Image]]:
    """Two distinct tiny images (they differ by a label, so by manifest digest)."""
    run = secrets.token_hex(4)

    def build(n: int) -> Image:
        labels = {"org.stackport.test": f"{run}-{n}"}
        image, _ = docker_client.images.build(path=str(busybox_context), labels=labels, rm=True, forcerm=True)
        return image

    built = (build(1), build(2))
    yield built
    for image in built:
        # Untagging its last pushed tag may have removed it already.
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def push(docker_client: docker.DockerClient, registry_url: str) -> Iterator[Push]:
    """Tag and push an image; returns the digest the engine reports. Deletes it all after."""
    pushed: list[tuple[str, str]] = []

    def push(image: Image, repository: str, tag: str) -> str:
        target = f"{REGISTRY_ADDR}/{repository}"
        assert image.tag(target, tag)
        pushed.append((repository, tag))
        for line in docker_client.images.push(target, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
        image.reload()
        digests = [d.split("@", 1)[1] for d in image.attrs["RepoDigests"] if d.startswith(f"{target}@")]
        assert len(digests) == 1, image.attrs["RepoDigests"]
        return digests[0]

    yield push
    with RegistryClient(registry_url) as client:
        for repository, tag in pushed:
            digest = client.digest(repository, tag)
            if digest:
                client.delete(repository, digest)
            docker_client.images.remove(f"{REGISTRY_ADDR}/{repository}:{tag}")
    # Deleting manifests leaves each repository in the catalog; drop our folders.
    for repository in {repository for repository, _ in pushed}:
        assert repository.startswith("stackport-test/")
        shutil.rmtree(REGISTRY_REPOSITORIES / repository, ignore_errors=True)


def new_repository() -> str:
    return f"stackport-test/r{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def tagged(images: tuple[Image, Image], push: Push) -> tuple[str, dict[str, str]]:
    """One repository with tags "one" and "two" on different images: (name, digests)."""
    repository = new_repository()
    return repository, {"one": push(images[0], repository, "one"), "two": push(images[1], repository, "two")}


def test_ping_answers_true_for_the_running_registry(client: RegistryClient) -> None:
    assert client.ping() is True


def test_ping_answers_false_when_nothing_listens() -> None:
    with RegistryClient(f"http://127.0.0.1:{unused_loopback_port()}", timeout=2) as client:
        assert client.ping() is False


def test_tags_lists_every_pushed_tag(client: RegistryClient, tagged: tuple[str, dict[str, str]]) -> None:
    repository, _ = tagged

    assert sorted(client.tags(repository)) == ["one", "two"]


def test_catalog_follows_pagination(
    client: RegistryClient,
    images: tuple[Image, Image],
    push: Push,
    tagged: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = new_repository()
    push(images[0], other, "latest")
    monkeypatch.setattr(registry, "PAGE_SIZE", 1)
    urls: list[str] = []
    send = client.session.request

    def recording_send(method: str, url: str, **kwargs: Any) -> Any:
        urls.append(url)
        return send(method, url, **kwargs)

    monkeypatch.setattr(client.session, "request", recording_send)

    repositories = client.repositories()

    assert {tagged[0], other} <= set(repositories)
    assert len(repositories) == len(set(repositories)) == len(urls)
    assert all("last=" in url for url in urls[1:])
    # distribution 2.8 ignores "n" on tag lists (one page, no Link); the client still asks.
    assert sorted(client.tags(tagged[0])) == ["one", "two"]


def test_digest_equals_the_digest_the_engine_reports_after_push(
    client: RegistryClient, tagged: tuple[str, dict[str, str]]
) -> None:
    repository, digests = tagged

    assert client.digest(repository, "one") == digests["one"]
    assert client.digest(repository, "two") == digests["two"]
    assert digests["one"] != digests["two"]
    # A digest is a reference too.
    assert client.digest(repository, digests["one"]) == digests["one"]


def test_tags_with_digests_maps_each_tag_to_its_manifest(
    client: RegistryClient, tagged: tuple[str, dict[str, str]]
) -> None:
    repository, digests = tagged

    assert client.tags_with_digests(repository) == digests


def test_unknown_repository_has_no_tags_and_no_digest(client: RegistryClient) -> None:
    repository = new_repository()

    assert client.tags(repository) == []
    assert client.tags_with_digests(repository) == {}
    assert client.digest(repository, "latest") is None


def test_unknown_tag_has_no_digest(client: RegistryClient, tagged: tuple[str, dict[str, str]]) -> None:
    repository, _ = tagged

    assert client.digest(repository, "no-such-tag") is None


def test_delete_removes_the_manifest_and_its_tag_and_is_idempotent(
    client: RegistryClient, images: tuple[Image, Image], push: Push
) -> None:
    repository = new_repository()
    gone = push(images[0], repository, "gone")
    kept = push(images[1], repository, "kept")

    client.delete(repository, gone)

    assert client.digest(repository, "gone") is None
    assert client.digest(repository, gone) is None
    assert client.tags_with_digests(repository) == {"kept": kept}
    client.delete(repository, gone)  # already gone: still fine
    client.delete(repository, kept)
    assert client.tags(repository) == []


@pytest.mark.parametrize(
    "repository", ["", "UPPER/case", "stackport-test/", "/leading", "a..b", "a___b", "a" * 256, "x/../y"]
)
def test_invalid_repository_name_is_refused_before_any_request(repository: str) -> None:
    # Nothing listens on this port: a request would raise a transient error instead.
    with RegistryClient(f"http://127.0.0.1:{unused_loopback_port()}") as client:
        for call in (
            lambda: client.tags(repository),
            lambda: client.digest(repository, "latest"),
            lambda: client.delete(repository, "sha256:" + "0" * 64),
        ):
            with pytest.raises(RegistryError) as excinfo:
                call()
            assert excinfo.value.permanent is True


@pytest.mark.parametrize("reference", ["", "-dash", "has space", "a" * 129, "../latest", "sha256:"])
def test_invalid_reference_is_refused_before_any_request(reference: str) -> None:
    with RegistryClient(f"http://127.0.0.1:{unused_loopback_port()}") as client:
        with pytest.raises(RegistryError) as excinfo:
            client.digest("stackport-test/x", reference)
        assert excinfo.value.permanent is True


def test_delete_by_tag_is_refused_before_any_request() -> None:
    # The registry deletes manifests by digest only.
    with RegistryClient(f"http://127.0.0.1:{unused_loopback_port()}") as client:
        with pytest.raises(RegistryError) as excinfo:
            client.delete("stackport-test/x", "latest")
        assert excinfo.value.permanent is True


def test_connection_refused_is_a_transient_error() -> None:
    with RegistryClient(f"http://127.0.0.1:{unused_loopback_port()}", timeout=2) as client:
        for call in (client.repositories, lambda: client.tags("stackport-test/x")):
            with pytest.raises(RegistryError) as excinfo:
                call()
            assert excinfo.value.permanent is False
            assert "unreachable" in str(excinfo.value)


def test_client_error_other_than_not_found_is_permanent(client: RegistryClient) -> None:
    # A well-formed digest the registry rejects (unsupported algorithm): 400 DIGEST_INVALID.
    with pytest.raises(RegistryError) as excinfo:
        client.delete("stackport-test/x", "md5:" + "0" * 32)

    assert excinfo.value.permanent is True
    assert "400" in str(excinfo.value)
