"""The data a stateful upgrade kept: listed with its size and age on the environment page, in
the API and in admin, and deleted by an admin who types the component's name (audited; the
releases that ran on it are no rollback targets any more). In-memory backend (fast); the real
engine's volumes are in test_stateful_upgrades.py."""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest
from django.test import Client

from projects import services
from projects.models import AuditEvent, Environment
from projects.services import ServiceError
from stacks.backends.docker import volume_name
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import lifecycle, old_data
from stacks.runtime.spec import build_spec
from tests.conftest import Team, add_memory_host, client_for
from tests.stacks import test_lifecycle
from tests.stacks import test_stateful_upgrades as upgrades
from tests.stacks.test_converge import run_pending, site

stackport = upgrades.stackport
cleanup = test_lifecycle.cleanup
engine_client = test_lifecycle.engine_client
__all__ = ["site"]  # the fixture used here

pytestmark = pytest.mark.django_db

KV = [{"name": "kv", "component": "mariadb", "version": "10.11", "size": "small", "replicas": 1}]


def api(user: Any) -> Client:
    _token, secret = services.create_api_token(user=user, name="test")
    return Client(headers={"authorization": f"Bearer {secret}"})


def old_volumes(env: Environment) -> set[str]:
    release = env.releases.get(number=1)
    (kv,) = build_spec(env, release).components
    return {volume_name(env.key, kv, v.name) for v in kv.volumes}


@pytest.fixture
def upgraded(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], site: Any
) -> Environment:
    """MariaDB 10.11 upgraded to 11.8 by dump and restore: 10.11's volume is kept."""
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Data", region="eu-central", components=KV
    )
    add_memory_host(env)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    for name in old_volumes(env):
        memory_backend.seed_volume_usage(env.key, name, 7 * 1024 * 1024)
    op = lifecycle.upgrade(environment=env, actor=team.developer, component="kv", version="11.8")
    assert op.params["migrate"] == "dump-restore"
    assert run_pending(env) == OperationStatus.SUCCEEDED
    return env


def volumes_on_host(env: Environment) -> set[str]:
    return set().union(*MemoryBackend.stack(env.key).volumes.values())


def test_the_kept_data_is_listed_with_its_size_and_age(upgraded: Environment, team: Team) -> None:
    (kept,) = old_data.kept_old_data(upgraded)
    assert (kept.component, kept.version, kept.upgraded_to) == ("kv", "10.11", "11.8")
    assert kept.size_bytes == 7 * 1024 * 1024 and kept.age_days == 0

    viewer = client_for(team.viewer).get(f"/environments/{upgraded.pk}/")
    assert b"Data kept after upgrades" in viewer.content and b"7.0\xc2\xa0MB" in viewer.content
    assert b"/old-data/" not in viewer.content  # only admins delete
    assert b'table-stack" id="old-data-table"' in viewer.content  # one block per row on phones
    for label in (b"Component", b"Data of", b"Size", b"Kept since"):
        assert b'data-label="' + label + b'"' in viewer.content
    admin = client_for(team.admin).get(f"/environments/{upgraded.pk}/")
    assert f"/environments/{upgraded.pk}/old-data/{kept.operation_id}/delete/".encode() in admin.content

    listed = api(team.viewer).get(f"/api/environments/{upgraded.pk}/old-data").json()
    assert listed == [
        {
            "operation": kept.operation_id,
            "component": "kv",
            "version": "10.11",
            "upgraded_to": "11.8",
            "kept_since": listed[0]["kept_since"],
            "size_bytes": 7 * 1024 * 1024,
        }
    ]
    assert api(team.outsider).get(f"/api/environments/{upgraded.pk}/old-data").status_code == 404


def test_an_admin_deletes_it_after_typing_the_components_name(upgraded: Environment, team: Team) -> None:
    (kept,) = old_data.kept_old_data(upgraded)
    url = f"/environments/{upgraded.pk}/old-data/{kept.operation_id}/delete/"
    assert old_volumes(upgraded) <= volumes_on_host(upgraded)
    assert client_for(team.developer).get(url).status_code == 403  # a member without the role
    assert client_for(team.outsider).post(url, {"confirmation": "kv"}).status_code == 404
    admin = client_for(team.admin)
    page = admin.get(url)
    assert page.status_code == 200 and b"Type <code>kv</code> to confirm" in page.content
    assert admin.put(url).status_code == 405
    wrong = admin.post(url, {"confirmation": "KV "})
    assert wrong.status_code == 400 and b"Type the component&#x27;s name (kv)" in wrong.content
    assert old_volumes(upgraded) <= volumes_on_host(upgraded)  # nothing removed

    assert admin.post(url, {"confirmation": "kv"}).status_code == 302
    assert not old_volumes(upgraded) & volumes_on_host(upgraded)
    assert volumes_on_host(upgraded)  # 11.8's own volume stays
    assert old_data.kept_old_data(upgraded) == []
    event = AuditEvent.objects.get(action="environment.old_data_delete")
    assert event.actor == team.admin and event.data["component"] == "kv"
    assert admin.get(url).status_code == 404  # gone
    # The release that ran on it can no longer be rolled back to.
    with pytest.raises(ServiceError, match="ran on data that was deleted"):
        lifecycle.rollback(environment=upgraded, actor=team.developer, release_number=1)


def test_the_api_deletes_it_for_admins_only(upgraded: Environment, team: Team) -> None:
    (kept,) = old_data.kept_old_data(upgraded)
    path = f"/api/environments/{upgraded.pk}/old-data/{kept.operation_id}/delete"
    body = json.dumps({"confirmation": "kv"})
    denied = api(team.developer).post(path, data=body, content_type="application/json")
    assert denied.status_code in (403, 404) and old_data.kept_old_data(upgraded)
    wrong = api(team.admin).post(
        path, data=json.dumps({"confirmation": "x"}), content_type="application/json"
    )
    assert wrong.status_code == 400 and old_data.kept_old_data(upgraded)
    assert api(team.admin).post(path, data=body, content_type="application/json").status_code == 204
    assert old_data.kept_old_data(upgraded) == []
    again = api(team.admin).post(path, data=body, content_type="application/json")
    assert again.status_code == 404


def test_it_is_not_deleted_while_an_operation_runs_nor_listed_once_in_use_again(
    upgraded: Environment, team: Team
) -> None:
    (kept,) = old_data.kept_old_data(upgraded)
    lifecycle.rollback(environment=upgraded, actor=team.developer, release_number=1)
    with pytest.raises(ServiceError, match="An operation is running"):
        old_data.delete_old_data(
            environment=upgraded, actor=team.admin, operation_id=kept.operation_id, confirmation="kv"
        )
    assert run_pending(upgraded) == OperationStatus.SUCCEEDED
    assert old_data.kept_old_data(upgraded) == []  # 10.11 runs on it again


def test_admin_shows_the_kept_data_to_support(upgraded: Environment, admin_user: Any) -> None:
    page = client_for(admin_user).get(f"/admin/projects/environment/{upgraded.pk}/change/")
    assert page.status_code == 200
    assert b"kv 10.11 (upgraded to 11.8), 7.0\xc2\xa0MB" in page.content


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_on_the_engine_the_kept_volume_is_measured_and_deleted(
    team: Team, cleanup: list[Environment], engine_client: docker.DockerClient, stackport: Any
) -> None:
    """PostgreSQL 15 upgraded to 17 on the real engine: 15's volume is kept, listed with the
    bytes it holds, and deleting it removes that volume only; 17 keeps running on its own."""
    env = upgrades.deploy(team, cleanup, "postgresql", "15", "small")
    upgrades.psql(engine_client, env, "create table t as select g from generate_series(1, 20000) g")
    upgrades.upgrade(team, env, "17")
    env.refresh_from_db()
    old, new = f"sp-{env.key}-data-data", f"sp-{env.key}-data-data-g1"
    assert {old, new} <= upgrades.volumes(engine_client, env)
    (kept,) = old_data.kept_old_data(env)
    assert kept.component == "data" and kept.size_bytes and kept.size_bytes > 1_000_000

    old_data.delete_old_data(
        environment=env, actor=team.admin, operation_id=kept.operation_id, confirmation="data"
    )
    assert old not in upgrades.volumes(engine_client, env) and new in upgrades.volumes(engine_client, env)
    assert upgrades.psql(engine_client, env, "select count(*) from t") == "20000"
    assert old_data.kept_old_data(env) == []
