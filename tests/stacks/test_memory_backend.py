"""The in-memory backend keeps the interface's contract (stacks/backends/base.py): built
like the Docker backend, the Docker backend's names, subnets and addresses, idempotent
apply, destroy of a missing stack is success, injected errors surface as given, logs and
samples return what a test seeded. It is a stand-in for unit tests; the engine tests are
the proof that stacks run."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from typing import Any

import pytest

from projects.models import Environment
from stacks.backends.base import (
    Backend,
    BackendError,
    ComponentSpec,
    HostRecord,
    ResourceSample,
    StackSpec,
    VolumeSpec,
    get_backend,
)
from stacks.backends.docker import content_volume, subnet_candidates, volume_name
from stacks.backends.memory import IMAGES, STACKS, MemoryBackend
from stacks.runtime import lifecycle
from stacks.runtime.operations import backend_for
from tests.conftest import MEMORY_BACKEND, Team, add_memory_host

IMAGE = "127.0.0.1:5000/stackport/{}@sha256:" + "a" * 64
ONE_HOST = [HostRecord("h1", "memory://h1")]


@pytest.fixture(autouse=True)
def clean(memory_backend: type[MemoryBackend]) -> None:
    """Every test starts from (and leaves) an empty memory."""


def web(**changes: Any) -> ComponentSpec:
    comp = ComponentSpec(
        name="web",
        image=IMAGE.format("nginx"),
        replicas=2,
        cpus=0.25,
        memory_mb=256,
        pids=128,
        user="101",
        read_only=True,
        ports=(8080,),
        public_port=8080,
        content_path="/srv",
        version="1.26",
    )
    return dataclasses.replace(comp, **changes)


def db(**changes: Any) -> ComponentSpec:
    comp = ComponentSpec(
        name="db",
        image=IMAGE.format("postgresql"),
        replicas=1,
        cpus=0.5,
        memory_mb=512,
        pids=256,
        user="999",
        read_only=False,
        ports=(5432,),
        volumes=(VolumeSpec("data", "/var/lib/postgresql"),),
        health=("pg_isready",),
        stateful=True,
        version="15",
    )
    return dataclasses.replace(comp, **changes)


def spec(key: str = "env-7", *components: ComponentSpec, **changes: Any) -> StackSpec:
    stack = StackSpec(
        key=key,
        number=7,
        region="eu-central",
        kernel_line="6.1",
        components=components or (db(), web()),
        content_release="r1",
    )
    return dataclasses.replace(stack, **changes)


def tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- construction ----------------------------------------------------------------------------
def test_it_is_built_like_the_docker_backend() -> None:
    backend = get_backend(MEMORY_BACKEND, hosts=ONE_HOST)
    assert isinstance(backend, MemoryBackend) and isinstance(backend, Backend)
    assert backend.hosts == ONE_HOST
    assert MemoryBackend().hosts[0].name == "memory"
    with pytest.raises(BackendError, match="no Docker host is available") as refused:
        get_backend(MEMORY_BACKEND, hosts=[])
    assert refused.value.permanent is False


def test_every_method_of_the_interface_is_implemented() -> None:
    public = {name for name in vars(Backend) if not name.startswith("_")}
    # Implemented here or in the placement it shares with the Docker backend, never Backend's stub.
    missing = {name for name in public if getattr(MemoryBackend, name) is getattr(Backend, name)}
    assert not missing, sorted(missing)


@pytest.mark.django_db
def test_backend_for_builds_it_from_the_regions_hosts(team: Team, offered_catalog: None) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )
    with pytest.raises(BackendError, match="no Docker host"):
        backend_for(env)
    add_memory_host(env, "h1")
    backend = backend_for(env)
    assert isinstance(backend, MemoryBackend)
    assert [h.name for h in backend.hosts] == ["h1"]


# --- apply -----------------------------------------------------------------------------------
def test_apply_is_find_or_create() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    lines: list[str] = []

    state = backend.apply(spec(), {}, lines.append)

    assert state == {"host": "h1", "subnet": str(next(subnet_candidates(7))), "hosts": ["h1"]}
    stack = MemoryBackend.stack("env-7")
    assert sorted(stack.containers) == ["sp-env-7-db-a0", "sp-env-7-web-a0", "sp-env-7-web-a1"]
    assert stack.volumes == {"h1": {volume_name("env-7", db(), "data")}}
    assert stack.containers["sp-env-7-web-a0"].volumes == (content_volume("env-7", "r1"),)
    assert sum("starting" in line for line in lines) == 3
    before = dict(stack.containers)

    lines.clear()
    again = backend.apply(spec(), state, lines.append)

    assert again == state
    assert stack.containers == before and all(stack.containers[n] is before[n] for n in before)
    assert lines == []


def test_names_subnets_and_addresses_are_the_docker_backends() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    first = backend.apply(spec("env-7"), {}, print)
    second = backend.apply(spec("env-8"), {}, print)  # the same number: the next free /24

    candidates = subnet_candidates(7)
    assert first["subnet"] == str(next(candidates))
    assert second["subnet"] == str(next(candidates))
    observed = backend.observe(spec("env-7"), first)
    assert observed.healthy()
    addresses = {r.address for r in observed.replicas if r.component == "web"}
    assert addresses == {"10.64.7.30:8080", "10.64.7.31:8080"}  # slots after db's
    assert addresses <= set(backend.upstreams(spec("env-7"), first))
    assert len(backend.upstreams(spec("env-7"), first)) == 20  # two colours of ten slots
    assert {r.address for r in observed.replicas if r.component == "db"} == {None}


def test_a_changed_spec_replaces_stateless_in_the_other_colour_and_stateful_in_place() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    state = backend.apply(spec(), {}, print)
    lines: list[str] = []

    backend.apply(
        spec("env-7", db(version="17", image=IMAGE.format("pg17")), web(version="1.27")), state, lines.append
    )

    stack = MemoryBackend.stack("env-7")
    assert sorted(stack.containers) == ["sp-env-7-db-a0", "sp-env-7-web-b0", "sp-env-7-web-b1"]
    assert stack.containers["sp-env-7-db-a0"].version == "17"
    assert "replacing sp-env-7-db-a0 (its spec changed)" in lines
    assert "draining and removing sp-env-7-web-a0" in lines


def test_scaling_stopping_and_starting_again() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    state = backend.apply(spec("env-7", web(replicas=3)), {}, print)
    assert len(MemoryBackend.stack("env-7").containers) == 3

    state = backend.apply(spec("env-7", web(replicas=1)), state, print)
    # The replica count is part of the component's spec: as on Docker, the other colour.
    assert sorted(MemoryBackend.stack("env-7").containers) == ["sp-env-7-web-b0"]

    stopped = backend.apply(spec("env-7", web(replicas=1), running=False), state, print)
    assert MemoryBackend.stack("env-7").containers == {}
    assert stopped["subnet"] == state["subnet"]  # the network stays: the edge keeps its slots
    assert backend.observe(spec("env-7"), stopped).replicas == []

    backend.apply(spec("env-7", web(replicas=1)), stopped, print)
    MemoryBackend.stack("env-7").containers["sp-env-7-web-a0"].status = "exited"  # it crashed
    assert not backend.observe(spec("env-7", web(replicas=1)), stopped).healthy()
    lines: list[str] = []
    backend.apply(spec("env-7", web(replicas=1)), stopped, lines.append)
    assert lines == ["starting sp-env-7-web-a0"]
    assert backend.observe(spec("env-7", web(replicas=1)), stopped).healthy()


def test_a_removed_component_goes() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    state = backend.apply(spec(), {}, print)
    lines: list[str] = []
    backend.apply(spec("env-7", web()), state, lines.append)
    assert "removing sp-env-7-db-a0 (component removed)" in lines
    assert {c.component for c in MemoryBackend.stack("env-7").containers.values()} == {"web"}


def test_invalid_keys_are_permanent_and_a_gone_home_is_transient() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    with pytest.raises(BackendError) as bad:
        backend.apply(spec("Env 7; rm"), {}, print)
    assert bad.value.permanent
    with pytest.raises(BackendError) as bad:
        backend.destroy("../x", {})
    assert bad.value.permanent
    with pytest.raises(BackendError, match="'gone' is not available") as gone:
        backend.apply(spec(), {"host": "gone"}, print)
    assert not gone.value.permanent


def test_routed_hosts_spread_the_public_component_and_keep_data_at_home() -> None:
    hosts = [
        HostRecord("h1", "memory://h1", pool="10.225.0.0/16"),
        HostRecord("h2", "memory://h2", pool="10.226.0.0/16"),
        HostRecord("h3", "memory://h3", pool="10.227.0.0/16", drain=True),
    ]
    backend = MemoryBackend(hosts=hosts)

    state = backend.apply(spec("env-7", db(), web(replicas=3)), {}, print)

    assert state == {"host": "h1", "number": 8, "hosts": ["h1", "h2"]}
    by_name = {n: c.host for n, c in MemoryBackend.stack("env-7").containers.items()}
    assert by_name == {
        "sp-env-7-db-a0": "h1",
        "sp-env-7-web-a0": "h1",
        "sp-env-7-web-a1": "h2",
        "sp-env-7-web-a2": "h1",
    }
    assert MemoryBackend.stack("env-7").networks == {"h1": "10.225.8.0/24", "h2": "10.226.8.0/24"}
    other = backend.apply(spec("env-9", web(replicas=1), number=7), {}, print)
    assert other["number"] == 9  # 8 is taken on these hosts


# --- destroy ---------------------------------------------------------------------------------
def test_destroy_removes_everything_and_a_missing_stack_is_success() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    state = backend.apply(spec(), {}, print)
    backend.put_content("env-7", state, "r1", io.BytesIO(tar({"index.html": b"hi"})))

    backend.destroy("env-7", state)

    assert "env-7" not in STACKS
    assert backend.observe(spec(), state).replicas == []
    backend.destroy("env-7", state)  # again
    backend.destroy("env-404", {})  # never there
    assert backend.stacks() == {}


def test_another_backends_hosts_are_not_touched() -> None:
    MemoryBackend(hosts=ONE_HOST).apply(spec(), {}, print)
    elsewhere = MemoryBackend(hosts=[HostRecord("h9", "memory://h9")])

    elsewhere.destroy("env-7", {})

    assert elsewhere.observe(spec(), {"host": "h9"}).replicas == []
    assert len(MemoryBackend.stack("env-7").containers) == 3


# --- faults ----------------------------------------------------------------------------------
def test_an_injected_error_surfaces_once_with_its_permanent_flag() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    MemoryBackend.fail_next("apply", BackendError("not healthy: web-a0 keeps exiting", permanent=True))

    with pytest.raises(BackendError, match="keeps exiting") as failed:
        backend.apply(spec(), {}, print)

    assert failed.value.permanent is True
    assert "env-7" not in STACKS  # raised before anything changed
    assert backend.apply(spec(), {}, print)["host"] == "h1"  # once only
    assert MemoryBackend.calls("apply") == [("env-7",), ("env-7",)]


def test_an_error_in_the_mapping_stays_until_removed() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    MemoryBackend.errors["destroy"] = BackendError("Docker host h1 does not answer")

    for _ in range(2):
        with pytest.raises(BackendError, match="does not answer") as failed:
            backend.destroy("env-7", {})
        assert failed.value.permanent is False
    del MemoryBackend.errors["destroy"]
    backend.destroy("env-7", {})

    MemoryBackend.errors["logs"] = ConnectionRefusedError("refused")  # not only BackendError
    with pytest.raises(ConnectionRefusedError):
        list(backend.logs("env-7", {}, "web"))
    with pytest.raises(ValueError, match="not a backend method"):
        MemoryBackend.fail_next("aply", BackendError("typo"))


# --- logs, samples, content, data, images --------------------------------------------------------
def test_logs_return_the_last_lines_of_each_replica_as_seeded() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    MemoryBackend.seed_logs("env-7", "web", ["a1", "a2", "a3"], replica=0)
    MemoryBackend.seed_logs("env-7", "web", ["b1"], replica=1)
    MemoryBackend.seed_logs("env-7", "db", ["db line"])

    assert list(backend.logs("env-7", {}, "web")) == ["a1", "a2", "a3", "b1"]
    assert list(backend.logs("env-7", {}, "web", tail=2)) == ["a2", "a3", "b1"]
    assert list(backend.logs("env-7", {}, "cache")) == []
    assert list(backend.logs("env-8", {}, "web")) == []
    MemoryBackend.clear_logs("env-7", "web")
    assert list(backend.logs("env-7", {}, "web")) == []
    assert MemoryBackend.calls("logs")[:2] == [("env-7", "web", 200), ("env-7", "web", 2)]


def test_samples_are_the_seeded_ones_else_one_idle_per_running_replica() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    assert backend.samples("env-7", {}) == []
    state = backend.apply(spec("env-7", web(replicas=2)), {}, print)
    assert backend.samples("env-7", state) == [
        ResourceSample("web", 0, 0.0, 0),
        ResourceSample("web", 1, 0.0, 0),
    ]

    seeded = [ResourceSample("web", 0, 12.5, 50 * 2**20)]
    MemoryBackend.seed_samples("env-7", seeded)

    assert backend.samples("env-7", state) == seeded


def test_content_is_kept_once_per_release_and_a_non_tar_is_refused() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    first, second = tar({"index.html": b"one"}), tar({"index.html": b"two"})

    backend.put_content("env-7", {}, "r1", io.BytesIO(first), IMAGE.format("nginx"))
    backend.put_content("env-7", {}, "r1", io.BytesIO(second))  # already there: nothing changes

    assert MemoryBackend.stack("env-7").content == {"h1": {"r1": first}}
    with pytest.raises(BackendError) as refused:
        backend.put_content("env-7", {}, "r2", io.BytesIO(b"not a tar archive at all" * 30))
    assert refused.value.permanent
    with pytest.raises(BackendError) as invalid:
        backend.put_content("env-7", {}, "../r3", io.BytesIO(first))
    assert invalid.value.permanent


def test_migrate_data_makes_new_volumes_and_keeps_the_old() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    state = backend.apply(spec(), {}, print)
    old, new = db(), db(version="17", data_generation=1, data_restore=("restore",))

    backend.migrate_data(spec(), state, old, new, print)

    assert MemoryBackend.stack("env-7").volumes["h1"] == {
        volume_name("env-7", old, "data"),
        volume_name("env-7", new, "data"),
    }
    assert MemoryBackend.stack("env-7").migrations == [("db", 0, 1)]
    with pytest.raises(BackendError, match="new data generation") as same:
        backend.migrate_data(spec(), state, old, old, print)
    assert same.value.permanent
    with pytest.raises(BackendError, match="no dump-and-restore") as unknown:
        backend.migrate_data(spec(), state, old, dataclasses.replace(new, data_restore=()), print)
    assert unknown.value.permanent


def test_stacks_lists_every_stack_and_prune_keeps_what_is_used_or_kept() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    backend.apply(spec("env-7", web(replicas=1)), {}, print)
    backend.apply(spec("env-8", db()), {}, print)
    IMAGES["h1"] |= {IMAGE.format("old"), IMAGE.format("rollback"), "stackport/debian:12"}

    listed = backend.stacks()

    assert {k: [(r.component, r.index, r.host) for r in v] for k, v in listed.items()} == {
        "env-7": [("web", 0, "h1")],
        "env-8": [("db", 0, "h1")],
    }
    assert backend.prune_images({IMAGE.format("rollback")}) == [f"h1:{IMAGE.format('old')}"]
    assert IMAGES["h1"] == {
        IMAGE.format("nginx"),
        IMAGE.format("postgresql"),
        IMAGE.format("rollback"),
        "stackport/debian:12",
    }


def test_reset_forgets_everything() -> None:
    backend = MemoryBackend(hosts=ONE_HOST)
    backend.apply(spec(), {}, print)
    MemoryBackend.seed_logs("env-9", "web", ["x"])
    MemoryBackend.fail_next("stacks", BackendError("x"))
    MemoryBackend.errors["samples"] = BackendError("y")

    MemoryBackend.reset()

    assert STACKS == {} and IMAGES == {} and MemoryBackend.calls() == []
    assert backend.stacks() == {} and backend.samples("env-9", {}) == []


@pytest.mark.django_db
def test_the_environment_fixture_shape_works_end_to_end(team: Team, offered_catalog: None) -> None:
    """What a service test does: a host row, backend_for, apply, and the state the portal keeps."""
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="static-site"
    )
    add_memory_host(env, "h1")
    backend = backend_for(env)
    state = backend.apply(spec(env.key, web(replicas=1)), env.backend_state, print)
    Environment.objects.filter(pk=env.pk).update(backend_state=state)
    env.refresh_from_db()
    assert env.backend_state["host"] == "h1" and env.backend_state["hosts"] == ["h1"]
    assert backend_for(env).observe(spec(env.key, web(replicas=1)), env.backend_state).healthy()
