"""Placement: a new stack's home is the active host of its region and kernel line with the
most free memory; a stack stays where it is; no room is a clear failure."""

from __future__ import annotations

from typing import Any

import pytest

from projects.models import Environment, Project
from stacks.catalog.loader import load_catalog
from stacks.models import DockerHost, KernelVersion, Region, Size, StackComponent
from stacks.runtime.operations import OperationFailed, hosts_for
from tests.conftest import place


@pytest.fixture
def region(db: None) -> Region:
    load_catalog()
    return Region.objects.get(code="eu-central")


def host(region: Region, name: str, memory: int, line: str = "6.12", **kw: Any) -> DockerHost:
    return DockerHost.objects.create(
        name=name,
        url=f"unix:///run/{name}.sock",
        region=region,
        kernel=KernelVersion.objects.get(line=line),
        memory_mb=memory,
        **kw,
    )


def environment(team: Any, region: Region, name: str, memory_mb: int, on: str | None = None) -> Environment:
    from stacks.models import Component, ComponentVersion

    project = Project.objects.create(organization=team.org, name=name, region=region)
    env = Environment.objects.create(
        project=project,
        kernel=KernelVersion.objects.get(line="6.12"),
    )
    if on:
        place(env, on)
    size, _ = Size.objects.get_or_create(
        code=f"s{memory_mb}", defaults={"name": "x", "cpus": 1, "memory_mb": memory_mb}
    )
    component = Component.objects.get(code="nginx")
    StackComponent.objects.create(
        environment=env,
        name="web",
        component=component,
        version=ComponentVersion.objects.filter(component=component).first(),
        size=size,
        replicas=1,
    )
    return env


def test_a_new_stack_goes_to_the_host_with_most_free_memory(team: Any, region: Region) -> None:
    host(region, "big", 4096)
    host(region, "small", 2048)
    host(region, "other-kernel", 65536, line="6.1")
    host(region, "drained", 65536, state=DockerHost.State.DRAINING)
    environment(team, region, "Existing", 3000, on="big")
    new = environment(team, region, "New", 256)
    # A draining host is listed last, for cleanup only: nothing new is placed on it.
    assert [(h.name, h.drain) for h in hosts_for(new)] == [
        ("small", False),
        ("big", False),
        ("drained", True),
    ]


def test_a_stack_stays_on_its_host(team: Any, region: Region) -> None:
    host(region, "big", 4096)
    host(region, "small", 2048)
    env = environment(team, region, "Placed", 256, on="small")
    assert hosts_for(env)[0].name == "small"


def test_no_room_is_refused_with_a_clear_message(team: Any, region: Region) -> None:
    host(region, "tiny", 512)
    env = environment(team, region, "Huge", 4096)
    with pytest.raises(OperationFailed, match=r"No host in .* has 4096 MB free"):
        hosts_for(env)
