"""Stacks really run: services -> operations -> the Docker backend and a real edge.

Every test deploys on the real engine from the images this session's pipeline published,
fetches through its own HAProxy (the product's router, ``stackport``; ``on_caddy`` for the
tests that drive the Caddy router), and destroys what it made (also when it fails).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import pytest
import requests
from django.conf import settings

from projects.models import Environment, EnvironmentStatus
from projects.services import ServiceError
from stacks.backends.docker import list_containers
from stacks.models import ComponentVersion, Operation, OperationStatus, VersionStatus
from stacks.runtime import lifecycle
from stacks.runtime.hosts import ensure_local_hosts
from stacks.runtime.operations import run_operation
from tests.stacks.conftest import CADDY_ROUTER, Caddy, forget_routes, use_haproxy, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]


@pytest.fixture
def stackport(settings: Any, haproxy: Any, catalog: None) -> Any:
    """The portal on the local engine and the session's HAProxy edge (``haproxy``), as
    `make run` runs it; ``edge_url`` is where a test sends its requests."""
    use_haproxy(settings, haproxy)
    ensure_local_hosts("unix:///var/run/docker.sock")
    return haproxy


def on_caddy(settings: Any, caddy: Caddy) -> Caddy:
    """The portal on the session's Caddy edge instead (``STACKPORT_EDGE_ROUTER``): for the
    tests that run a worker of their own against it or take its admin API away."""
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    ensure_local_hosts("unix:///var/run/docker.sock")
    return caddy


@pytest.fixture
def engine_client() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    yield client
    client.close()


@pytest.fixture
def cleanup(engine_client: docker.DockerClient) -> Iterator[list[Environment]]:
    """Environments to destroy at the end, whatever happened."""
    made: list[Environment] = []
    yield made
    from stacks.runtime.operations import backend_for

    for env in made:
        env.refresh_from_db()
        try:
            backend_for(env).destroy(env.key, env.backend_state)
        except Exception as exc:  # noqa: BLE001 - best effort
            print(f"cleanup of {env.key} failed: {exc}")
        forget_routes(env)


def run(op: Operation) -> Operation:
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.kind} failed: {op.error}\n{op.log}"
    return op


def create(**kwargs: Any) -> Environment:
    """``lifecycle.create_project``, with STATIC's nginx 1.22 current while the stack is made:
    new stacks get current versions only, and a stack keeps a version deprecated since (so
    1.26 is its upgrade)."""
    old = ComponentVersion.objects.filter(component__code="nginx", version="1.22")
    status = old.get().status
    old.update(status=VersionStatus.CURRENT)
    try:
        return lifecycle.create_project(**kwargs)
    finally:
        old.update(status=status)


def deploy(
    team: Any, cleanup: list[Environment], name: str = "Shop", region: str = "eu-central", **kwargs: Any
) -> Environment:
    env = create(organization=team.org, actor=team.developer, name=name, region=region, **kwargs)
    cleanup.append(env)
    run(env.operations.get())
    env.refresh_from_db()
    return env


def get(caddy: Caddy, env: Environment, path: str = "/") -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(f"{caddy.edge_url}{path}", headers={"Host": env.hostname}, timeout=10)


def containers(client: docker.DockerClient, env: Environment) -> list[Any]:
    return list_containers(client, all=True, filters={"label": f"org.stackport.stack={env.key}"})


@dataclass
class Load:
    """Steady GET load through the edge in a thread; counts failures (status >= 500 or errors)."""

    caddy: Caddy
    env: Environment
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not self.stop.is_set():
                try:
                    r = session.get(
                        f"{self.caddy.edge_url}/", headers={"Host": self.env.hostname}, timeout=10
                    )
                    if r.status_code >= 500:
                        self.failures.append(f"{r.status_code} {r.text[:80]}")
                    else:
                        self.ok += 1
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)
        self.stop.set()
        self.thread.join(15)


STATIC = [
    {"name": "web", "component": "nginx", "version": "1.22", "size": "small", "replicas": 1, "public": True}
]


def test_static_site_deploys_hardened_serves_through_the_edge_and_is_destroyed(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, template="static-site")
    assert env.status == EnvironmentStatus.RUNNING
    response = get(stackport, env)
    assert response.status_code == 200 and "Your static site is live" in response.text

    (container,) = containers(engine_client, env)
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] and not host["Privileged"]
    assert host["Memory"] == 256 * 1024 * 1024 and host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 256 and host["NanoCpus"] == 250_000_000
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"}}
    assert host["NetworkMode"] != "host" and host["PidMode"] == "" and host["IpcMode"] in ("private", "")
    # Only the project's own named volumes (no host paths), no devices, no published ports.
    assert all(b.startswith(f"sp-{env.key}-") for b in host.get("Binds") or [])
    assert not host.get("Devices") and not host.get("PortBindings")
    assert all(m["Type"] == "volume" for m in container.attrs["Mounts"])
    assert container.attrs["Config"]["User"] == "www-data"
    assert container.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"
    assert container.attrs["Config"]["Image"].startswith("127.0.0.1:5000/stackport/nginx@sha256:")

    op = lifecycle.destroy(environment=env, actor=team.admin, confirmation="Shop")
    run(op)
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.DESTROYED
    assert containers(engine_client, env) == []
    assert not engine_client.networks.list(names=[f"sp-{env.key}"])
    assert not engine_client.volumes.list(filters={"label": f"org.stackport.stack={env.key}"})
    assert get(stackport, env).status_code == 404


def test_a_second_operation_waits_for_the_first(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    env = create(
        organization=team.org, actor=team.developer, name="Busy", region="eu-central", components=STATIC
    )
    cleanup.append(env)
    with pytest.raises(ServiceError) as err:
        lifecycle.set_running(environment=env, actor=team.developer, running=False)
    assert err.value.status == 409
    run(env.operations.get())
    with pytest.raises(ServiceError, match="Type the project's name"):
        lifecycle.destroy(environment=env, actor=team.admin, confirmation="busy")
    with pytest.raises(Exception, match="admin role"):
        lifecycle.destroy(environment=env, actor=team.developer, confirmation="Busy")


def test_blue_green_upgrade_of_nginx_under_load_drops_nothing(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    with Load(stackport, env) as load:
        run(lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26"))
    assert load.failures == [] and load.ok > 20, (load.ok, load.failures[:5])
    (container,) = containers(engine_client, env)
    assert container.labels["org.stackport.version"] == "1.26"
    assert container.labels["org.stackport.color"] == "b"


def test_a_version_that_fails_its_health_check_leaves_the_old_one_serving(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    broken = broken_nginx_version(engine_client)
    with Load(stackport, env) as load:
        op = lifecycle.upgrade(environment=env, actor=team.developer, component="web", version=broken.version)
        run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED and "health check" in op.error, op.error
    assert load.failures == [] and load.ok > 20, (load.ok, load.failures[:5])
    (container,) = containers(engine_client, env)
    assert container.labels["org.stackport.version"] == "1.22"
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and env.current_release.number == 1


def broken_nginx_version(client: docker.DockerClient) -> ComponentVersion:
    """nginx 1.26 whose health check always fails, published like a real version."""
    good = ComponentVersion.objects.get(component__code="nginx", version="1.26")
    dockerfile = (
        f"FROM {good.image_ref}\nUSER root\n"
        "RUN printf '#!/bin/sh\\nexit 1\\n' > /usr/local/bin/stackport-httpcheck && "
        "chmod 755 /usr/local/bin/stackport-httpcheck\nUSER www-data\n"
    )
    import io

    tag = "127.0.0.1:5000/stackport-test/nginx-broken:1"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    client.images.push("127.0.0.1:5000/stackport-test/nginx-broken", tag="1")
    digest = client.images.get_registry_data(tag).id
    return ComponentVersion.objects.create(
        component=good.component,
        version="1.26-broken",
        track="1.x",
        debian="trixie",
        status=VersionStatus.VERIFIED,
        image_ref=tag,
        digest=digest,
        position=99,
    )


def test_postgresql_15_to_17_keeps_the_rows(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    rows = [{"name": "db", "component": "postgresql", "version": "15", "size": "small", "replicas": 1}]
    env = deploy(team, cleanup, components=rows)

    def psql(sql: str) -> str:
        (container,) = [c for c in containers(engine_client, env) if c.status == "running"]
        password = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])["STACKPORT_DB_PASSWORD"]
        result = container.exec_run(
            ["psql", "-h", "127.0.0.1", "-U", "app", "-d", "app", "-tAc", sql],
            environment={"PGPASSWORD": password},
        )
        assert result.exit_code == 0, result.output
        return str(result.output.decode().strip())

    psql(
        "create table notes (id int primary key, body text); insert into notes values (1, 'kept'), (2, 'ü $(x)')"
    )
    assert psql("show server_version").startswith("15")
    run(lifecycle.upgrade(environment=env, actor=team.developer, component="db", version="17"))
    assert psql("show server_version").startswith("17")
    assert psql("select string_agg(body, '|' order by id) from notes") == "kept|ü $(x)"
    volumes = {
        v.name for v in engine_client.volumes.list(filters={"label": f"org.stackport.stack={env.key}"})
    }
    assert {f"sp-{env.key}-db-data", f"sp-{env.key}-db-data-g1"} <= volumes  # the old data is kept

    with pytest.raises(ServiceError, match="older version"):
        lifecycle.upgrade(environment=env, actor=team.developer, component="db", version="15")


def test_scale_up_and_down(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    run(lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=3))
    assert sorted(c.labels["org.stackport.index"] for c in containers(engine_client, env)) == ["0", "1", "2"]
    for _ in range(30):
        assert get(stackport, env).status_code == 200
    # nginx writes its access log every second (buffered): wait for the lines.
    wait_until(
        lambda: len([c for c in containers(engine_client, env) if b"GET / " in c.logs()]) >= 2,
        10,
        "access lines of two replicas (the edge spreads requests over the replicas)",
    )
    run(lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=1, size="medium"))
    (container,) = containers(engine_client, env)
    assert container.attrs["HostConfig"]["Memory"] == 512 * 1024 * 1024
    with pytest.raises(ServiceError, match="Replicas must be"):
        lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=11)


def test_stop_start_and_rollback(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    run(lifecycle.set_running(environment=env, actor=team.developer, running=False))
    assert containers(engine_client, env) == []
    assert get(stackport, env).status_code >= 500
    run(lifecycle.set_running(environment=env, actor=team.developer, running=True))
    assert get(stackport, env).status_code == 200
    run(lifecycle.upgrade(environment=env, actor=team.developer, component="web", version="1.26"))
    run(lifecycle.rollback(environment=env, actor=team.developer, release_number=1))
    (container,) = containers(engine_client, env)
    assert container.labels["org.stackport.version"] == "1.22"
    env.refresh_from_db()
    assert env.current_release.number == 1


def test_names_with_shell_metacharacters_and_values_arrive_byte_for_byte(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    name = 'x\'; rm -rf / $(reboot) `id` "q" && echo'
    env = create(
        organization=team.org, actor=team.developer, name=name, region="eu-central", components=STATIC
    )
    cleanup.append(env)
    value = 'it\'s "quoted" $(id) `uname` ${HOME}\nsecond line ünïcode \\n'
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value=value)
    lifecycle.set_variable(environment=env, actor=team.developer, name="TOKEN", value=value, secret=True)
    with pytest.raises(ServiceError, match="not a valid variable name"):
        lifecycle.set_variable(environment=env, actor=team.developer, name="A B", value="x")
    with pytest.raises(ServiceError, match="NUL"):
        lifecycle.set_variable(environment=env, actor=team.developer, name="A", value="x\x00")
    run(env.operations.get())
    (container,) = containers(engine_client, env)
    assert container.name == f"sp-{env.key}-web-a0"
    env_list = container.attrs["Config"]["Env"]
    assert f"GREETING={value}" in env_list and f"TOKEN={value}" in env_list
    result = container.exec_run(["printenv", "GREETING"])
    assert result.output.decode() == value + "\n"


TEMPLATE_PAGES = {
    "static-site": ("/", "Your static site is live"),
    "wordpress": ("/wp-admin/install.php", "WordPress"),
    "lamp": ("/", "Hello from LAMP on Stackport"),
    "python-web": ("/", "Hello from Python on Stackport"),
    "nodejs": ("/", "Hello from Node.js on Stackport"),
    "python-queue": ("/", "Hello from the queue sample on Stackport"),
}


@pytest.mark.parametrize("template", sorted(TEMPLATE_PAGES))
def test_every_template_deploys_and_serves_its_page_through_the_edge(
    template: str, team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    from stacks.models import StackTemplate

    env = deploy(team, cleanup, name=f"Demo {template}", template=template)
    path, text = TEMPLATE_PAGES[template]
    response = get(stackport, env, path)
    assert response.status_code == 200 and text in response.text, response.text[:500]
    expected = sum(c.replicas for c in StackTemplate.objects.get(code=template).components.all())
    assert len([c for c in containers(engine_client, env) if c.status == "running"]) == expected
    # Data stays inside the project: the page needed the database and cache it reached by name.
    assert "error" not in response.text.lower()[:2000] or template == "wordpress"


def test_wordpress_once_installed_serves_its_pages_on_the_edge_port(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    """The browser's Host carries the edge's port (:8080); WordPress's address has it too.
    Debian's nginx used to pass the host without the port to PHP, and every page of an
    installed WordPress redirected to itself for ever."""
    env = deploy(team, cleanup, name="Blog", template="wordpress")
    host = f"{env.hostname}:{settings.STACKPORT_EDGE_PUBLIC_PORT}"
    with requests.Session() as session:
        session.trust_env = False

        def visit(method: str, path: str, **kwargs: Any) -> requests.Response:
            return session.request(
                method,
                f"{stackport.edge_url}{path}",
                headers={"Host": host},
                allow_redirects=False,
                timeout=30,
                **kwargs,
            )

        form = {
            "weblog_title": "Stackport blog",
            "user_name": "editor",
            "admin_password": "a-long-Passw0rd-for-tests",
            "admin_password2": "a-long-Passw0rd-for-tests",
            "pw_weak": "1",
            "admin_email": "editor@example.test",
            "blog_public": "0",
        }
        installed = visit("POST", "/wp-admin/install.php?step=2", data=form)
        assert installed.status_code == 200 and "Success!" in installed.text, installed.text[:500]
        for path in ("/", "/?p=1", "/wp-login.php"):
            response = visit("GET", path)
            assert response.status_code == 200, (path, response.status_code, response.headers.get("Location"))
        home = visit("GET", "/")
        assert "Stackport blog" in home.text and f"http://{host}/" in home.text
        login = visit(
            "POST", "/wp-login.php", data={"log": "editor", "pwd": form["admin_password"], "testcookie": "1"}
        )
        assert login.status_code == 302 and login.headers["Location"] == f"http://{host}/wp-admin/"
        assert visit("GET", "/wp-admin/").status_code == 200

        # A custom domain: WordPress's pages and login form follow it, without a redeploy.
        from stacks.runtime.operations import sync_routes_for
        from tests.conftest import verified

        verified(lifecycle.add_domain(environment=env, actor=team.developer, hostname="blog.example.test"))
        sync_routes_for(env.pk)
        host = f"blog.example.test:{settings.STACKPORT_EDGE_PUBLIC_PORT}"
        home = visit("GET", "/")
        assert home.status_code == 200 and f"http://{host}/" in home.text, home.text[:300]
        assert env.hostname not in home.text
        assert f'action="http://{host}/wp-login.php"' in visit("GET", "/wp-login.php").text


def can_connect(container: Any, address: str, port: int) -> bool:
    result = container.exec_run(["timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"])
    return result.exit_code == 0


# Not exclusive any more: the egress policy (scripts/host-firewall.sh) isolates stacks in a
# table of its own, whatever state Docker's iptables rules are in (docs/decisions.md).
def test_projects_cannot_reach_each_other_or_the_host(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    import socket

    a = deploy(team, cleanup, name="A", components=STATIC)
    b = deploy(team, cleanup, name="B", components=[*STATIC, {**STATIC[0], "name": "api", "public": False}])
    (container_a,) = containers(engine_client, a)
    b_web, b_api = sorted(containers(engine_client, b), key=lambda c: c.name)[::-1]
    b_ip = next(iter(b_web.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    gateway = next(iter(container_a.attrs["NetworkSettings"]["Networks"].values()))["Gateway"]
    # Within a project: reachable by service name and address.
    assert can_connect(b_api, "web", 8080) and can_connect(b_api, b_ip, 8080)
    # Across projects: not at all.
    assert not can_connect(container_a, b_ip, 8080)
    # The host's own services: nothing, even a port open on every address.
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not can_connect(container_a, gateway, port)
    for service_port in (5432, 6379, 5672, 5000, 2019):
        assert not can_connect(container_a, gateway, service_port)


def test_php_82_to_84_under_load_drops_nothing(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, name="Lamp", template="lamp")
    run(lifecycle.upgrade(environment=env, actor=team.developer, component="php", version="8.2"))
    assert "PHP 8.2" in get(stackport, env).text
    with Load(stackport, env) as load:
        run(lifecycle.upgrade(environment=env, actor=team.developer, component="php", version="8.4"))
    assert load.failures == [] and load.ok > 20, (load.ok, load.failures[:5])
    assert "PHP 8.4" in get(stackport, env).text
