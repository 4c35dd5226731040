"""Every stateful component's upgrade really moves its data (the catalog's ``migration``).

Each engine test makes a stack on the old version through the services, writes real data into
it, upgrades through ``lifecycle.upgrade`` and runs the operation on the real engine: the data
is there on the new version and the old volume is still there. A failed move leaves the old
version running with its data. The images are the ones this session's pipeline published.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import docker
import pytest

from projects.models import Environment
from stacks.backends.docker import list_containers
from stacks.catalog.loader import CatalogError, catalog_files, parse_catalog
from stacks.models import ComponentVersion, Operation, OperationStatus, VersionStatus
from stacks.runtime import lifecycle
from stacks.runtime.hosts import ensure_local_hosts
from stacks.runtime.operations import run_operation
from tests.stacks import test_lifecycle
from tests.stacks.conftest import CADDY_ROUTER, Caddy

STATEFUL = ("postgresql", "mariadb", "redis", "rabbitmq")


def on_engine(test: Callable[..., None]) -> Callable[..., None]:
    for mark in (pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)):
        test = mark(test)
    return pytest.mark.usefixtures("stackport")(test)


@pytest.fixture
def stackport(settings: Any, caddy: Caddy, catalog: None) -> Caddy:
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    ensure_local_hosts("unix:///var/run/docker.sock")
    return caddy


def run(op: Operation, status: str = OperationStatus.SUCCEEDED) -> Operation:
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == status, f"{op.kind} ended {op.status}: {op.error}\n{op.log}"
    return op


def deploy(team: Any, cleanup: list[Environment], component: str, version: str, size: str) -> Environment:
    """A stack of one component on ``version``, made while that version is current (new
    stacks get current versions only; Redis 7.0 and RabbitMQ 3.10 are deprecated since)."""
    rows = [{"name": "data", "component": component, "version": version, "size": size, "replicas": 1}]
    old = ComponentVersion.objects.filter(component__code=component, version=version)
    status = old.get().status
    old.update(status=VersionStatus.CURRENT)
    try:
        env = lifecycle.create_project(
            organization=team.org,
            actor=team.developer,
            name=f"{component} {version}",
            region="eu-central",
            components=rows,
        )
    finally:
        old.update(status=status)
    cleanup.append(env)
    run(env.operations.get())
    env.refresh_from_db()
    return env


def upgrade(team: Any, env: Environment, version: str, status: str = OperationStatus.SUCCEEDED) -> Operation:
    op = lifecycle.upgrade(environment=env, actor=team.developer, component="data", version=version)
    return run(op, status)


def the_container(client: docker.DockerClient, env: Environment) -> Any:
    """The one running container of the stack (no helper left behind either)."""
    (container,) = list_containers(client, all=True, filters={"label": f"org.stackport.stack={env.key}"})
    assert container.status == "running"
    return container


def env_of(container: Any) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def sh(container: Any, command: list[str], environment: dict[str, str] | None = None) -> str:
    result = container.exec_run(command, environment=environment or {})
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return str(result.output.decode().strip())


def volumes(client: docker.DockerClient, env: Environment) -> set[str]:
    return {v.name for v in client.volumes.list(filters={"label": f"org.stackport.stack={env.key}"})}


def assert_moved(client: docker.DockerClient, env: Environment, version: str) -> None:
    """The new version runs on the new data generation; the old volume is kept."""
    container = the_container(client, env)
    assert container.labels["org.stackport.version"] == version
    assert f"sp-{env.key}-data-data-g1" in {m.get("Name") for m in container.attrs["Mounts"]}
    assert {f"sp-{env.key}-data-data", f"sp-{env.key}-data-data-g1"} <= volumes(client, env)


def assert_not_moved(client: docker.DockerClient, env: Environment, version: str) -> None:
    """The old version still runs on its own volume; the new generation is gone again."""
    container = the_container(client, env)
    assert container.labels["org.stackport.version"] == version
    assert {m.get("Name") for m in container.attrs["Mounts"]} == {f"sp-{env.key}-data-data"}
    assert volumes(client, env) == {f"sp-{env.key}-data-data"}


# --- PostgreSQL ---------------------------------------------------------------------------------
def psql(client: docker.DockerClient, env: Environment, sql: str) -> str:
    container = the_container(client, env)
    return sh(
        container,
        ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-tAc", sql],
        {"PGPASSWORD": env_of(container)["STACKPORT_DB_PASSWORD"]},
    )


@on_engine
def test_postgresql_15_to_17_moves_the_database_and_keeps_the_old_volume(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "postgresql", "15", "small")
    psql(
        engine_client,
        env,
        "create table notes (id serial primary key, body text, tags jsonb);"
        "insert into notes (body, tags) values ('kept', '{\"a\": 1}'), ('ü $(x) ''q''', null);"
        "create view recent as select body from notes order by id desc;",
    )
    assert psql(engine_client, env, "show server_version").startswith("15")

    op = upgrade(team, env, "17")

    assert "copied: 1 tables of app" in op.log
    assert psql(engine_client, env, "show server_version").startswith("17")
    assert (
        psql(engine_client, env, "select string_agg(body, '|' order by id) from notes") == "kept|ü $(x) 'q'"
    )
    assert psql(engine_client, env, "select tags->>'a' from notes where id = 1") == "1"
    # The sequence came along: the next row gets the next id.
    assert psql(engine_client, env, "insert into notes (body) values ('new') returning id").startswith("3")
    assert psql(engine_client, env, "select count(*) from recent") == "3"
    assert_moved(engine_client, env, "17")


# --- MariaDB ------------------------------------------------------------------------------------
def mariadb(client: docker.DockerClient, env: Environment, sql: str) -> str:
    container = the_container(client, env)
    return sh(
        container,
        ["mariadb", "-h", "127.0.0.1", "-u", "app", "-N", "-B", "-e", sql, "app"],
        {"MYSQL_PWD": env_of(container)["STACKPORT_DB_PASSWORD"]},
    )


MARIADB_DATA = """
create table notes (id int primary key auto_increment, body text, pic blob);
insert into notes (body, pic) values ('kept', x'00ff10'), ('ü $(x) ''q''', null);
create view recent as select body from notes order by id desc;
create trigger shout before insert on notes for each row set new.body = concat(new.body, '!');
create function two() returns int deterministic return 2;
"""


@on_engine
def test_mariadb_10_11_to_11_8_moves_the_database_and_a_broken_restore_keeps_10_11(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "mariadb", "10.11", "small")
    mariadb(engine_client, env, MARIADB_DATA)
    assert mariadb(engine_client, env, "select version()").startswith("10.11")

    # A restore that breaks half-way: the operation fails, 10.11 keeps running on its own
    # volume with its data, the new volume and the temporary container are gone.
    shipped = ComponentVersion.objects.get(component__code="mariadb", version="11.8").migration
    broken = {**shipped, "restore": ["sh", "-c", "echo 'the restore broke' >&2; exit 3"]}
    ComponentVersion.objects.filter(component__code="mariadb", version="11.8").update(migration=broken)
    failed = upgrade(team, env, "11.8", status=OperationStatus.FAILED)
    assert "the restore broke" in failed.error
    assert_not_moved(engine_client, env, "10.11")
    assert mariadb(engine_client, env, "select group_concat(body order by id separator '|') from notes") == (
        "kept|ü $(x) 'q'"
    )
    mariadb(engine_client, env, "insert into notes (body) values ('still writable')")


@on_engine
def test_mariadb_10_11_to_11_8_moves_tables_routines_triggers_and_views(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "mariadb", "10.11", "small")
    mariadb(engine_client, env, MARIADB_DATA)

    op = upgrade(team, env, "11.8")

    assert "copied: 2 tables and views of app" in op.log
    assert mariadb(engine_client, env, "select version()").startswith("11.8")
    assert mariadb(engine_client, env, "select group_concat(body order by id separator '|') from notes") == (
        "kept|ü $(x) 'q'"
    )
    assert mariadb(engine_client, env, "select hex(pic) from notes where id = 1") == "00FF10"
    assert mariadb(engine_client, env, "select two()") == "2"
    mariadb(engine_client, env, "insert into notes (body) values ('new')")  # the trigger came along
    assert mariadb(engine_client, env, "select body from recent limit 1") == "new!"
    assert_moved(engine_client, env, "11.8")


# --- Redis --------------------------------------------------------------------------------------
def redis(client: docker.DockerClient, env: Environment, *command: str) -> str:
    container = the_container(client, env)
    password = env_of(container)["STACKPORT_REDIS_PASSWORD"]
    return sh(container, ["redis-cli", "-h", "127.0.0.1", *command], {"REDISCLI_AUTH": password})


@on_engine
def test_redis_7_0_to_8_0_moves_every_key_and_a_rollback_finds_the_7_0_data(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "redis", "7.0", "small")
    assert env_of(the_container(engine_client, env))["STACKPORT_REDIS_PASSWORD"]  # masterauth is needed
    redis(engine_client, env, "SET", "greeting", "ü $(x)")
    redis(engine_client, env, "HSET", "cart:1", "apples", "3", "pears", "1")
    redis(engine_client, env, "SET", "session", "abc", "EX", "86400")
    redis(engine_client, env, "-n", "3", "RPUSH", "jobs", "a", "b", "c")
    assert "redis_version:7.0" in redis(engine_client, env, "INFO", "server")
    first = env.current_release

    op = upgrade(team, env, "8.0")

    assert "copied: db0:keys=3" in op.log
    assert "redis_version:8.0" in redis(engine_client, env, "INFO", "server")
    assert redis(engine_client, env, "GET", "greeting") == "ü $(x)"
    assert redis(engine_client, env, "HGET", "cart:1", "apples") == "3"
    assert 0 < int(redis(engine_client, env, "TTL", "session")) <= 86400
    assert redis(engine_client, env, "-n", "3", "LRANGE", "jobs", "0", "-1").split() == ["a", "b", "c"]
    assert_moved(engine_client, env, "8.0")
    redis(engine_client, env, "SET", "written-on-8", "yes")

    # The 7.0 volume was kept as it was: rolling back to the release before the upgrade runs
    # 7.0 on it again (what the new version wrote since is on the new volume only).
    assert first is not None
    run(lifecycle.rollback(environment=env, actor=team.developer, release_number=first.number))
    assert "redis_version:7.0" in redis(engine_client, env, "INFO", "server")
    assert redis(engine_client, env, "GET", "greeting") == "ü $(x)"
    assert redis(engine_client, env, "EXISTS", "written-on-8") == "0"


# --- RabbitMQ -----------------------------------------------------------------------------------
def rabbitmqctl(client: docker.DockerClient, env: Environment, *args: str) -> str:
    return sh(the_container(client, env), ["rabbitmqctl", "-q", *args])


def broker(client: docker.DockerClient, env: Environment, vhost: str = "app") -> amqp.Connection:
    """An AMQP connection to the broker at its address on the stack network."""
    container = the_container(client, env)
    (address,) = [n["IPAddress"] for n in container.attrs["NetworkSettings"]["Networks"].values()]
    password = env_of(container)["STACKPORT_AMQP_PASSWORD"]
    connection = amqp.Connection(f"{address}:5672", userid="app", password=password, virtual_host=vhost)
    connection.connect()
    return connection


def set_up_broker(client: docker.DockerClient, env: Environment) -> None:
    """A durable queue bound to a topic exchange, a quorum queue, a second user with its own
    vhost and a policy there (the operator's side of a customer's broker)."""
    with broker(client, env) as connection:
        channel = connection.channel()
        channel.exchange_declare("events", "topic", durable=True, auto_delete=False)
        channel.queue_declare("orders", durable=True, auto_delete=False)
        channel.queue_bind("orders", "events", "order.*")
        channel.queue_declare("audit", durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        channel.basic_publish(
            amqp.Message("pending", delivery_mode=2), exchange="events", routing_key="order.new"
        )
    rabbitmqctl(client, env, "add_vhost", "reports")
    rabbitmqctl(client, env, "add_user", "reporter", "s3cret pass")
    rabbitmqctl(client, env, "set_permissions", "-p", "reports", "reporter", ".*", ".*", ".*")
    rabbitmqctl(client, env, "set_policy", "-p", "reports", "short", "^tmp\\.", '{"message-ttl": 60000}')


@on_engine
def test_rabbitmq_3_10_to_4_0_refuses_while_messages_wait_and_keeps_3_10_running(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "rabbitmq", "3.10", "medium")
    set_up_broker(engine_client, env)

    failed = upgrade(team, env, "4.0", status=OperationStatus.FAILED)

    assert "1 messages are still in queues" in failed.error
    assert_not_moved(engine_client, env, "3.10")
    with broker(engine_client, env) as connection:  # the message is still there
        message = connection.channel().basic_get("orders", no_ack=True)
        assert message is not None and message.body == "pending"


@on_engine
def test_rabbitmq_3_10_to_4_0_moves_users_vhosts_queues_bindings_and_policies(
    team: Any, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, "rabbitmq", "3.10", "medium")
    set_up_broker(engine_client, env)
    with broker(engine_client, env) as connection:  # drained, as the upgrade asks
        assert connection.channel().basic_get("orders", no_ack=True).body == "pending"
    first = env.current_release

    op = upgrade(team, env, "4.0")

    assert "copied: 2 vhosts, 2 users" in op.log
    assert_moved(engine_client, env, "4.0")
    assert "4.0" in rabbitmqctl(engine_client, env, "version")
    queues = rabbitmqctl(
        engine_client, env, "list_queues", "--no-table-headers", "-p", "app", "name", "durable", "type"
    )
    assert sorted(queues.splitlines()) == ["audit\ttrue\tquorum", "orders\ttrue\tclassic"]
    assert "events\texchange\torders\tqueue\torder.*" in rabbitmqctl(
        engine_client, env, "list_bindings", "-p", "app"
    )
    assert "Success" in rabbitmqctl(engine_client, env, "authenticate_user", "reporter", "s3cret pass")
    assert "message-ttl" in rabbitmqctl(engine_client, env, "list_policies", "-p", "reports")
    with broker(engine_client, env) as connection:  # the stack's own user and vhost work on 4.0
        channel = connection.channel()
        channel.basic_publish(
            amqp.Message("after", delivery_mode=2), exchange="events", routing_key="order.x"
        )
        message = channel.basic_get("orders", no_ack=True)
        assert message is not None and message.body == "after"
    assert first is not None and first.spec["components"][0]["version"] == "3.10"


# --- the catalog --------------------------------------------------------------------------------
def test_every_stateful_upgrade_in_the_catalog_has_a_procedure() -> None:
    catalog = parse_catalog()
    for comp in catalog.components:
        if comp["code"] not in STATEFUL:
            continue
        moves = [v for v in comp["versions"] if v.get("migration")]
        assert moves, f"{comp['code']} offers no upgrade"
        for version in moves:
            migration = version["migration"]
            assert migration["method"] == "dump-restore"  # the old volume is always kept
            assert migration["restore"] and migration["notice"]


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("method: dump-restore\n", "method: copy\n", "migration.method must be one of"),
        ("      restore:\n", "      restored:\n", "unknown key 'restored'"),
        ("method: dump-restore\n", "method: in-place\n", "belong to a dump-restore migration"),
    ],
)
def test_a_migration_without_a_procedure_is_refused(tmp_path: Path, old: str, new: str, error: str) -> None:
    paths = []
    for path in catalog_files():
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        paths.append(copy)
    rabbitmq = tmp_path / "rabbitmq.yaml"
    assert old in rabbitmq.read_text()
    rabbitmq.write_text(rabbitmq.read_text().replace(old, new, 1))
    with pytest.raises(CatalogError, match=error):
        parse_catalog(paths)


# The real-engine fixtures of test_lifecycle (an engine client; environments destroyed at the end).
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup
