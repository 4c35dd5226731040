"""Content volumes of old releases are pruned from the hosts, like their tars from the store:
on the real engine (the backend), and through the daily pruning task (memory backend)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import docker
import pytest
from django.conf import settings

from projects.models import Environment
from stacks import tasks
from stacks.backends.base import HostRecord
from stacks.backends.docker import LABEL, DockerBackend, content_volume, tar_directory
from stacks.backends.memory import MemoryBackend
from stacks.runtime import content_store
from tests.conftest import Team
from tests.stacks.test_content_limits import age_the_store, deploy, environment

__all__ = ["environment"]  # the fixture, shared with test_content_limits


def _content(backend: MemoryBackend | DockerBackend, key: str, release: str) -> None:
    backend.put_content(key, {}, release, io.BytesIO(tar_directory({"index.html": release.encode()})))


@pytest.fixture
def engine_keys() -> Iterator[tuple[DockerBackend, docker.DockerClient, str, str]]:
    backend = DockerBackend(hosts=[HostRecord("local", "unix:///var/run/docker.sock")])
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    n = uuid.uuid4().int % 900_000 + 100_000
    keys = f"{settings.STACKPORT_STACK_PREFIX}-{n}", f"{settings.STACKPORT_STACK_PREFIX}-{n + 1}"
    try:
        yield backend, client, *keys
    finally:
        for key in keys:
            backend.destroy(key, {})
        client.close()


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_old_content_volumes_are_removed_from_the_engine(
    engine_keys: tuple[DockerBackend, docker.DockerClient, str, str],
) -> None:
    backend, client, key, other = engine_keys
    for release in ("r1", "r2", "r3"):
        _content(backend, key, release)
    _content(backend, other, "r1")
    # r2 is still mounted (a container of the old colour, say): it stays until it is not.
    user = client.containers.create(
        backend._helper_image(client),
        command=["true"],
        volumes={content_volume(key, "r2"): {"bind": "/content", "mode": "ro"}},
        network_disabled=True,
        labels={LABEL: key},
    )

    def volumes(of: str) -> set[str]:
        return {v.name for v in client.volumes.list(filters={"label": f"{LABEL}={of}"})}

    removed = backend.prune_content({key: {"r3"}})

    assert removed == [f"local:{content_volume(key, 'r1')}"]
    assert volumes(key) == {content_volume(key, r) + ok for r in ("r2", "r3") for ok in ("", "-ok")}
    assert volumes(other) == {content_volume(other, "r1"), content_volume(other, "r1") + "-ok"}  # not named
    assert backend.prune_content({key: {"r3"}}) == []  # nothing more to do
    user.remove(force=True)
    assert backend.prune_content({key: {"r3"}}) == [f"local:{content_volume(key, 'r2')}"]
    assert volumes(key) == {content_volume(key, "r3"), content_volume(key, "r3") + "-ok"}
    _content(backend, key, "r1")  # a pruned release put again is whole again
    assert content_volume(key, "r1") + "-ok" in volumes(key)


def test_the_memory_backend_prunes_alike() -> None:
    MemoryBackend.reset()
    backend = MemoryBackend(hosts=[HostRecord("h1", "memory://h1"), HostRecord("h2", "memory://h2")])
    for release in ("r1", "r2"):
        _content(backend, "env-1", release)
    _content(backend, "env-2", "r1")
    assert backend.prune_content({"env-1": {"r2"}}) == [
        f"h1:{content_volume('env-1', 'r1')}",
        f"h2:{content_volume('env-1', 'r1')}",
    ]
    assert backend.prune_content({"env-1": {"r2"}}) == []
    MemoryBackend.reset()


@pytest.mark.django_db
def test_the_daily_prune_removes_the_volumes_of_pruned_releases(
    environment: Environment, team: Team, memory_backend: type[MemoryBackend], settings
) -> None:
    settings.STACKPORT_CONTENT_KEEP_RELEASES = 2
    for n in range(2, 5):
        deploy(environment, team, f"v{n}")  # releases 2, 3, 4 (running)
    ids = {r.number: r.content_id for r in environment.releases.all()}
    stack = memory_backend.stack(environment.key)
    assert set(ids.values()) <= set(stack.content["h1"])
    age_the_store()

    tasks.prune_content_task()

    # The store keeps 3 and 4 (the last two that ran); their volumes stay, the others go.
    assert {r.number for r in environment.releases.all() if content_store.exists(r.content_sha256)} == {3, 4}
    assert set(stack.content["h1"]) == {ids[3], ids[4]}
