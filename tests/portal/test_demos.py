"""Sales demos: started in one call with a login to hand over, warned before the end and
removed completely after it (the engine test checks hosts and the edge too)."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from portal import demos
from projects.models import AuditEvent, Environment, EnvironmentStatus, Organization, Project, Role, User
from projects.services import ServiceError
from stacks.models import Operation, OperationKind, OperationStatus
from tests.factories import UserFactory

# The stacks tests' engine fixtures (a Caddy of our own, the published catalog).
from tests.stacks.conftest import CADDY_ROUTER, caddy, catalog, published_catalog  # noqa: F401


def sales_user(**fields: Any) -> User:
    user = UserFactory(is_staff=True, email="sales@hoster.test", **fields)
    user.groups.add(Group.objects.get(name="Sales"))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def sales(db: None) -> User:
    return sales_user()


@pytest.mark.django_db
def test_a_demo_starts_with_a_stack_deploying_and_a_login(
    sales: User, offered_catalog: None, settings: Any
) -> None:
    settings.STACKPORT_DEMO_LIFETIME_HOURS = 2
    before = timezone.now()
    login = demos.start_demo(actor=sales, template="static-site", prospect="Globex")
    org = login.organization
    assert org.is_demo and org.name == "Demo Globex"
    assert before + timedelta(hours=2) <= org.demo_expires_at <= timezone.now() + timedelta(hours=2)
    user = User.objects.get(email=login.email)
    assert user.check_password(login.password) and not user.is_staff
    assert org.memberships.get(user=user).role == Role.OWNER
    assert user.emailaddress_set.get().verified
    op = login.environment.operations.get()
    assert op.kind == OperationKind.DEPLOY and op.status == OperationStatus.QUEUED
    assert login.environment.project.organization == org
    assert AuditEvent.objects.filter(action="demo.start", actor=sales, organization=org).exists()


@pytest.mark.django_db
def test_only_sales_staff_start_demos(team: Any, offered_catalog: None, sales: User) -> None:
    for user in (team.owner, UserFactory(is_staff=True)):
        with pytest.raises(ServiceError) as exc:
            demos.start_demo(actor=user, template="static-site")
        assert exc.value.status == 403
    with pytest.raises(ServiceError, match="pre-built"):
        demos.start_demo(actor=sales, template="no-such-stack")
    assert not Organization.objects.filter(is_demo=True).exists()


@pytest.mark.django_db
def test_the_salesperson_is_warned_once_before_the_end(
    sales: User, offered_catalog: None, settings: Any
) -> None:
    settings.STACKPORT_DEMO_WARN_MINUTES = 30
    login = demos.start_demo(actor=sales, template="static-site")
    assert demos.warn_expiring_demos() == 0
    with time_machine.travel(login.organization.demo_expires_at - timedelta(minutes=20)):
        assert demos.warn_expiring_demos() == 1
        assert demos.warn_expiring_demos() == 0
    assert [m.to for m in mail.outbox] == [["sales@hoster.test"]]
    assert login.organization.name in mail.outbox[0].subject
    login.organization.refresh_from_db()
    assert login.organization.demo_warned_at is not None


def _finish_destroys() -> None:
    """As if the worker had run the destroy operations."""
    for op in Operation.objects.filter(kind=OperationKind.DESTROY, status=OperationStatus.QUEUED):
        Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED)
        Environment.objects.filter(pk=op.environment_id).update(status=EnvironmentStatus.DESTROYED)


@pytest.mark.django_db
def test_an_expired_demo_is_destroyed_then_its_rows_removed(
    team: Any, sales: User, offered_catalog: None
) -> None:
    login = demos.start_demo(actor=sales, template="static-site")
    Operation.objects.update(status=OperationStatus.SUCCEEDED)  # the deploy ran
    assert demos.expire_demos() == {"destroying": 0, "removed": 0}
    with time_machine.travel(login.organization.demo_expires_at + timedelta(seconds=1)):
        assert demos.expire_demos() == {"destroying": 1, "removed": 0}
        assert demos.expire_demos() == {"destroying": 0, "removed": 0}  # its destroy is running
        env = Environment.objects.get(pk=login.environment.pk)
        assert env.status == EnvironmentStatus.DESTROYING
        _finish_destroys()
        assert demos.expire_demos() == {"destroying": 0, "removed": 1}
    assert not Organization.objects.filter(pk=login.organization.pk).exists()
    assert not Project.objects.filter(pk=login.environment.project_id).exists()
    assert not User.objects.filter(email=login.email).exists()
    assert AuditEvent.objects.filter(action="demo.removed").exists()
    assert Organization.objects.filter(pk=team.org.pk).exists()  # customers are never touched


@pytest.mark.django_db
def test_a_failed_destroy_is_tried_again(sales: User, offered_catalog: None) -> None:
    login = demos.start_demo(actor=sales, template="static-site")
    Operation.objects.update(status=OperationStatus.SUCCEEDED)
    with time_machine.travel(login.organization.demo_expires_at + timedelta(seconds=1)):
        demos.expire_demos()
        Operation.objects.filter(kind=OperationKind.DESTROY).update(status=OperationStatus.FAILED)
        assert demos.expire_demos() == {"destroying": 1, "removed": 0}
    assert Operation.objects.filter(kind=OperationKind.DESTROY).count() == 2


# --- on the engine ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.django_db
@pytest.mark.timeout(900)
def test_a_demo_serves_through_the_edge_and_leaves_nothing_after_expiry(
    settings: Any,
    caddy: Any,  # noqa: F811
    catalog: None,  # noqa: F811
) -> None:
    import docker
    import requests

    from stacks.backends.docker import LABEL, list_containers
    from stacks.runtime.hosts import ensure_local_hosts
    from stacks.runtime.operations import edge, route_ids, run_operation

    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    ensure_local_hosts("unix:///var/run/docker.sock")
    login = demos.start_demo(actor=sales_user(), template="static-site")
    env = login.environment
    key, hostname = env.key, env.hostname
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    try:
        deploy = env.operations.get()
        assert run_operation(deploy.pk) == OperationStatus.SUCCEEDED, Operation.objects.get(pk=deploy.pk).log
        with requests.Session() as session:
            session.trust_env = False
            page = session.get(f"{caddy.edge_url}/", headers={"Host": hostname}, timeout=10)
        assert page.status_code == 200 and page.text
        with edge() as router:
            assert key in router.routes()
        env.refresh_from_db()
        ids = route_ids(env)

        with time_machine.travel(login.organization.demo_expires_at + timedelta(minutes=1), tick=True):
            assert demos.expire_demos()["destroying"] == 1
            (destroy,) = Operation.objects.filter(kind=OperationKind.DESTROY)
            assert run_operation(destroy.pk) == OperationStatus.SUCCEEDED, destroy.log
            assert demos.expire_demos()["removed"] == 1

        label = {"label": f"{LABEL}={key}"}
        assert list_containers(client, all=True, filters=label) == []
        assert client.networks.list(filters=label) == []
        assert client.volumes.list(filters=label) == []
        with edge() as router:
            assert not set(ids) & set(router.routes())
        assert not Environment.objects.filter(pk=env.pk).exists()
        assert not Organization.objects.filter(pk=login.organization.pk).exists()
    finally:
        from stacks.backends.base import HostRecord
        from stacks.backends.docker import DockerBackend

        DockerBackend(hosts=[HostRecord("local", "unix:///var/run/docker.sock")]).destroy(key, {})
        client.close()


class _Router:
    def __enter__(self) -> _Router:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def remove_route(self, route_id: str) -> bool:
        return False

    def routes(self) -> dict[str, Any]:
        return {}


@pytest.mark.django_db
def test_reset_demo_destroys_the_demo_stacks_and_seeds_them_again(
    offered_catalog: None, sales: User, monkeypatch: Any
) -> None:
    from django.core.management import call_command

    from projects.services import ensure_verified_user
    from stacks.runtime import lifecycle

    monkeypatch.setattr("stacks.runtime.operations.edge", _Router)
    user, _ = ensure_verified_user(email="demo@stackport.localhost", password="stackport-demo")
    org = user.memberships.get().organization
    old = lifecycle.create_project(
        organization=org, actor=user, name="Old experiment", region="eu-central", template="nodejs"
    )
    sales_demo = demos.start_demo(actor=sales, template="static-site")
    call_command("reset_demo", "--sales", stdout=io.StringIO())
    assert not Project.objects.filter(pk=old.project_id).exists()
    assert not Organization.objects.filter(pk=sales_demo.organization.pk).exists()
    names = set(Project.objects.filter(organization=org).values_list("name", flat=True))
    assert names == {"Demo static site", "Demo Python app"}
    assert Organization.objects.filter(pk=org.pk).exists()
