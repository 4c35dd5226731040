"""Stack volumes shared by components (WordPress's uploads in nginx and PHP-FPM), uploaded
dumps to restore, and storage counted at the plan's volume size: the fast part, with the
in-memory backend. The engine's part is in test_wordpress_media.py, test_backups.py and
test_disk_limits.py."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from billing import quotas
from billing.models import Plan
from billing.services import change_plan
from projects.models import AuditEvent, Environment, EnvironmentStatus
from projects.services import ServiceError
from stacks.backends.base import BackendError
from stacks.backends.docker import volume_name
from stacks.backends.memory import STACKS, MemoryBackend
from stacks.models import Backup, Operation, OperationKind, StackTemplateComponent
from stacks.runtime import backups, disk, lifecycle
from stacks.runtime.spec import SpecError, build_spec
from tests.conftest import Team, add_memory_host, client_for
from tests.stacks import test_backup_services
from tests.stacks.test_backup_services import run_queued

pytestmark = pytest.mark.django_db
UPLOADS = "/srv/app/wp-content/uploads"
# pg_dump -Fc's header: the mark, version 1.14.0, int and offset sizes, format 1 (custom).
DUMP = b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + b"\x00 a table of contents and rows " * 100


def running(env: Environment) -> Environment:
    add_memory_host(env)
    Operation.objects.filter(environment=env).update(status="succeeded")
    release = env.releases.order_by("-number").first()
    Environment.objects.filter(pk=env.pk).update(
        current_release=release, status=EnvironmentStatus.RUNNING, backend_state={"host": "h1"}
    )
    env.refresh_from_db()
    return env


def test_the_wordpress_template_shares_one_uploads_volume_between_nginx_and_php(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    queued: Any,
) -> None:
    mounts = dict(
        StackTemplateComponent.objects.filter(template__code="wordpress").values_list("name", "mounts")
    )
    assert mounts == {
        "web": [{"volume": "uploads", "path": UPLOADS}],
        "php": [{"volume": "uploads", "path": UPLOADS}],
        "db": [],
    }
    env = running(
        lifecycle.create_project(
            organization=team.org,
            actor=team.developer,
            name="Blog",
            region="eu-central",
            template="wordpress",
        )
    )
    assert env.current_release is not None
    spec = build_spec(env, env.current_release)
    comps = {c.name: c for c in spec.components}
    for name in ("web", "php"):
        (volume,) = comps[name].volumes
        assert (volume.name, volume.path, volume.shared) == ("uploads", UPLOADS, True)
        assert volume_name(env.key, comps[name], "uploads") == f"sp-{env.key}--uploads"
    # Backed up once, as a file volume, under the first component that mounts it.
    codes = {r["name"]: r["component"] for r in env.current_release.spec["components"]}
    assert backups.targets(spec, codes) == [("web", "files", "uploads"), ("db", "mariadb", "")]
    # Every later release keeps the mounts (they ride on the component rows).
    op = lifecycle.scale(environment=env, actor=team.developer, component="php", replicas=2)
    assert op.release is not None
    assert [r.get("mounts") for r in op.release.spec["components"]][:2] == [
        [{"volume": "uploads", "path": UPLOADS}]
    ] * 2


def test_a_wordpress_made_before_the_uploads_volume_gets_it_with_its_next_release(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    queued: Any,
) -> None:
    env = running(
        lifecycle.create_project(
            organization=team.org,
            actor=team.developer,
            name="Old blog",
            region="eu-central",
            template="wordpress",
        )
    )
    assert env.current_release is not None
    # As such an environment's rows were: no mounts anywhere.
    release = env.current_release
    release.spec["components"] = [
        {k: v for k, v in r.items() if k != "mounts"} for r in release.spec["components"]
    ]
    release.save(update_fields=["spec"])
    assert not any(c.volumes for c in build_spec(env, release).components if c.name != "db")

    op = lifecycle.redeploy(environment=env, actor=team.developer)
    assert op.release is not None
    mounts = {r["name"]: r.get("mounts") for r in op.release.spec["components"]}
    assert mounts["web"] == mounts["php"] == [{"volume": "uploads", "path": UPLOADS}]
    assert not mounts["db"]


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ({"volume": "uploads", "path": "/etc/passwd"}, "cannot mount"),
        ({"volume": "uploads", "path": "/srv/app/../../etc"}, "cannot mount"),
        ({"volume": "uploads", "path": "/srv/app"}, "cannot mount"),  # the content's own path
        ({"volume": "app", "path": "/srv/x"}, "Invalid volume name"),  # the component's own volume
        ({"volume": "Up Loads", "path": "/srv/x"}, "Invalid volume name"),
        ({"volume": "uploads"}, "cannot mount"),
    ],
)
def test_mounts_outside_the_allowlist_are_refused(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    queued: Any,
    mount: dict[str, str],
    message: str,
) -> None:
    env = running(
        lifecycle.create_project(
            organization=team.org,
            actor=team.developer,
            name="Blog",
            region="eu-central",
            template="wordpress",
        )
    )
    release = env.current_release
    assert release is not None
    release.spec["components"][0]["mounts"] = [mount]
    with pytest.raises(SpecError, match=message):
        build_spec(env, release)


# --- an uploaded dump -------------------------------------------------------------------------------
def test_a_file_pg_restore_cannot_read_is_refused_and_nothing_is_kept(
    env: Environment,
    team: Team,
    queued: list[Any],
    memory_backend: type[MemoryBackend],
    tmp_path: Any,
) -> None:
    for content in (b"hello, not a dump", b"PGDMP" + bytes([1, 14, 0, 4, 8, 3]) + b"tar format", b""):
        with pytest.raises(ServiceError, match="not a PostgreSQL custom-format dump") as caught:
            backups.upload_restore(
                environment=env,
                component="db",
                upload=SimpleUploadedFile("x.dump", content),
                actor=team.admin,
                confirmation="db",
            )
        assert caught.value.status == 400
    memory_backend.fail_next(
        "check_dump",
        BackendError("pg_restore: error: unsupported version (1.16) in file header", permanent=True),
    )
    with pytest.raises(
        ServiceError, match="pg_restore cannot read this file, so nothing was changed: error: unsup"
    ):
        backups.upload_restore(
            environment=env,
            component="db",
            upload=SimpleUploadedFile("x.dump", DUMP),
            actor=team.admin,
            confirmation="db",
        )
    with pytest.raises(ServiceError, match="Only PostgreSQL dumps"):
        backups.upload_restore(
            environment=env,
            component="cache",
            upload=SimpleUploadedFile("x", DUMP),
            actor=team.admin,
            confirmation="cache",
        )
    with pytest.raises(ServiceError, match="Type the component's name"):
        backups.upload_restore(
            environment=env,
            component="db",
            upload=SimpleUploadedFile("x", DUMP),
            actor=team.admin,
            confirmation="x",
        )
    with pytest.raises(ServiceError) as denied:
        backups.upload_restore(
            environment=env,
            component="db",
            upload=SimpleUploadedFile("x", DUMP),
            actor=team.developer,
            confirmation="db",
        )
    assert denied.value.status == 403
    assert not Backup.objects.exists() and not [name for name, _ in queued if name != "run_operation_task"]
    assert (
        not list((tmp_path / "backup-uploads").glob("*")) if (tmp_path / "backup-uploads").exists() else True
    )


def test_a_good_dump_is_stored_then_restored_in_place(
    env: Environment,
    team: Team,
    queued: list[Any],
    memory_backend: type[MemoryBackend],
    tmp_path: Any,
) -> None:
    backup = backups.upload_restore(
        environment=env,
        component="db",
        upload=SimpleUploadedFile("prod.dump", DUMP),
        actor=team.admin,
        confirmation="db",
    )
    assert (backup.trigger, backup.kind, backup.status) == ("upload", "postgresql", "queued")
    assert AuditEvent.objects.filter(action="backup.upload").exists()
    run_queued(queued)
    backup.refresh_from_db()
    assert backup.status == Backup.Status.SUCCEEDED and backup.size_bytes == len(DUMP), backup.error
    assert not list((tmp_path / "backup-uploads").glob("*")), "the uploaded file is removed once stored"
    op = Operation.objects.get(kind=OperationKind.RESTORE)
    assert op.status == "succeeded" and op.params["kept"]["db"], op.error
    assert STACKS[env.key].data[("db", "postgresql", "")] == DUMP


def test_upload_page_and_api(env: Environment, team: Team, queued: Any) -> None:
    url = f"/environments/{env.pk}/backups/upload/"
    admin = client_for(team.admin)
    page = admin.get(url)
    assert page.status_code == 200 and "pg_restore --list" in page.content.decode()
    assert client_for(team.outsider).get(url).status_code == 404
    assert client_for(team.developer).get(url).status_code == 403
    bad = admin.post(
        url, {"component": "db", "confirmation": "db", "dump": SimpleUploadedFile("x.dump", b"not a dump")}
    )
    assert bad.status_code == 400 and "not a PostgreSQL custom-format dump" in bad.content.decode()
    good = admin.post(
        url, {"component": "db", "confirmation": "db", "dump": SimpleUploadedFile("x.dump", DUMP)}
    )
    assert good.status_code == 302
    api = test_backup_services.api_client(team.admin).post(
        f"/api/environments/{env.pk}/backups/upload",
        {"component": "db", "confirmation": "db", "dump": SimpleUploadedFile("x.dump", b"nope")},
    )
    assert api.status_code == 400 and "not a PostgreSQL custom-format dump" in api.content.decode()
    assert Backup.objects.filter(trigger="upload").count() == 1


# --- storage at the plan's volume size ----------------------------------------------------------------
DB = {"name": "db", "component": "postgresql", "version": "15", "size": "small", "replicas": 1}


def test_storage_counts_the_plans_volume_size(team: Team, offered_catalog: None, settings: Any) -> None:
    settings.STACKPORT_VOLUME_GB = 1
    Plan.objects.create(code="p", name="P", is_default=True, volume_size_gb=5, max_storage_gb=9)
    problems = quotas.stack_problems(organization=team.org, rows=[DB, {**DB, "name": "db2"}])
    assert problems == [
        "Your plan P allows 9 GB of storage; this change needs 10 GB of storage. "
        "Choose a bigger plan on the Billing page."
    ]
    assert quotas.stack_problems(organization=team.org, rows=[DB]) == []


def test_a_plan_with_bigger_volumes_grows_the_running_ones(
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    queued: Any,
) -> None:
    Plan.objects.create(code="small", name="Small", is_default=True, volume_size_gb=1)
    Plan.objects.create(code="big", name="Big", volume_size_gb=4, is_public=True)
    env = running(
        lifecycle.create_project(
            organization=team.org, actor=team.owner, name="Data", region="eu-central", components=[DB]
        )
    )
    change_plan(organization=team.org, actor=team.owner, plan="big")
    op = Operation.objects.filter(environment=env, status="queued").get()
    assert (op.kind, op.params, op.release_id) == (
        OperationKind.DEPLOY,
        {"reason": "volume size"},
        env.current_release_id,
    )
    # Back to the smaller plan: nothing to grow, nothing queued.
    op.delete()
    change_plan(organization=team.org, actor=team.owner, plan="small")
    assert not Operation.objects.filter(environment=env, status="queued").exists()
    assert disk.grow_volumes(organization=team.org)  # the service itself: one deploy per stack with volumes


# The fast backup fixtures (an environment on the in-memory backend, tasks queued in a list).
env = test_backup_services.env
queued = test_backup_services.queued
