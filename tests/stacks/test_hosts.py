"""Several real Docker hosts on this machine (scripts/docker-hosts.sh): each host's dockerd
runs in its own network namespace. Checked with real containers on two hosts, wired as
docs/backends.md ("Several Docker hosts") tells the backend to:

- every host answers on its own socket and is its own engine;
- every host pulls the catalog's pinned reference (127.0.0.1:5000/...@sha256:...) as is;
- containers of one stack reach each other across hosts by IP;
- containers of another stack, the hosts themselves and the root namespace's services are
  out of their reach;
- the edge (the root namespace, and a real Caddy there) reaches every replica's port.

The hosts stay up afterwards (like the registry): other tests use them and a second
``up`` costs nothing. What the tests create (containers, networks) is removed.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests
from docker.models.containers import Container

from stacks.backends.edge import EdgeRouter

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "docker-hosts.sh"
ROOT_DOCKER_URL = "unix:///var/run/docker.sock"
REGISTRY = "127.0.0.1:5000"
PROBE_REPOSITORY = f"{REGISTRY}/stackport-test/hosts-probe"
BASE_IMAGE = "stackport/debian:bookworm"
POOL = ipaddress.ip_network("10.224.0.0/11")
HTTP_PORT = 8000
# How long a probe waits to connect: a dropped packet (not a refusal) times out. Across
# hosts a connection takes well under a millisecond here.
CONNECT_TIMEOUT = 1.5

# The replica: answers "<NAME> <path>" to any HTTP request (Debian's minbase has perl).
SERVER = r"""
use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalPort => $ENV{PORT}, Listen => 64, ReuseAddr => 1) or die "$!";
while (my $c = $s->accept) {
    my $line = <$c> // ""; my ($path) = $line =~ m{^\S+ (\S+)}; $path //= "-";
    while (my $h = <$c>) { last if $h =~ /^\r?\n$/ }
    my $body = "$ENV{NAME} $path\n";
    print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
    close $c;
}
"""
# The probe: one HTTP GET from inside a container to each "address:port" argument, all at
# once (a dropped connection attempt waits for the timeout). Prints "<target> OK <body>"
# or "<target> FAIL" for each; a connection that opens but gets no reply counts as OK.
CLIENT = r"""
use IO::Socket::INET;
my $timeout = shift @ARGV;
for my $target (@ARGV) {
    next if fork // die "fork: $!";
    my ($address, $port) = split /:/, $target;
    my $c = IO::Socket::INET->new(PeerAddr => $address, PeerPort => $port, Timeout => $timeout)
        or do { print "$target FAIL\n"; exit 0 };
    $SIG{ALRM} = sub { print "$target OK\n"; exit 0 };
    alarm 2 * $timeout;
    print $c "GET /probe HTTP/1.0\r\n\r\n";
    my (undef, $body) = split /\r\n\r\n/, join("", <$c>), 2;
    $body //= ""; chomp $body;
    print "$target OK $body\n";
    exit 0;
}
1 while wait != -1;
"""


@dataclass(frozen=True)
class Host:
    name: str
    url: str
    address: str  # the host's own address, on its link to the root namespace
    block: ipaddress.IPv4Network  # where its stack networks live

    @property
    def number(self) -> int:
        return int(self.name.removeprefix("sp"))

    @property
    def root_address(self) -> str:
        """The root namespace's end of this host's link."""
        return str(ipaddress.ip_address(self.address) - 1)

    def subnet(self, stack: int) -> ipaddress.IPv4Network:
        """The slice of stack number ``stack`` on this host: 10.(224+N).<stack>.0/24."""
        return ipaddress.ip_network(f"{self.block.network_address + stack * 256}/24")


@dataclass
class Replica:
    stack: int
    host: Host
    container: Container
    address: str


def run_hosts_script(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"docker-hosts.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


def parse_hosts(stdout: str) -> list[Host]:
    hosts = []
    for line in stdout.splitlines():
        name, url, address, block = line.split()
        hosts.append(Host(name, url, address, ipaddress.ip_network(block)))
    return hosts


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def http_get(address: str, port: int = HTTP_PORT, host_header: str | None = None) -> str | None:
    """GET from the root namespace (where the edge runs); None when nothing answers."""
    headers = {"Host": host_header} if host_header else {}
    with requests.Session() as session:
        session.trust_env = False
        try:
            response = session.get(f"http://{address}:{port}/probe", headers=headers, timeout=CONNECT_TIMEOUT)
        except requests.RequestException:
            return None
    return response.text if response.ok else None


def probe_many(replica: Replica, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
    """GET from inside ``replica``'s container to every (address, port) at once: each
    target's body, or None when it cannot connect."""
    command = [
        "perl",
        "-e",
        CLIENT,
        str(CONNECT_TIMEOUT),
        *(f"{address}:{port}" for address, port in targets),
    ]
    exit_code, output = replica.container.exec_run(command)
    assert exit_code == 0, output
    results: dict[tuple[str, int], str | None] = {}
    for line in output.decode().splitlines():
        target, outcome, *body = line.split(" ", 2)
        address, port = target.rsplit(":", 1)
        results[(address, int(port))] = (body[0] if body else "") if outcome == "OK" else None
    assert set(results) == set(targets), output
    return results


def probe(replica: Replica, address: str, port: int = HTTP_PORT) -> str | None:
    return probe_many(replica, [(address, port)])[(address, port)]


def name_of(replica: Replica) -> str:
    """What the replica's server answers to GET /probe."""
    return f"s{replica.stack}-{replica.host.name} /probe"


@pytest.fixture(scope="module")
def hosts(engine: None) -> list[Host]:
    """Two hosts, started by the script; a second run finds them up and prints the same."""
    started = time.monotonic()
    first = run_hosts_script("up", "2")
    print(f"docker-hosts.sh up: {time.monotonic() - started:.1f} s")
    hosts = parse_hosts(first.stdout)
    assert [host.name for host in hosts] == ["sp1", "sp2"]
    again = run_hosts_script("up", "2")
    assert again.stdout == first.stdout
    assert "starting" not in again.stderr
    return hosts


@pytest.fixture(scope="module")
def clients(hosts: list[Host]) -> Iterator[dict[str, docker.DockerClient]]:
    clients = {
        host.name: docker.DockerClient(base_url=host.url, version="auto", timeout=60) for host in hosts
    }
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def probe_image(engine: None) -> str:
    """The Debian base image pushed to the local registry: its pinned reference."""
    client = docker.DockerClient(base_url=ROOT_DOCKER_URL, version="auto", timeout=120)
    try:
        image = client.images.get(BASE_IMAGE)
        image.tag(PROBE_REPOSITORY, "bookworm")
        client.images.push(PROBE_REPOSITORY, "bookworm")
        image.reload()
    finally:
        client.close()
    pinned = [ref for ref in image.attrs["RepoDigests"] if ref.startswith(f"{PROBE_REPOSITORY}@sha256:")]
    assert pinned, image.attrs["RepoDigests"]
    return str(pinned[0])


@pytest.fixture(scope="module")
def pulled(clients: dict[str, docker.DockerClient], probe_image: str) -> str:
    for client in clients.values():
        client.images.pull(probe_image)
    return probe_image


def free_stack_numbers(clients: dict[str, docker.DockerClient], hosts: list[Host], count: int) -> list[int]:
    """Stack numbers whose slice no network uses on any host (other runs may be going)."""
    used = set()
    for client in clients.values():
        for network in client.networks.list():
            for pool in (network.attrs.get("IPAM") or {}).get("Config") or []:
                subnet = ipaddress.ip_network(pool["Subnet"], strict=False)
                if subnet.version == 4 and subnet.subnet_of(POOL):
                    used.add(int(subnet.network_address.packed[2]))
    free = [number for number in range(200, 255) if number not in used]
    assert len(free) >= count, f"no free stack numbers: {sorted(used)}"
    return secrets.SystemRandom().sample(free, count)


@pytest.fixture(scope="module")
def stacks(
    hosts: list[Host], clients: dict[str, docker.DockerClient], pulled: str
) -> Iterator[dict[int, list[Replica]]]:
    """Two stacks, each with a network and a replica on both hosts, made as the backend
    must make them: a bridge network per host on the stack's slice, no masquerading."""
    run = secrets.token_hex(3)
    numbers = free_stack_numbers(clients, hosts, 2)
    created: list[tuple[docker.DockerClient, str, str]] = []  # (client, kind, id)
    replicas: dict[int, list[Replica]] = {number: [] for number in numbers}
    try:
        for number in numbers:
            for host in hosts:
                client, subnet = clients[host.name], host.subnet(number)
                name = f"sptest-{run}-s{number}"
                network = client.networks.create(
                    name,
                    driver="bridge",
                    ipam=docker.types.IPAMConfig(
                        pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(subnet[1]))]
                    ),
                    options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
                    labels={"org.stackport.test": "hosts"},
                )
                created.append((client, "network", network.id))
                container = client.containers.run(
                    pulled,
                    ["perl", "-e", SERVER],
                    name=f"{name}-{host.name}",
                    environment={"NAME": f"s{number}-{host.name}", "PORT": str(HTTP_PORT)},
                    network=name,
                    detach=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    labels={"org.stackport.test": "hosts"},
                )
                created.append((client, "container", container.id))
                container.reload()
                address = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
                assert ipaddress.ip_address(address) in subnet
                replicas[number].append(Replica(number, host, container, address))
        for replica in (r for group in replicas.values() for r in group):
            address = replica.address
            wait_until(lambda: http_get(address) is not None, 30, f"{replica.container.name} to answer")
        yield replicas
    finally:
        for client, kind, object_id in reversed(created):
            try:
                if kind == "container":
                    client.containers.get(object_id).remove(force=True)
                else:
                    client.networks.get(object_id).remove()
            except docker.errors.NotFound:
                pass


@pytest.fixture
def root_listener() -> Iterator[int]:
    """A service in the root namespace listening on every address (what a container must
    not reach): its port."""
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen()
        yield int(server.getsockname()[1])


def test_each_host_answers_as_its_own_engine(
    hosts: list[Host], clients: dict[str, docker.DockerClient]
) -> None:
    root = docker.DockerClient(base_url=ROOT_DOCKER_URL, version="auto")
    try:
        ids = {"root": root.info()["ID"]}
    finally:
        root.close()
    for host in hosts:
        client = clients[host.name]
        assert client.ping()
        info = client.info()
        assert info["DockerRootDir"] == f"/var/lib/stackport/hosts/h{host.number}"
        ids[host.name] = info["ID"]
    assert len(set(ids.values())) == len(ids), ids
    assert parse_hosts(run_hosts_script("status").stdout) == hosts


def test_each_host_pulls_the_pinned_reference_from_the_local_registry(
    hosts: list[Host], clients: dict[str, docker.DockerClient], probe_image: str
) -> None:
    for host in hosts:
        client = clients[host.name]
        try:
            client.images.remove(probe_image)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as error:  # in use by a container of another run
            assert error.status_code == 409, error
        image = client.images.pull(probe_image)
        assert probe_image in image.attrs["RepoDigests"]


def test_replicas_of_one_stack_reach_each_other_across_hosts(stacks: dict[int, list[Replica]]) -> None:
    for replicas in stacks.values():
        first, second = replicas
        assert first.host != second.host
        assert probe(first, second.address) == name_of(second)
        assert probe(second, first.address) == name_of(first)


def test_other_stacks_are_out_of_reach_on_every_host(stacks: dict[int, list[Replica]]) -> None:
    one, other = stacks.values()
    for sources, targets in [(one, other), (other, one)]:
        for source in sources:
            results = probe_many(source, [(target.address, HTTP_PORT) for target in targets])
            assert all(body is None for body in results.values()), (source.container.name, results)


def test_hosts_and_root_services_are_out_of_reach(
    hosts: list[Host], stacks: dict[int, list[Replica]], root_listener: int
) -> None:
    # Sanity: the listener answers the root namespace on a host link's address.
    with socket.create_connection((hosts[0].root_address, root_listener), timeout=CONNECT_TIMEOUT):
        pass
    for replica in (r for group in stacks.values() for r in group):
        targets = [
            (str(replica.host.subnet(replica.stack)[1]), 5000),  # its own gateway
            ("127.0.0.1", 5000),  # the host engine's registry is not the container's loopback
        ]
        for host in hosts:
            targets += [
                (host.root_address, root_listener),  # a root service on every address
                (host.root_address, 5432),  # PostgreSQL, Redis, the registry, ...
                (host.root_address, 6379),
                (host.root_address, 5000),
                (host.address, 5000),  # a host's registry forwarder (on its loopback)
            ]
        results = probe_many(replica, targets)
        assert all(body is None for body in results.values()), (replica.container.name, results)


def test_root_namespace_reaches_every_replica(stacks: dict[int, list[Replica]]) -> None:
    for replica in (r for group in stacks.values() for r in group):
        assert http_get(replica.address) == f"{name_of(replica)}\n"


def unused_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A Caddy of our own (scripts/caddy.sh on free loopback ports): (admin URL, edge address)."""
    admin, listen = f"127.0.0.1:{unused_loopback_port()}", f"127.0.0.1:{unused_loopback_port()}"
    env = {
        **os.environ,
        "STACKPORT_CADDY_ADMIN": admin,
        "STACKPORT_EDGE_LISTEN": listen,
        "STACKPORT_CADDY_DIR": str(tmp_path),
        "STACKPORT_CADDY_LOG": str(tmp_path / "caddy.log"),
    }
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "caddy.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"scripts/caddy.sh failed:\n{result.stdout}\n{result.stderr}"
    (pidfile,) = tmp_path.glob("caddy-*.pid")
    pid = int(pidfile.read_text())
    yield f"http://{admin}", listen
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "caddy to exit")
    except ProcessLookupError:
        pass


def test_edge_routes_to_replicas_on_every_host(
    stacks: dict[int, list[Replica]], edge: tuple[str, str]
) -> None:
    admin_url, listen = edge
    replicas = next(iter(stacks.values()))
    with EdgeRouter(admin_url, listen=[listen], timeout=10) as router:
        router.ensure_server()
        router.set_route(
            "sptest-hosts",
            ["hosts.stackport.test"],
            [f"{replica.address}:{HTTP_PORT}" for replica in replicas],
            health_path="/healthz",
        )
    edge_host, edge_port = listen.rsplit(":", 1)
    expected = {f"{name_of(replica)}\n" for replica in replicas}
    seen: set[str | None] = set()

    def both_seen() -> bool:
        seen.add(http_get(edge_host, int(edge_port), host_header="hosts.stackport.test"))
        return expected <= seen

    wait_until(both_seen, 30, f"the edge to answer from both hosts (seen {seen})")
