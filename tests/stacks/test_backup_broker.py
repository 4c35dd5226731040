"""RabbitMQ's backup on the real engine: the broker's definitions (a virtual host, a user with
its password, permissions, a durable queue and a policy) survive backup -> deleted -> restore
into the running broker; a backup whose file is not a definitions file is refused and changes
nothing."""

from __future__ import annotations

from typing import Any

import docker
import pytest
from kombu import Connection, Queue

from projects.models import Environment
from stacks.models import Backup, OperationStatus
from stacks.runtime import backups, lifecycle
from tests.stacks import test_backups, test_lifecycle
from tests.stacks.conftest import Caddy

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1800)]

ROWS = [{"name": "mq", "component": "rabbitmq", "version": "4.0", "size": "medium", "replicas": 1}]


def ctl(client: docker.DockerClient, env: Environment, *args: str) -> str:
    return test_backups.sh(client, env, "mq", ["rabbitmqctl", "-q", *args])


def definitions(client: docker.DockerClient, env: Environment) -> tuple[str, ...]:
    return (
        ctl(client, env, "list_vhosts"),
        ctl(client, env, "list_users"),
        ctl(client, env, "list_permissions", "-p", "shop"),
        ctl(client, env, "list_queues", "-p", "shop", "name", "durable"),
        ctl(client, env, "list_policies", "-p", "shop"),
    )


def test_rabbitmq_definitions_survive_backup_and_restore(
    team: Any,
    stackport: Caddy,
    s3: test_backups.S3Server,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Queue", region="eu-central", components=ROWS
    )
    cleanup.append(env)
    env.refresh_from_db()
    assert env.status == "running", env.status_detail
    ctl(engine_client, env, "add_vhost", "shop")
    ctl(engine_client, env, "add_user", "worker", "worker-Passw0rd")
    ctl(engine_client, env, "set_permissions", "-p", "shop", "worker", ".*", ".*", ".*")
    ctl(engine_client, env, "set_policy", "-p", "shop", "ttl", "^orders", '{"message-ttl":60000}')
    broker = test_backups.running(engine_client, env, "mq")
    address = next(iter(broker.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    with Connection(f"amqp://worker:worker-Passw0rd@{address}:5672/shop", connect_timeout=10) as conn:
        Queue("orders", durable=True)(conn.default_channel).declare()
    before = definitions(engine_client, env)
    assert "orders\ttrue" in before[3] and "worker" in before[1]

    (row,) = backups.request_backup(environment=env, actor=team.developer)
    row.refresh_from_db()
    assert row.status == Backup.Status.SUCCEEDED and row.kind == "rabbitmq", row.error
    assert row.size_bytes > 0

    ctl(engine_client, env, "delete_vhost", "shop")
    ctl(engine_client, env, "delete_user", "worker")
    assert "worker" not in ctl(engine_client, env, "list_users")

    op = backups.request_restore(backup=row, actor=team.admin, confirmation="mq")
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert definitions(engine_client, env) == before
    # The restored user logs in with its own password (the hash came back with it).
    with Connection(f"amqp://worker:worker-Passw0rd@{address}:5672/shop", connect_timeout=10) as conn:
        conn.default_channel.queue_declare("orders", passive=True)

    # A snapshot whose file is not a definitions file: refused, the broker unchanged.
    stream = iter([b"not json at all"])
    bogus = backups.backup_stream(
        env.project.organization_id, stream, "mq-definitions.json", tags=[f"env-{env.pk}", "component-mq"]
    )
    broken = Backup.objects.create(
        environment=env,
        batch="bogus",
        component="mq",
        kind="rabbitmq",
        status=Backup.Status.SUCCEEDED,
        snapshot_id=str(bogus["snapshot_id"]),
    )
    op = backups.request_restore(backup=broken, actor=team.admin, confirmation="mq")
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED and "not a RabbitMQ definitions file" in op.error
    assert definitions(engine_client, env) == before


engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup
stackport = test_backups.stackport
s3 = test_backups.s3
