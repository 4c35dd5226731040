"""The egress policy (scripts/host-firewall.sh, docs/security.md "Network egress"), from
inside real tenant containers: on the netns hosts (scripts/docker-hosts.sh, routed fabric)
and on the root engine. A container reaches its own stack and, only when its plan allows
the internet, an "outside" address: a network namespace of the test's own behind
198.51.100.0/30 (in TEST-NET-2), routed from the root namespace like the internet would be
(a /30 of a documentation range: a wider one could shadow a real upstream, e.g. a proxy the
machine reaches on another documentation range).
Never: the metadata address, the host's own services on any of its addresses, the other
hosts' engine APIs, the root namespace, another stack.

Run the netns test under ``flock /tmp/netns.lock`` (it starts the shared netns hosts)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from billing.models import Plan
from billing.quotas import plan_for
from projects.models import Environment
from stacks.runtime import lifecycle
from tests.stacks.conftest import CADDY_ROUTER, Caddy
from tests.stacks.test_lifecycle import (  # noqa: F401 (fixtures)
    STATIC,
    cleanup,
    containers,
    deploy,
    engine_client,
    run,
    stackport,
)
from tests.stacks.test_multihost import netns_hosts, register_netns_hosts  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1200)]

OUTSIDE_NS = "stackport-outside"
OUTSIDE_LINK = "sp-outside"
OUTSIDE_GATEWAY = "198.51.100.1"
OUTSIDE = "198.51.100.2"
OUTSIDE_PORT = 8099
TOKEN = "stackport-listener"
# The host's services Stackport runs beside the engines: PostgreSQL, Redis, a Docker API
# on tcp (plain and TLS), Caddy's admin API, the registry's push API, the portal.
SERVICE_PORTS = (5432, 6379, 2375, 2376, 2019, 5000, 8000)

# Accepts on every address:port given, answers each connection with the token. A port
# taken already (a real service: the host's Docker API on 2376) is left to it.
LISTENER = f"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, int(port)))
    except OSError:
        continue
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"{TOKEN}\\n")
        conn.close()
"""


class Listeners:
    """A listener process (in network namespace ``netns``, or the root one)."""

    def __init__(self, addresses: list[tuple[str, int]], netns: str | None = None) -> None:
        command = [sys.executable, "-c", LISTENER, *(f"{a}:{p}" for a, p in addresses)]
        if netns:
            command = ["nsenter", f"--net=/var/run/netns/{netns}", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready", "listener did not start"

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def in_ns(netns: str, *args: str) -> None:
    sh("nsenter", f"--net=/var/run/netns/{netns}", *args)


def answers_from_here(address: str, port: int) -> bool:
    """Something listens there, seen from the root namespace: a connection a container
    cannot open is the policy's doing, not a missing listener."""
    with socket.create_connection((address, port), timeout=5):
        return True


def reaches(container: Any, address: str, port: int) -> bool:
    """The container opens a connection to address:port and reads the listener's token."""
    script = f"exec 3<>/dev/tcp/{address}/{port} && head -n 1 <&3"
    result = container.exec_run(["timeout", "5", "bash", "-c", script])
    return result.exit_code == 0 and TOKEN in result.output.decode(errors="replace")


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    """The internet, as far as the hosts can tell: a namespace routed from the root one."""
    subprocess.run(["ip", "netns", "del", OUTSIDE_NS], capture_output=True)
    subprocess.run(["ip", "link", "del", OUTSIDE_LINK], capture_output=True)  # a run that died
    sh("ip", "netns", "add", OUTSIDE_NS)
    try:
        sh("ip", "link", "add", OUTSIDE_LINK, "type", "veth", "peer", "name", "eth0", "netns", OUTSIDE_NS)
        sh("ip", "addr", "replace", f"{OUTSIDE_GATEWAY}/30", "dev", OUTSIDE_LINK)
        sh("ip", "link", "set", OUTSIDE_LINK, "up")
        in_ns(OUTSIDE_NS, "ip", "link", "set", "lo", "up")
        in_ns(OUTSIDE_NS, "ip", "addr", "replace", f"{OUTSIDE}/30", "dev", "eth0")
        in_ns(OUTSIDE_NS, "ip", "link", "set", "eth0", "up")
        in_ns(OUTSIDE_NS, "ip", "route", "replace", "default", "via", OUTSIDE_GATEWAY)
        listener = Listeners([(OUTSIDE, OUTSIDE_PORT)], netns=OUTSIDE_NS)
        try:
            assert answers_from_here(OUTSIDE, OUTSIDE_PORT)
            yield OUTSIDE
        finally:
            listener.close()
    finally:
        subprocess.run(["ip", "netns", "del", OUTSIDE_NS], capture_output=True)


@pytest.fixture
def free_plan(db: None, team: Any) -> Plan:
    """The team's plan, without the internet (the free plan's setting)."""
    plan = plan_for(team.org)
    if plan is None:
        plan = Plan.objects.create(code="free", name="Free", is_default=True)
    Plan.objects.filter(pk=plan.pk).update(internet_egress=False)
    return plan


def allow_internet(team: Any, plan: Plan, env: Environment) -> None:
    """The plan now includes the internet: the next deploy gives the stack its egress."""
    Plan.objects.filter(pk=plan.pk).update(internet_egress=True)
    run(lifecycle.redeploy(environment=env, actor=team.developer))
    env.refresh_from_db()


def address_of(container: Any) -> tuple[str, str]:
    """(the container's address, its network's gateway)."""
    container.reload()
    network = next(iter(container.attrs["NetworkSettings"]["Networks"].values()))
    return network["IPAddress"], network["Gateway"]


# --- netns hosts (routed fabric) -------------------------------------------------------------------
@pytest.fixture
def on_netns_hosts(settings: Any, caddy: Caddy, catalog: None, netns_hosts: list[dict[str, str]]) -> Caddy:  # noqa: F811
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = caddy.admin_url
    settings.STACKPORT_EDGE_LISTEN = caddy.edge_addr
    register_netns_hosts(netns_hosts)
    return caddy


@pytest.fixture
def netns_cleanup(netns_hosts: list[dict[str, str]]) -> Iterator[list[Environment]]:  # noqa: F811
    made: list[Environment] = []
    yield made
    from stacks.runtime.operations import backend_for

    for env in made:
        env.refresh_from_db()
        backend_for(env).destroy(env.key, env.backend_state)


def stack_containers(hosts: list[dict[str, str]], env: Environment) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for host in hosts:
        client = docker.DockerClient(base_url=host["url"])
        found[host["name"]] = client.containers.list(filters={"label": f"org.stackport.stack={env.key}"})
    return found


def test_containers_on_netns_hosts_reach_only_their_stack_and_the_internet_their_plan_allows(
    team: Any,
    on_netns_hosts: Caddy,
    netns_hosts: list[dict[str, str]],  # noqa: F811
    netns_cleanup: list[Environment],
    outside: str,
    free_plan: Plan,
) -> None:
    a = deploy(team, netns_cleanup, name="A", region="eu-west", components=STATIC)
    b = deploy(
        team,
        netns_cleanup,
        name="B",
        region="eu-west",
        components=[*STATIC, {**STATIC[0], "name": "api", "public": False}],
    )
    a_host, (a_web,) = next((h, c) for h, c in stack_containers(netns_hosts, a).items() if c)
    b_web, b_api = sorted(
        (c for cs in stack_containers(netns_hosts, b).values() for c in cs), key=lambda c: c.name
    )[::-1]
    b_ip, _ = address_of(b_web)
    _, gateway = address_of(a_web)
    index = next(i for i, h in enumerate(netns_hosts) if h["name"] == a_host)
    here, other = netns_hosts[index], netns_hosts[1 - index]
    root_side = here["address"].rsplit(".", 1)[0] + ".1"  # the root namespace on A's host's link

    # Listeners on the hosts' own addresses (what a host's services would bind), and on the
    # root namespace's side of A's host's link.
    listeners = [
        Listeners([(here["address"], p) for p in SERVICE_PORTS] + [("0.0.0.0", 9999)], netns=ns_of(here)),
        Listeners([(other["address"], p) for p in (2375, 2376)], netns=ns_of(other)),
        Listeners([(root_side, 9998)]),
    ]
    try:
        for port in SERVICE_PORTS:
            assert answers_from_here(here["address"], port)
        assert answers_from_here(other["address"], 2376) and answers_from_here(root_side, 9998)

        def forbidden_all_fail() -> None:
            assert not can_connect(a_web, "169.254.169.254", 80)
            for port in SERVICE_PORTS:
                assert not can_connect(a_web, here["address"], port), port
            assert not can_connect(a_web, gateway, 9999)
            for port in (2375, 2376):
                assert not can_connect(a_web, other["address"], port), port
            assert not can_connect(a_web, root_side, 9998)
            assert not can_connect(a_web, b_ip, 8080)

        # Within a stack: reachable; from the edge: reachable.
        assert can_connect(b_api, "web", 8080) and can_connect(b_api, b_ip, 8080)
        with socket.create_connection((b_ip, 8080), timeout=5):
            pass
        forbidden_all_fail()
        assert not reaches(a_web, outside, OUTSIDE_PORT)

        allow_internet(team, free_plan, a)
        (a_web,) = next(c for c in stack_containers(netns_hosts, a).values() if c)
        assert reaches(a_web, outside, OUTSIDE_PORT)
        forbidden_all_fail()
        assert not reaches(b_api, outside, OUTSIDE_PORT)  # B's plan is the same row: B not redeployed
    finally:
        for listener in listeners:
            listener.close()


def ns_of(host: dict[str, str]) -> str:
    return "stackport-h" + host["name"].removeprefix("sp")


def can_connect(container: Any, address: str, port: int) -> bool:
    result = container.exec_run(["timeout", "5", "bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"])
    return result.exit_code == 0


# --- the root engine (one stand-alone host) --------------------------------------------------------
def lan_address() -> str | None:
    """The host's address on the link of its default route (its LAN), if it has one."""
    route = subprocess.run(["ip", "-4", "-o", "route", "show", "default"], capture_output=True, text=True)
    words = route.stdout.split()
    if "dev" not in words:
        return None
    dev = words[words.index("dev") + 1]
    addr = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True, text=True)
    fields = addr.stdout.split()
    return fields[fields.index("inet") + 1].split("/")[0] if "inet" in fields else None


def test_containers_on_the_root_engine_reach_only_their_stack_and_the_internet_their_plan_allows(
    team: Any,
    stackport: Caddy,  # noqa: F811
    cleanup: list[Environment],  # noqa: F811
    engine_client: docker.DockerClient,  # noqa: F811
    outside: str,
    free_plan: Plan,
) -> None:
    a = deploy(team, cleanup, name="A", components=STATIC)
    b = deploy(team, cleanup, name="B", components=STATIC)
    (a_web,) = containers(engine_client, a)
    (b_web,) = containers(engine_client, b)
    b_ip, _ = address_of(b_web)
    _, gateway = address_of(a_web)
    # The host's services bound to the stack network's gateway address (PostgreSQL, Redis,
    # ... listen on loopback here, which no container reaches anyway), and on every address.
    lan = lan_address()
    listeners = [Listeners([(gateway, p) for p in SERVICE_PORTS] + ([(lan, 9997)] if lan else []))]
    try:
        assert answers_from_here(gateway, 5432)

        def forbidden_all_fail() -> None:
            assert not can_connect(a_web, "169.254.169.254", 80)
            for port in SERVICE_PORTS:
                assert not can_connect(a_web, gateway, port), port
            assert not lan or not can_connect(a_web, lan, 9997)
            assert not can_connect(a_web, b_ip, 8080)

        forbidden_all_fail()
        assert not reaches(a_web, outside, OUTSIDE_PORT)
        allow_internet(team, free_plan, a)
        (a_web,) = containers(engine_client, a)
        assert reaches(a_web, outside, OUTSIDE_PORT)
        forbidden_all_fail()
        assert not reaches(b_web, outside, OUTSIDE_PORT)
    finally:
        for listener in listeners:
            listener.close()
