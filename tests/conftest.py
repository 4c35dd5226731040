"""Named users for permission cases: owner, admin, developer, viewer of one organization,
and an outsider who owns another organization."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client

from projects.models import Membership, Organization, Role, User
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory, UserFactory

if TYPE_CHECKING:
    from stacks.backends.memory import MemoryBackend


@dataclass
class Team:
    org: Organization
    owner: User
    admin: User
    developer: User
    viewer: User
    outsider: User
    outsider_org: Organization

    def membership(self, user: User) -> Membership:
        return Membership.objects.get(organization=self.org, user=user)


@pytest.fixture
def team(db: None) -> Team:
    org = OrganizationFactory(name="Acme Hosting Co")
    users = {}
    for role in (Role.OWNER, Role.ADMIN, Role.DEVELOPER, Role.VIEWER):
        users[role.value] = MembershipFactory(
            organization=org, role=role, user__email=f"{role.value}@acme.test"
        ).user
    outsider_membership = MembershipFactory(
        organization__name="Other Corp", role=Role.OWNER, user__email="outsider@other.test"
    )
    return Team(
        org=org,
        outsider=outsider_membership.user,
        outsider_org=outsider_membership.organization,
        **users,
    )


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # Factories hash a password per user; the production hasher is slow on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def user(db: None) -> User:
    return UserFactory()


@pytest.fixture(scope="session")
def engine() -> None:
    """The real Docker engine, local registry and Debian base images (started if needed)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script in ("docker-engine.sh", "registry.sh", "base-images.sh"):
        subprocess.run([str(root / "scripts" / script)], check=True, capture_output=True, timeout=900)


@pytest.fixture
def offered_catalog(db: None) -> None:
    """The shipped catalog loaded and every version offered as its catalog file wants it,
    with made-up image digests: for pages, the API and services that never start a
    container. Tests that run stacks use ``tests/stacks/conftest.py``'s ``catalog``."""
    import hashlib

    from stacks.catalog.loader import load_catalog
    from stacks.models import ComponentVersion, VersionStatus

    load_catalog()
    for cv in ComponentVersion.objects.select_related("component"):
        digest = "sha256:" + hashlib.sha256(f"{cv.component.code}:{cv.version}".encode()).hexdigest()
        status = cv.target_status if cv.target_status != VersionStatus.CANDIDATE else VersionStatus.CURRENT
        ComponentVersion.objects.filter(pk=cv.pk).update(
            status=status,
            digest=digest,
            image_ref=f"127.0.0.1:5000/stackport/{cv.component.code}:{cv.version}",
        )


MEMORY_BACKEND = "stacks.backends.memory.MemoryBackend"


@pytest.fixture
def memory_backend(settings: Any) -> Iterator[type[MemoryBackend]]:
    """Every region's backend is the in-memory one (``stacks/backends/memory.py``), built the
    way the Docker backend is (``backend_for`` → ``get_backend(path, hosts=hosts_for(env))``),
    so an environment needs a host row of its region and kernel line (``add_memory_host``).
    Yields the ``MemoryBackend`` class (seed, inject faults, read calls); its state is
    cleared before and after. For fast tests of services and views only."""
    from stacks.backends.memory import MemoryBackend

    MemoryBackend.reset()
    settings.STACKPORT_BACKENDS = {name: MEMORY_BACKEND for name in settings.STACKPORT_BACKENDS}
    yield MemoryBackend
    MemoryBackend.reset()


def add_memory_host(environment: Any, name: str = "h1", **fields: Any) -> Any:
    """An active host row in the environment's region and kernel line, for the memory
    backend (``memory://<name>``: no engine behind it)."""
    from stacks.models import DockerHost

    options: dict[str, Any] = {"memory_mb": 8192, **fields}
    return DockerHost.objects.create(
        name=name,
        url=f"memory://{name}",
        region=environment.project.region,
        kernel=environment.kernel,
        **options,
    )


def place(environment: Any, *hosts: str, state: dict[str, Any] | None = None) -> None:
    """The stack lives on ``hosts`` (home first), as the runtime records it after an apply:
    the backend's own state and the ``Placement`` row."""
    from projects.models import Environment
    from stacks.models import DockerHost, Placement

    Environment.objects.filter(pk=environment.pk).update(backend_state=state or {"host": hosts[0]})
    Placement.objects.update_or_create(
        environment_id=environment.pk,
        defaults={"host": DockerHost.objects.filter(name=hosts[0]).first(), "hosts": list(hosts)},
    )
