"""HTTPS through the edge (docs/domains.md), on each edge router the portal can drive
(``STACKPORT_EDGE_ROUTER``): HAProxy, the default, whose certificates the portal orders in the
certificate pass (the minute's Celery beat task, run here by the test), and Caddy, which
obtains them itself. Either is the test's own (scripts/haproxy.sh, scripts/caddy.sh), with
Debian's Pebble (an ACME test CA on loopback, started by scripts/pebble.sh) that resolves names
through the test's dnsmasq (they point at 127.0.0.1) and validates on the test edge's ports.
Nothing leaves loopback. Also the HTTP-token proof of domain control."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from django.utils import timezone

from projects.models import AuditEvent, Environment
from stacks.backends.docker import COLORS, MAX_REPLICAS
from stacks.backends.edge import NOT_FOUND_BODY
from stacks.backends.edge_tls import CHALLENGE_PATH, HSTS_VALUE
from stacks.models import DomainClaim, EdgeCertificate
from stacks.runtime import certificates, domains, lifecycle, operations
from stacks.runtime.hosts import ensure_local_hosts
from stacks.tasks import check_certificates_task, sync_edge_task, sync_routes_task
from tests.conftest import Team, client_for
from tests.stacks import test_domains, test_lifecycle
from tests.stacks.conftest import CADDY_ROUTER, REPO_ROOT, fetch, unused_loopback_port, wait_until
from tests.stacks.test_domains import DnsServer
from tests.stacks.test_haproxy_edge import running_edge
from tests.stacks.test_lifecycle import deploy, run
from tests.stacks.test_project_pages import page
from tests.stacks.test_support import staff

pytestmark = [pytest.mark.slow, pytest.mark.django_db, pytest.mark.timeout(900)]
HOST = "shop.example.test"
HAPROXY_ROUTER = "stacks.runtime.edges.haproxy"
# On HAProxy the environments' own names get their certificates from Pebble too, which must
# resolve them: an apps domain the test's DNS server serves (Caddy certifies apps.localhost
# names from its local CA instead).
HAPROXY_APPS_DOMAIN = "apps.example.test"
# Fixtures of those modules, used here too.
dns_server, env, theirs = test_domains.dns_server, test_domains.env, test_domains.theirs
cleanup, engine_client = test_lifecycle.cleanup, test_lifecycle.engine_client


@dataclass
class HttpsEdge:
    router: str  # "haproxy" or "caddy"
    http_addr: str
    https_addr: str
    pebble_root: Path  # the root of the CA Pebble issues from (fetched at its start)
    management: str  # Pebble's management API (ip:port)
    ca_root: Path  # the certificate of Pebble's own HTTPS listeners
    # The A records the test's DNS server serves besides a test's own: the apps domain where
    # Pebble must reach the environments' names.
    apps_records: dict[str, str] = field(default_factory=dict)

    @property
    def https_port(self) -> int:
        return int(self.https_addr.rsplit(":", 1)[1])


def https_get(edge: HttpsEdge, host: str, path: str = "/") -> urllib3.BaseHTTPResponse:
    """GET over TLS to the edge for ``host`` (SNI and Host), verified against Pebble's root."""
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        edge.https_port,
        server_hostname=host,
        assert_hostname=host,
        ca_certs=str(edge.pebble_root),
        cert_reqs="CERT_REQUIRED",
        retries=False,
        timeout=10,
    )
    try:
        return pool.request("GET", path, headers={"Host": host}, redirect=False)
    finally:
        pool.close()


@contextmanager
def caddy_edge(tmp_path: Path, settings: Any) -> Iterator[tuple[str, str]]:
    """A Caddy of our own (scripts/caddy.sh) on free loopback ports, the settings pointing at
    it; yields its HTTP and HTTPS addresses; stopped by its pid at the end."""
    admin, http_addr, https_addr = (f"127.0.0.1:{unused_loopback_port()}" for _ in range(3))
    state = tmp_path / "caddy"
    caddy_env = {
        **os.environ,
        "STACKPORT_CADDY_ADMIN": admin,
        "STACKPORT_EDGE_LISTEN": http_addr,
        "STACKPORT_CADDY_DIR": str(state),
        "STACKPORT_CADDY_LOG": str(tmp_path / "caddy.log"),
    }
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "caddy.sh")], env=caddy_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    caddy_pid = int(next(state.glob("caddy-*.pid")).read_text())
    settings.STACKPORT_EDGE_ROUTER = CADDY_ROUTER
    settings.STACKPORT_EDGE_ADMIN_URL = f"http://{admin}"
    settings.STACKPORT_EDGE_LOG = str(tmp_path / "caddy.log")
    try:
        yield http_addr, https_addr
    finally:
        try:
            fetch("POST", f"http://{admin}/stop")
            wait_until(lambda: not Path(f"/proc/{caddy_pid}").exists(), 10, "caddy to exit")
        except (requests.RequestException, AssertionError):
            os.kill(caddy_pid, signal.SIGKILL)


@contextmanager
def haproxy_edge(settings: Any) -> Iterator[tuple[str, str]]:
    """An HAProxy of our own (tests/stacks/test_haproxy_edge.py's, scripts/haproxy.sh) with a
    pool as wide as the portal's routes (both colours of ``MAX_REPLICAS`` replicas), the
    settings pointing at it; yields its HTTP and HTTPS addresses; stopped at the end."""
    with running_edge(backends=6, slots=len(COLORS) * MAX_REPLICAS) as edge:
        settings.STACKPORT_EDGE_ROUTER = HAPROXY_ROUTER
        settings.STACKPORT_HAPROXY_DIR = str(edge.directory)
        settings.STACKPORT_APPS_DOMAIN = HAPROXY_APPS_DOMAIN
        yield f"{edge.host}:{edge.port}", f"{edge.host}:{edge.https_port}"


@pytest.fixture(params=["haproxy", "caddy"])
def https_edge(
    request: pytest.FixtureRequest, tmp_path: Path, settings: Any, dns_server: DnsServer
) -> Iterator[HttpsEdge]:
    """The edge router of the test's parameter (``haproxy_edge`` or ``caddy_edge``) and Pebble
    (scripts/pebble.sh) validating on its ports, on free loopback ports, the settings pointing
    at them; all stopped at the end. A test for one router only names it:
    ``@pytest.mark.parametrize("https_edge", ["caddy"], indirect=True)``."""
    router: str = request.param
    listen, management = (f"127.0.0.1:{unused_loopback_port()}" for _ in range(2))
    edge = haproxy_edge(settings) if router == "haproxy" else caddy_edge(tmp_path, settings)
    with edge as (http_addr, https_addr):
        pebble_env = {
            **os.environ,
            "STACKPORT_PEBBLE_DIR": str(tmp_path / "pebble"),
            "STACKPORT_PEBBLE_LISTEN": listen,
            "STACKPORT_PEBBLE_MANAGEMENT": management,
            "STACKPORT_PEBBLE_HTTP_PORT": http_addr.rsplit(":", 1)[1],
            "STACKPORT_PEBBLE_TLS_PORT": https_addr.rsplit(":", 1)[1],
            "STACKPORT_PEBBLE_DNS": f"127.0.0.1:{dns_server.port}",
        }
        pebble = subprocess.Popen(
            [str(REPO_ROOT / "scripts" / "pebble.sh")],
            env=pebble_env,
            stdout=(tmp_path / "pebble.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        ca_root = tmp_path / "pebble" / "cert.pem"

        def directory_answers() -> bool:
            assert pebble.poll() is None, (tmp_path / "pebble.log").read_text()
            try:
                return fetch("GET", f"https://{listen}/dir", verify=str(ca_root)).status_code == 200
            except (requests.RequestException, OSError):
                return False

        try:
            wait_until(directory_answers, 30, "pebble's directory")
            root = tmp_path / "pebble-root.pem"
            root.write_text(fetch("GET", f"https://{management}/roots/0", verify=str(ca_root)).text)
            settings.STACKPORT_EDGE_LISTEN = http_addr
            settings.STACKPORT_EDGE_PUBLIC_PORT = int(http_addr.rsplit(":", 1)[1])
            settings.STACKPORT_EDGE_HTTPS_LISTEN = https_addr
            settings.STACKPORT_EDGE_HTTPS_PUBLIC_PORT = int(https_addr.rsplit(":", 1)[1])
            settings.STACKPORT_ACME_DIRECTORY = f"https://{listen}/dir"
            settings.STACKPORT_ACME_CA_ROOT = str(ca_root)
            settings.STACKPORT_EDGE_PUBLIC_ADDRESSES = ["127.0.0.1"]
            settings.STACKPORT_DOMAIN_HTTP_PORT = int(http_addr.rsplit(":", 1)[1])
            settings.STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK = True
            apps_records = {HAPROXY_APPS_DOMAIN: "127.0.0.1"} if router == "haproxy" else {}
            yield HttpsEdge(router, http_addr, https_addr, root, management, ca_root, apps_records)
        finally:
            pebble.terminate()
            pebble.wait(10)


@pytest.fixture
def tasks_now(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Route and edge syncs run at once (as the worker would), instead of going to a broker;
    returns the environments whose routes were synced."""
    synced: list[int] = []

    def sync_routes(environment_id: int) -> None:
        synced.append(environment_id)
        operations.sync_routes_for(environment_id)

    monkeypatch.setattr(sync_routes_task, "delay", sync_routes)
    monkeypatch.setattr(sync_edge_task, "delay", certificates.sync_edge)
    return synced


def certificate_of(host: str) -> EdgeCertificate | None:
    """``host``'s row after a certificate pass: the task Celery beat runs every minute (on
    HAProxy it orders the names due, on either router it records what the edge serves)."""
    check_certificates_task()
    return EdgeCertificate.objects.filter(hostname=host).first()


def is_active(host: str) -> bool:
    cert = certificate_of(host)
    return cert is not None and cert.status == EdgeCertificate.Status.ACTIVE


# --- the whole path, with a stack on the real engine ---------------------------------------------------
@pytest.mark.engine
def test_a_verified_domain_gets_a_pebble_certificate_and_is_served_over_https(
    team: Team,
    https_edge: HttpsEdge,
    dns_server: DnsServer,
    catalog: None,
    cleanup: list[Environment],
    tasks_now: list[int],
    django_capture_on_commit_callbacks: Any,
) -> None:
    ensure_local_hosts("unix:///var/run/docker.sock")
    environment = deploy(team, cleanup, template="static-site")
    client = client_for(team.developer)
    dns_server.start(addresses={HOST: "127.0.0.1", **https_edge.apps_records})

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/environments/{environment.pk}/domains/", {"hostname": HOST})
    assert response.status_code == 302
    domain = environment.domains.get()
    claim = domain.claim
    html = page(client.get(f"/environments/{environment.pk}/"))
    section = html[html.index('id="domains"') : html.index('id="variables"')]
    assert "pending" in section and claim.record_name in section and claim.token in section
    assert CHALLENGE_PATH + claim.token in section  # the second way to prove it

    # The customer creates the TXT record; "Check now" verifies and routes the name.
    dns_server.start(
        txt={claim.record_name: claim.token}, addresses={HOST: "127.0.0.1", **https_edge.apps_records}
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/environments/{environment.pk}/domains/{domain.pk}/check/", follow=True)
    assert "is verified" in page(response)
    claim.refresh_from_db()
    assert claim.method == DomainClaim.Method.DNS and environment.pk in tasks_now

    # The certificate pass orders it (HAProxy; Caddy asks on its own), Pebble validates against
    # this edge, and the pass sees it served.
    wait_until(lambda: is_active(HOST), 120, f"a certificate for {HOST}")
    cert = EdgeCertificate.objects.get(hostname=HOST)
    assert cert.issuer.startswith("Pebble") and cert.not_after and cert.not_after > timezone.now()
    answer = https_get(https_edge, HOST)  # the chain verifies against Pebble's root
    assert answer.status < 500 and answer.data.decode() != NOT_FOUND_BODY
    assert "Strict-Transport-Security" not in answer.headers  # HSTS is opt-in

    # Plain HTTP is redirected to the same URL over HTTPS.
    redirect = fetch(
        "GET", f"http://{https_edge.http_addr}/a/b?c=d", headers={"Host": HOST}, allow_redirects=False
    )
    assert redirect.status_code == 308
    assert redirect.headers["Location"] == f"https://{HOST}:{https_edge.https_port}/a/b?c=d"

    # The page and the admin show the certificate's state and expiry.
    html = page(client.get(f"/environments/{environment.pk}/"))
    assert "HTTPS active" in html and f"expires {cert.not_after:%Y-%m-%d}" in html and cert.issuer in html
    admin_page = page(client_for(staff("Support")).get("/admin/stacks/edgecertificate/"))
    assert HOST in admin_page and "Active" in admin_page

    # HSTS, opted into on the page: sent over HTTPS only.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/environments/{environment.pk}/domains/{domain.pk}/hsts/", {"hsts": "on"})
    assert response.status_code == 302
    assert https_get(https_edge, HOST).headers["Strict-Transport-Security"] == HSTS_VALUE
    assert AuditEvent.objects.filter(action="domain.hsts", organization=team.org).exists()

    # The environment's own name has a certificate too (Pebble's on HAProxy, Caddy's local CA
    # for apps.localhost on Caddy): a redeploy's site check follows the edge's redirect and
    # checks the site over HTTPS.
    wait_until(lambda: is_active(environment.hostname), 60, f"a certificate for {environment.hostname}")
    redirect = fetch(
        "GET",
        f"http://{https_edge.http_addr}/",
        headers={"Host": environment.hostname},
        allow_redirects=False,
    )
    assert redirect.status_code == 308
    redeployed = run(lifecycle.redeploy(environment=environment, actor=team.developer))
    assert f"{environment.hostname} answers 200 through the edge" in str(redeployed.log)

    # Removing the domain removes its route and its certificate.
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/environments/{environment.pk}/domains/{domain.pk}/remove/")
    assert certificate_of(HOST) is None
    with operations.edge() as router:
        assert router.served_certificate(HOST) is None
    gone = fetch("GET", f"http://{https_edge.http_addr}/", headers={"Host": HOST}, allow_redirects=False)
    assert gone.status_code == 404 and gone.text == NOT_FOUND_BODY


# --- the HTTP-token proof of control ---------------------------------------------------------------------
def test_the_http_token_proves_control_once_the_name_points_at_the_edge(
    team: Team,
    env: Environment,
    theirs: Environment,
    https_edge: HttpsEdge,
    dns_server: DnsServer,
    tasks_now: list[int],
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    name = "blog.example.test"
    monkeypatch.setattr(operations, "sync_routes_for", lambda environment_id: False)  # no stack runs
    dns_server.start(addresses={name: "127.0.0.1"})
    with django_capture_on_commit_callbacks(execute=True):
        domain = lifecycle.add_domain(environment=env, actor=team.developer, hostname=name, path_prefix="")
    claim = domain.claim
    path = CHALLENGE_PATH + claim.token

    # The edge answers the token on that name only.
    served = fetch("GET", f"http://{https_edge.http_addr}{path}", headers={"Host": name})
    assert served.status_code == 200 and served.text == claim.token
    other = fetch("GET", f"http://{https_edge.http_addr}{path}", headers={"Host": "www.example.test"})
    assert other.status_code == 404

    # While another organization waits on the name, only the DNS record can tell them apart.
    with django_capture_on_commit_callbacks(execute=True):
        squatter = lifecycle.add_domain(
            environment=theirs, actor=team.outsider, hostname=name, path_prefix=""
        )
    assert domains.check_claim(claim) is False
    claim.refresh_from_db()
    assert "another organization also waits" in claim.check_error
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.remove_domain(domain=squatter, actor=team.outsider)

    # Not a public address, and loopback not allowed (production): refused, nothing fetched.
    settings.STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK = False
    assert domains.check_http(claim) == f"{name} resolves only to addresses that are not public (127.0.0.1)."
    settings.STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK = True

    # "Check now" on the page: the TXT record is missing, the HTTP token is there.
    client = client_for(team.developer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/environments/{env.pk}/domains/{domain.pk}/check/", follow=True)
    assert "is verified" in page(response)
    claim.refresh_from_db()
    assert claim.verified_at and claim.method == DomainClaim.Method.HTTP
    # Verified: the challenge is no longer answered.
    assert fetch("GET", f"http://{https_edge.http_addr}{path}", headers={"Host": name}).status_code == 404


# --- a certificate that does not come --------------------------------------------------------------------
@pytest.mark.parametrize("https_edge", ["haproxy"], indirect=True)
def test_a_name_that_does_not_resolve_gets_no_certificate_and_is_explained(
    team: Team,
    env: Environment,
    https_edge: HttpsEdge,
    dns_server: DnsServer,
    tasks_now: list[int],
) -> None:
    name = "gone.example.test"  # dnsmasq knows nothing of it: NXDOMAIN, for Pebble too
    dns_server.start(addresses=https_edge.apps_records)
    domain = lifecycle.add_domain(environment=env, actor=team.developer, hostname=name, path_prefix="")
    assert domains.verify_claim(domain.claim, method=DomainClaim.Method.SUPPORT)
    with operations.edge() as router:
        router.set_route(env.key, [env.hostname, name], ["127.0.0.1:9"])

    # The pass orders both names: the environment's own is issued; the other's order fails, and
    # as the CA has answered, the name is failed at once (no grace), the reason in our words.
    report = check_certificates_task()
    assert report["ordered"] == 1, report
    own = EdgeCertificate.objects.get(hostname=env.hostname)
    assert own.status == EdgeCertificate.Status.ACTIVE and own.issuer.startswith("Pebble"), own.error
    cert = EdgeCertificate.objects.get(hostname=name)
    assert cert.status == EdgeCertificate.Status.FAILED and cert.ordered_at is not None
    assert cert.error.startswith(f"DNS does not point here: {name} does not exist in DNS."), cert.error
    # Not redirected to HTTPS (no certificate): plain HTTP still reaches the route; the name
    # with one is redirected.
    answer = fetch("GET", f"http://{https_edge.http_addr}/", headers={"Host": name}, allow_redirects=False)
    assert answer.status_code != 308
    answer = fetch(
        "GET", f"http://{https_edge.http_addr}/", headers={"Host": env.hostname}, allow_redirects=False
    )
    assert answer.status_code == 308


@pytest.mark.parametrize("https_edge", ["caddy"], indirect=True)
def test_on_caddy_a_name_that_does_not_resolve_is_pending_then_explained(
    team: Team,
    env: Environment,
    https_edge: HttpsEdge,
    dns_server: DnsServer,
    tasks_now: list[int],
) -> None:
    name = "gone.example.test"  # dnsmasq knows nothing of it: NXDOMAIN, for Pebble too
    dns_server.start()
    domain = lifecycle.add_domain(environment=env, actor=team.developer, hostname=name, path_prefix="")
    assert domains.verify_claim(domain.claim, method=DomainClaim.Method.SUPPORT)
    with operations.edge() as router:
        router.set_route(env.key, [env.hostname, name], ["127.0.0.1:9"])
        assert router.ensure_https() is True
        assert router.ensure_https() is False  # written once

    # Caddy asks on its own and keeps trying: pending, with no reason, for ISSUE_GRACE.
    cert = certificate_of(name)
    assert cert is not None and cert.status == EdgeCertificate.Status.PENDING and cert.error == ""
    # The environment's own name (apps.localhost: no public CA certifies it) gets Caddy's local CA.
    wait_until(lambda: is_active(env.hostname), 60, f"a certificate for {env.hostname}")
    assert EdgeCertificate.objects.get(hostname=env.hostname).issuer.startswith("Caddy Local Authority")

    EdgeCertificate.objects.filter(hostname=name).update(created_at=timezone.now() - timedelta(minutes=10))
    cert = certificate_of(name)
    assert cert is not None and cert.status == EdgeCertificate.Status.FAILED
    assert cert.error.startswith(f"DNS does not point here: {name} does not exist in DNS.")
    # Not redirected to HTTPS (no certificate): plain HTTP still reaches the route.
    answer = fetch("GET", f"http://{https_edge.http_addr}/", headers={"Host": name}, allow_redirects=False)
    assert answer.status_code != 308


# --- our words for the CA's errors (no edge needed) -------------------------------------------------------
@pytest.mark.parametrize(
    "error, expected",
    [
        (
            "HTTP 429 urn:ietf:params:acme:error:rateLimited - too many certificates",
            certificates.RATE_LIMITED,
        ),
        ("HTTP 400 urn:ietf:params:acme:error:dns - NXDOMAIN looking up A", "DNS does not point here"),
        ("HTTP 403 urn:ietf:params:acme:error:unauthorized - connection refused", "DNS does not point here"),
        ("HTTP 403 urn:ietf:params:acme:error:caa - CAA record forbids", certificates.CAA_REFUSED),
        ("HTTP 500 urn:ietf:params:acme:error:serverInternal - oops", "refused it (HTTP 500"),
        ("", certificates.NOT_YET),
    ],
)
def test_the_cas_errors_are_told_in_our_words(error: str, expected: str) -> None:
    assert expected in certificates.translate(error)


def test_the_last_error_for_a_name_is_read_from_the_edges_log(tmp_path: Path, settings: Any) -> None:
    log = tmp_path / "caddy.log"
    lines = [
        '{"level":"error","logger":"tls.obtain","msg":"could not get certificate from issuer",'
        '"identifier":"a.example.test","error":"HTTP 400 urn:ietf:params:acme:error:dns - first"}',
        "not json a.example.test error",
        '{"level":"error","logger":"tls.obtain","identifier":"b.example.test","error":"other name"}',
        '{"level":"error","logger":"tls.obtain","identifier":"a.example.test",'
        '"error":"HTTP 429 urn:ietf:params:acme:error:rateLimited - later"}',
    ]
    log.write_text("\n".join(lines) + "\n")
    settings.STACKPORT_EDGE_LOG = str(log)
    assert certificates.last_acme_error("a.example.test").endswith("rateLimited - later")
    assert certificates.last_acme_error("c.example.test") == ""
    settings.STACKPORT_EDGE_LOG = str(tmp_path / "missing.log")
    assert certificates.last_acme_error("a.example.test") == ""
