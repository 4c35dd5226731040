"""Restoring a PostgreSQL database from an uploaded dump, on the real engine: a foreign file
and a custom-format header over garbage are refused with 400 by ``pg_restore --list`` of the
database's own version, nothing changed; a real ``pg_dump -Fc`` file is stored, restored in
place, and the rows it holds are back."""

from __future__ import annotations

from typing import Any

import docker
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from projects.models import Environment
from stacks.models import Backup, Operation, OperationKind, OperationStatus
from stacks.runtime import lifecycle
from tests.conftest import client_for
from tests.stacks import test_backups, test_lifecycle
from tests.stacks.conftest import Caddy

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1800)]

ROWS = [{"name": "db", "component": "postgresql", "version": "17", "size": "small", "replicas": 1}]


def test_an_uploaded_dump_is_checked_then_restored_in_place(
    team: Any,
    stackport: Caddy,
    s3: test_backups.S3Server,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Upload", region="eu-central", components=ROWS
    )
    cleanup.append(env)
    env.refresh_from_db()
    assert env.status == "running", env.status_detail
    psql = test_backups.psql
    psql(engine_client, env, "create table notes (id int primary key, body text)")
    psql(engine_client, env, "insert into notes select g, 'row ' || g from generate_series(1, 300) g")
    db = test_backups.running(engine_client, env, "db")
    values = dict(e.split("=", 1) for e in db.attrs["Config"]["Env"])
    dumped = db.exec_run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-Fc"],
        environment={"PGPASSWORD": values["STACKPORT_DB_PASSWORD"]},
        demux=True,
    )
    assert dumped.exit_code == 0, dumped.output[1]
    dump = dumped.output[0]
    expected = psql(engine_client, env, "select count(*), md5(string_agg(body, ',' order by id)) from notes")
    psql(engine_client, env, "delete from notes where id > 10")

    admin = client_for(team.admin)
    url = f"/environments/{env.pk}/backups/upload/"
    for bad, says in (
        (b"-- plain SQL, not a custom-format dump\n", "not a PostgreSQL custom-format dump"),
        (dump[:11] + b"\xff" * 4000, "pg_restore cannot read this file, so nothing was changed"),
    ):
        response = admin.post(
            url, {"component": "db", "confirmation": "db", "dump": SimpleUploadedFile("bad.dump", bad)}
        )
        assert response.status_code == 400 and says in response.content.decode(), response.content[-600:]
    assert not Backup.objects.exists()
    assert psql(engine_client, env, "select count(*) from notes") == "10"

    response = admin.post(
        url, {"component": "db", "confirmation": "db", "dump": SimpleUploadedFile("prod.dump", dump)}
    )
    assert response.status_code == 302
    backup = Backup.objects.get()
    assert (backup.trigger, backup.status) == ("upload", Backup.Status.SUCCEEDED), backup.error
    op = Operation.objects.get(kind=OperationKind.RESTORE)
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert (
        psql(engine_client, env, "select count(*), md5(string_agg(body, ',' order by id)) from notes")
        == expected
    )
    assert op.params["kept"]["db"], "the replaced data is kept until the customer decides"


engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup
stackport = test_backups.stackport
s3 = test_backups.s3
