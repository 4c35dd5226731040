"""Custom domains belong to one organization, which proves control by a DNS TXT record
(stacks.runtime.domains). No engine and never the dev Caddy: routes go to a recording router;
the DNS tests run a real DNS server (Debian's dnsmasq) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.resolver
import pytest
from django.utils import timezone

from projects.models import AuditEvent, Environment
from projects.services import ServiceError
from stacks.models import Domain, DomainClaim
from stacks.runtime import domains, lifecycle, operations
from tests.conftest import Team, client_for, verified
from tests.factories import UserFactory
from tests.portal.test_api import api_for
from tests.stacks.conftest import unused_loopback_port, wait_until
from tests.stacks.test_project_pages import finish, page
from tests.stacks.test_support import staff

pytestmark = pytest.mark.django_db
HOST = "shop.example.test"


@pytest.fixture
def env(team: Team, offered_catalog: None) -> Environment:
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="lamp"
    )
    finish(environment)
    return environment


@pytest.fixture
def theirs(team: Team, offered_catalog: None) -> Environment:
    environment = lifecycle.create_project(
        organization=team.outsider_org,
        actor=team.outsider,
        name="Theirs",
        region="eu-central",
        template="lamp",
    )
    finish(environment)
    return environment


@pytest.fixture
def queued_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Route syncs queued (instead of sent to a broker)."""
    from stacks.tasks import sync_edge_task, sync_routes_task

    queued: list[int] = []
    monkeypatch.setattr(sync_routes_task, "delay", lambda environment_id: queued.append(environment_id))
    monkeypatch.setattr(sync_edge_task, "delay", lambda: None)  # the edge's platform routes
    return queued


def rows() -> tuple[Any, ...]:
    return (
        list(Domain.objects.order_by("pk").values_list("pk", "hostname", "path_prefix")),
        list(DomainClaim.objects.order_by("pk").values_list("pk", "hostname", "verified_at")),
        AuditEvent.objects.filter(action__startswith="domain.").count(),
    )


def add(environment: Environment, actor: Any, hostname: str = HOST, prefix: str = "") -> Domain:
    return lifecycle.add_domain(environment=environment, actor=actor, hostname=hostname, path_prefix=prefix)


# --- ownership ---------------------------------------------------------------------------------------
def test_a_new_domain_is_pending_with_the_record_to_create_and_is_not_routed(
    team: Team, env: Environment
) -> None:
    domain = add(env, team.developer, "Shop.Example.TEST")
    claim = domain.claim
    assert claim.organization == team.org and claim.hostname == HOST
    assert claim.verified_at is None and len(claim.token) == 32
    assert claim.record_name == f"_stackport-challenge.{HOST}"
    assert not operations.routed_domains(env).exists()
    assert operations.route_ids(env) == [env.key]

    html = page(client_for(team.developer).get(f"/environments/{env.pk}/"))
    section = html[html.index('id="domains"') : html.index('id="variables"')]
    assert "pending" in section and claim.record_name in section and claim.token in section
    assert f"/environments/{env.pk}/domains/{domain.pk}/check/" in section and "Check now" in section

    (listed,) = api_for(team.developer).get(f"/environments/{env.pk}/domains").json()
    assert listed["status"] == "pending" and listed["verified_at"] is None
    assert listed["record"] == {"type": "TXT", "name": claim.record_name, "value": claim.token}

    verified(domain)
    assert list(operations.routed_domains(env)) == [domain]
    (listed,) = api_for(team.developer).get(f"/environments/{env.pk}/domains").json()
    assert listed["status"] == "verified" and listed["verified_at"]
    section = page(client_for(team.developer).get(f"/environments/{env.pk}/"))
    assert "verified" in section and "Check now" not in section


def test_a_second_organization_cannot_claim_a_verified_name_or_any_prefix_of_it(
    team: Team, env: Environment, theirs: Environment
) -> None:
    verified(add(env, team.developer))
    before = rows()
    for hostname, prefix in ((HOST, ""), ("SHOP.example.test", ""), (HOST, "/account"), (HOST, "/a/b")):
        with pytest.raises(ServiceError, match="belongs to another organization") as err:
            add(theirs, team.outsider, hostname, prefix)
        assert (err.value.status, err.value.field) == (409, "hostname")
    api = api_for(team.outsider)
    response = api.post(f"/environments/{theirs.pk}/domains", {"hostname": HOST, "path_prefix": "/account"})
    assert response.status_code == 409 and response.json()["field"] == "hostname"
    assert "another organization" in response.json()["detail"]
    response = client_for(team.outsider).post(
        f"/environments/{theirs.pk}/domains/", {"hostname": HOST, "path_prefix": "/account"}
    )
    assert response.status_code == 409 and "belongs to another organization" in page(response)
    assert rows() == before
    assert not theirs.domains.exists() and operations.route_ids(theirs) == [theirs.key]


def test_while_nobody_proved_control_others_may_wait_and_the_first_proof_wins(
    team: Team, env: Environment, theirs: Environment
) -> None:
    """A pending claim blocks nobody (no squatting on names one does not control)."""
    mine = add(env, team.developer)
    squatter = add(theirs, team.outsider, HOST, "/account")
    assert mine.claim != squatter.claim and mine.claim.token != squatter.claim.token
    verified(mine)
    assert domains.verify_claim(squatter.claim, method=DomainClaim.Method.DNS) is False
    assert domains.check_claim(squatter.claim) is False
    squatter.claim.refresh_from_db()
    assert squatter.claim.verified_at is None and "another organization" in squatter.claim.check_error
    assert not operations.routed_domains(theirs).exists()
    with pytest.raises(ServiceError) as err:
        add(theirs, team.outsider, HOST, "/blog")
    assert err.value.status == 409


def test_path_prefixes_split_a_host_among_environments_of_one_organization(
    team: Team, env: Environment, offered_catalog: None
) -> None:
    other = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Api", region="eu-central", template="lamp"
    )
    plain = add(env, team.developer)
    api = add(other, team.developer, HOST, "/api/")
    assert api.claim == plain.claim and api.path_prefix == "/api"
    with pytest.raises(ServiceError, match="already in use") as err:
        add(env, team.developer, HOST, "/api")
    assert err.value.status == 409
    verified(plain)  # one proof for every prefix of the host in the organization
    assert list(operations.routed_domains(other)) == [api]
    assert operations.route_ids(other) == [other.key, f"{other.key}-d{api.pk}"]


@pytest.mark.parametrize(
    "hostname, message",
    [
        ("*.example.test", "Wildcard"),
        ("*", "Wildcard"),
        ("shop.*.test", "Wildcard"),
        ("apps.localhost", "apps domain"),
        ("x.apps.localhost", "apps domain"),
        ("portal.hoster.example", "belongs to the platform"),
        ("www.Portal.Hoster.example", "belongs to the platform"),
        ("edge.reserved.example", "belongs to the platform"),
    ],
)
def test_wildcards_and_the_platforms_own_names_cannot_be_claimed(
    team: Team, env: Environment, settings: Any, hostname: str, message: str
) -> None:
    settings.STACKPORT_BASE_URL = "https://portal.hoster.example"
    settings.STACKPORT_RESERVED_DOMAINS = ["reserved.example"]
    before = rows()
    with pytest.raises(ServiceError, match=message) as err:
        add(env, team.developer, hostname)
    assert (err.value.status, err.value.field) == (400, "hostname")
    response = api_for(team.developer).post(f"/environments/{env.pk}/domains", {"hostname": hostname})
    assert response.status_code == 400 and response.json()["field"] == "hostname"
    assert rows() == before


def test_removing_the_last_domain_of_a_name_frees_it(
    team: Team, env: Environment, theirs: Environment
) -> None:
    first = verified(add(env, team.developer))
    second = add(env, team.developer, HOST, "/api")
    lifecycle.remove_domain(domain=first, actor=team.developer)
    assert DomainClaim.objects.filter(pk=second.claim_id, verified_at__isnull=False).exists()
    lifecycle.remove_domain(domain=second, actor=team.developer)
    assert not DomainClaim.objects.exists()
    again = add(theirs, team.outsider)
    assert again.claim.verified_at is None and again.claim.token != first.claim.token


def test_routes_carry_only_verified_domains(
    team: Team, env: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Router:
        routes_: dict[str, tuple[list[str], str]] = {}

        def __enter__(self) -> Router:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def ensure_https(self) -> bool:
            return False  # HTTPS off (test_https.py has it on)

        def set_route(
            self, route_id: str, hosts: list[str], upstreams: list[str], path_prefix: str = ""
        ) -> bool:
            self.routes_[route_id] = (hosts, path_prefix)
            return True

        def remove_route(self, route_id: str) -> bool:
            return self.routes_.pop(route_id, None) is not None

        def routes(self) -> dict[str, Any]:
            return dict(self.routes_)

    class Backend:
        def upstreams(self, spec: Any, state: Any) -> list[str]:
            return ["127.0.0.1:9"]

    monkeypatch.setattr(operations, "edge", Router)
    plain, prefixed = add(env, team.developer), add(env, team.developer, "example.test", "/shop")
    operations.sync_routes(env, Backend(), SimpleNamespace(running=True))  # type: ignore[arg-type]
    assert Router.routes_ == {env.key: ([env.hostname], "")}
    verified(plain)
    verified(prefixed)
    operations.sync_routes(env, Backend(), SimpleNamespace(running=True))  # type: ignore[arg-type]
    assert Router.routes_ == {
        env.key: ([env.hostname, HOST], ""),
        f"{env.key}-d{prefixed.pk}": (["example.test"], "/shop"),
    }
    lifecycle.remove_domain(domain=prefixed, actor=team.developer)
    operations.sync_routes(env, Backend(), SimpleNamespace(running=True))  # type: ignore[arg-type]
    assert set(Router.routes_) == {env.key}


def test_verification_off_trusts_the_first_organization(
    team: Team, env: Environment, theirs: Environment, settings: Any
) -> None:
    settings.STACKPORT_DOMAIN_VERIFICATION = False
    domain = add(env, team.developer)
    assert domain.claim.verified_at is not None and domain.claim.method == DomainClaim.Method.TRUSTED
    with pytest.raises(ServiceError) as err:
        add(theirs, team.outsider, HOST, "/x")
    assert err.value.status == 409


def test_support_marks_a_claim_verified_audited(
    team: Team, env: Environment, queued_syncs: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    domain = add(env, team.developer)
    with pytest.raises(ServiceError) as err:
        domains.mark_verified(claim=domain.claim, actor=UserFactory(is_staff=True))
    assert err.value.status == 403
    supporter = staff("Support", email="support@hoster.test")
    with django_capture_on_commit_callbacks(execute=True):
        assert domains.mark_verified(claim=domain.claim, actor=supporter) is True
    domain.claim.refresh_from_db()
    assert domain.claim.method == DomainClaim.Method.SUPPORT and domain.claim.verified_at
    event = AuditEvent.objects.get(action="support.domain_verify")
    assert event.actor == supporter and event.organization == team.org and event.data["hostname"] == HOST
    assert queued_syncs == [env.pk]


def test_the_periodic_check_backs_off_and_drops_claims_without_domains(team: Team, env: Environment) -> None:
    now = timezone.now()
    claim = add(env, team.developer).claim
    assert domains.due(claim, now)
    claim.last_checked_at = now - timedelta(seconds=30)
    assert not domains.due(claim, now)
    claim.last_checked_at = now - timedelta(minutes=1)
    assert domains.due(claim, now)
    claim.created_at = now - timedelta(days=2)
    assert not domains.due(claim, now)
    claim.last_checked_at = now - timedelta(minutes=15)
    assert domains.due(claim, now)

    orphan = DomainClaim.objects.create(
        organization=team.org, hostname="gone.example.test", created_at=now - timedelta(hours=1)
    )
    DomainClaim.objects.filter(pk=claim.pk).update(last_checked_at=now)
    assert domains.check_pending() == {"checked": 0, "verified": 0, "released": 1}
    assert not DomainClaim.objects.filter(pk=orphan.pk).exists()


# --- a real DNS server -------------------------------------------------------------------------------
class DnsServer:
    """Debian's dnsmasq on a loopback port, authoritative for *.test from the records given."""

    def __init__(self, workdir: Path) -> None:
        self.port = unused_loopback_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, txt: dict[str, str] | None = None, addresses: dict[str, str] | None = None) -> None:
        """Serve the TXT records ``txt`` and the A/AAAA records ``addresses`` (name -> address,
        also for the names under it); every other name under .test does not exist."""
        self.stop()
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        args = [
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--local=/test/",
            *(f"--txt-record={name},{value}" for name, value in (txt or {}).items()),
            *(f"--address=/{name}/{address}" for name, address in (addresses or {}).items()),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self.answers, 10, "dnsmasq to answer")

    def answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.process and self.process.stderr
        res = dns.resolver.Resolver(configure=False)
        res.nameservers, res.nameserver_ports, res.lifetime = ["127.0.0.1"], {"127.0.0.1": self.port}, 0.5
        try:
            res.resolve("ready.test", "TXT")
        except dns.resolver.NXDOMAIN:
            return True
        except dns.exception.DNSException:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def dns_server(tmp_path: Path, settings: Any) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path)
    settings.STACKPORT_DNS_RESOLVERS = [f"127.0.0.1:{server.port}"]
    settings.STACKPORT_DNS_TIMEOUT_SECONDS = 3.0
    try:
        yield server
    finally:
        server.stop()


def test_a_domain_turns_verified_once_its_txt_record_is_served(
    team: Team,
    env: Environment,
    dns_server: DnsServer,
    queued_syncs: list[int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = client_for(team.developer)
    response = client.post(f"/environments/{env.pk}/domains/", {"hostname": HOST})
    assert response.status_code == 302
    domain = env.domains.get()
    claim = domain.claim

    dns_server.start()  # the customer has not created the record yet
    assert domains.check_pending()["verified"] == 0
    claim.refresh_from_db()
    assert claim.verified_at is None and claim.last_checked_at
    assert claim.check_error == f"No TXT record {claim.record_name} was found yet."
    html = page(client.get(f"/environments/{env.pk}/"))
    assert "pending" in html and claim.check_error in html and claim.token in html

    dns_server.start({claim.record_name: "not-the-token"})  # a wrong value
    response = client.post(f"/environments/{env.pk}/domains/{domain.pk}/check/", follow=True)
    assert "still pending" in page(response) and "does not hold the value" in page(response)

    dns_server.start({claim.record_name: claim.token})  # now it is there
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/environments/{env.pk}/domains/{domain.pk}/check/", follow=True)
    assert "is verified" in page(response)
    claim.refresh_from_db()
    assert claim.verified_at and claim.method == DomainClaim.Method.DNS and claim.check_error == ""
    assert queued_syncs == [env.pk]
    assert list(operations.routed_domains(env)) == [domain]
    assert AuditEvent.objects.filter(action="domain.verify", organization=team.org).exists()


def test_the_periodic_check_verifies_and_a_silent_server_is_explained(
    team: Team, env: Environment, dns_server: DnsServer, queued_syncs: list[int], settings: Any
) -> None:
    claim = add(env, team.developer).claim
    settings.STACKPORT_DNS_TIMEOUT_SECONDS = 0.5  # nothing listens yet
    assert domains.check_pending() == {"checked": 1, "verified": 0, "released": 0}
    claim.refresh_from_db()
    assert "did not answer" in claim.check_error or "could not answer" in claim.check_error

    settings.STACKPORT_DNS_TIMEOUT_SECONDS = 3.0
    dns_server.start({claim.record_name: claim.token})
    DomainClaim.objects.filter(pk=claim.pk).update(last_checked_at=timezone.now() - timedelta(minutes=2))
    assert domains.check_pending() == {"checked": 1, "verified": 1, "released": 0}
    claim.refresh_from_db()
    assert claim.verified_at and claim.method == DomainClaim.Method.DNS


# --- the HTTP proof: who may use it, and a server that takes its time ---------------------------------
class HttpServer:
    """A plain HTTP server on a loopback port (a thread): each connection's request is read,
    then ``answer(connection, request)`` writes what it likes (fast or slow)."""

    def __init__(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.requests.append(request)
                try:
                    self.answer(connection, request)
                except OSError:
                    pass  # the check gave up on us

    def trickle(self, connection: socket.socket, data: bytes) -> None:
        """Send ``data`` a byte at a time, slowly, until done or stopped."""
        for byte in data:
            if self.stopped.wait(0.3):
                return
            connection.sendall(bytes([byte]))

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def http_server(settings: Any) -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], HttpServer]]:
    """Start an ``HttpServer`` the HTTP proof fetches from (loopback allowed, its port)."""
    servers: list[HttpServer] = []

    def start(answer: Callable[[socket.socket, bytes], None]) -> HttpServer:
        server = HttpServer(answer)
        servers.append(server)
        settings.STACKPORT_DOMAIN_HTTP_PORT = server.port
        settings.STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK = True
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def token_answer(connection: socket.socket, request: bytes) -> None:
    """What the edge does on a pending name: the token from the path, as text."""
    token = request.split(b" ")[1].rsplit(b"/", 1)[1]
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(token), token)
    )


def test_the_http_proof_is_refused_on_names_another_organization_holds_or_held(
    team: Team,
    env: Environment,
    theirs: Environment,
    dns_server: DnsServer,
    http_server: Any,
    queued_syncs: list[int],
) -> None:
    server = http_server(token_answer)
    # Ours verified (by its TXT record), then removed: the claim goes, the name is remembered.
    mine = verified(add(env, team.developer, "corp.test"))
    lifecycle.remove_domain(domain=mine, actor=team.developer)
    assert not DomainClaim.objects.filter(hostname="corp.test").exists()

    dns_server.start(addresses={"corp.test": "127.0.0.1"})  # our DNS still points here
    for name in ("corp.test", "www.corp.test"):  # the name itself, and a name under it
        claim = add(theirs, team.outsider, name).claim
        assert domains.check_claim(claim) is False
        claim.refresh_from_db()
        assert claim.verified_at is None
        assert (
            "is or was used by another organization: only the DNS record proves control" in claim.check_error
        )
    assert server.requests == []  # refused before anything is fetched

    # The organization that held it may use the HTTP proof again; others still prove by DNS.
    lifecycle.remove_domain(domain=Domain.objects.get(hostname="corp.test"), actor=team.outsider)
    again = add(env, team.developer, "corp.test").claim
    assert domains.check_claim(again) is True
    again.refresh_from_db()
    assert again.method == DomainClaim.Method.HTTP
    claim = DomainClaim.objects.get(hostname="www.corp.test")
    dns_server.start(txt={claim.record_name: claim.token}, addresses={"corp.test": "127.0.0.1"})
    assert domains.check_claim(claim) is True
    claim.refresh_from_db()
    assert claim.method == DomainClaim.Method.DNS


def test_the_http_proof_is_refused_under_a_wildcard_record(
    team: Team,
    env: Environment,
    theirs: Environment,
    dns_server: DnsServer,
    http_server: Any,
    queued_syncs: list[int],
) -> None:
    server = http_server(token_answer)
    verified(add(env, team.developer, "shop.example.test"))
    dns_server.start(addresses={"example.test": "127.0.0.1"})  # *.example.test -> the platform
    claim = add(theirs, team.outsider, "login.example.test").claim
    assert domains.check_claim(claim) is False
    claim.refresh_from_db()
    assert claim.verified_at is None
    assert "every name under example.test points here (a wildcard record)" in claim.check_error
    assert "only the DNS record proves control" in claim.check_error
    assert server.requests == []

    # Only that name points here (no wildcard): the token served on it proves it.
    dns_server.start(addresses={"login.other.test": "127.0.0.1"})
    other = add(theirs, team.outsider, "login.other.test").claim
    assert domains.check_claim(other) is True
    other.refresh_from_db()
    assert other.method == DomainClaim.Method.HTTP
    assert len(server.requests) == 1 and b"Host: login.other.test:" in server.requests[0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("slow", ["headers", "body", "many headers"])
def test_a_slow_or_chatty_http_server_is_given_up_on(
    team: Team,
    theirs: Environment,
    dns_server: DnsServer,
    http_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    slow: str,
) -> None:
    monkeypatch.setattr(domains, "HTTP_DEADLINE_SECONDS", 1.5)

    def answer(connection: socket.socket, request: bytes) -> None:
        if slow == "headers":  # each byte well within a socket timeout, never done
            server.trickle(connection, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"x" * 1000)
        elif slow == "body":
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            server.trickle(connection, b"y" * 1000)
        else:
            connection.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Chatty: yes\r\n" * 100 + b"\r\n")
            server.stopped.wait(30)

    server = http_server(answer)
    dns_server.start(addresses={"slow.example.test": "127.0.0.1"})
    claim = add(theirs, team.outsider, "slow.example.test").claim
    assert domains.check_claim(claim) is False
    claim.refresh_from_db()
    assert claim.verified_at is None and len(server.requests) == 1
    if slow == "many headers":
        assert "slow.example.test answered HTTP with too many or too long headers." in claim.check_error
    else:
        assert "slow.example.test did not answer over HTTP within 1.5 seconds." in claim.check_error


def test_localhost_names_keep_plain_http_when_the_demo_says_so(settings: Any) -> None:
    """`make run` certifies *.apps.localhost with the edge's local CA only, which browsers do
    not trust: a redirect there would open every demo link on a warning."""
    from stacks.runtime import certificates

    names = {"env-1.apps.localhost", "localhost", "shop.example.test"}
    assert certificates.redirected(names) == names
    settings.STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES = False
    assert certificates.redirected(names) == {"shop.example.test"}
