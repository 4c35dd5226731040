"""The portal on the HAProxy edge (``STACKPORT_EDGE_ROUTER = "stacks.runtime.edges.haproxy"``),
on the real engine: the operations route through its runtime API, a blue/green redeploy and a
scale-down drain the replicas that go before they stop (no GET and no POST fails), and the
certificate pass orders each routed name's certificate from Pebble, serves it and redirects
HTTP to HTTPS.

The HAProxy is the one of tests/stacks/test_haproxy_edge.py (scripts/haproxy.sh), with a pool
as wide as the portal's routes (both colours of ``MAX_REPLICAS`` replicas); Pebble and its
dnsmasq are those of tests/stacks/test_haproxy_acme.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from projects.models import Environment
from stacks.backends.docker import COLORS, MAX_REPLICAS
from stacks.backends.haproxy import HAProxyRouter
from stacks.models import EdgeCertificate
from stacks.runtime import certificates, lifecycle
from stacks.runtime.hosts import ensure_local_hosts
from stacks.runtime.operations import sync_routes_for
from tests.conftest import verified
from tests.stacks import test_haproxy_acme, test_lifecycle
from tests.stacks.conftest import fetch, use_haproxy, wait_until
from tests.stacks.test_haproxy_acme import Pebble, _verified_handshake
from tests.stacks.test_haproxy_edge import Edge, running_edge
from tests.stacks.test_lifecycle import deploy, run
from tests.stacks.test_operations import zip_archive
from tests.stacks.test_variable_restart import APP, PYTHON, KeepAliveLoad

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]

engine_client, cleanup, pebble = (
    test_lifecycle.engine_client,
    test_lifecycle.cleanup,
    test_haproxy_acme.pebble,
)
APPS = "apps.haproxy.test"  # resolved to loopback by the dnsmasq Pebble asks
SHOP = "shop.haproxy.test"


@pytest.fixture
def edge() -> Iterator[Edge]:
    """An HAProxy whose backends hold a route of the portal (both colours' slots)."""
    with running_edge(backends=6, slots=len(COLORS) * MAX_REPLICAS) as running:
        yield running


@pytest.fixture
def stackport(settings: Any, edge: Edge, catalog: None) -> Edge:
    use_haproxy(settings, edge)
    settings.STACKPORT_APPS_DOMAIN = APPS
    ensure_local_hosts("unix:///var/run/docker.sock")
    return edge


def test_a_redeploy_drains_the_old_replicas_and_no_get_or_post_fails(
    team: Any, stackport: Edge, cleanup: list[Environment]
) -> None:
    env = deploy(team, cleanup, name="Greeter", components=PYTHON)
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="hello")
    archive = zip_archive({"app.py": APP})
    run(lifecycle.deploy_content(environment=env, actor=team.developer, archive=archive, filename="app.zip"))
    status, text = stackport.get(env.hostname)
    assert status == 200 and text.startswith("greeting hello from "), (status, text)

    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="bonjour")
    gets, posts = KeepAliveLoad(stackport, env), KeepAliveLoad(stackport, env, method="POST")  # type: ignore[arg-type]
    with gets, posts:
        started = time.monotonic()
        op = run(lifecycle.redeploy(environment=env, actor=team.developer))
        finished = time.monotonic()

    assert "draining 2 public replica(s) on the edge" in op.log, op.log[-3000:]
    assert gets.failures == [] and posts.failures == [], (
        gets.failures[:5],
        posts.failures[:5],
        op.log[-3000:],
    )
    for load in (gets, posts):
        after = [text for at, text in load.answers if at > finished]
        assert len(load.answers) > 50 and after, len(load.answers)
        assert all(text.startswith("greeting bonjour ") for text in after), after[:5]
    print(
        f"\n{len(gets.answers)} GETs and {len(posts.answers)} POSTs in {finished - started:.1f} s of "
        "redeploy (+ 3 s around it), 0 failed"
    )

    # Scaled down under load: the replicas that go are drained first too (the new count is a
    # new spec: a blue/green replacement).
    gets, posts = KeepAliveLoad(stackport, env), KeepAliveLoad(stackport, env, method="POST")  # type: ignore[arg-type]
    with gets, posts:
        op = run(lifecycle.scale(environment=env, actor=team.developer, component="app", replicas=1))
    assert "public replica(s) on the edge" in op.log, op.log[-3000:]
    assert gets.failures == [] and posts.failures == [], (
        gets.failures[:5],
        posts.failures[:5],
        op.log[-3000:],
    )
    assert len(gets.answers) > 50 and len(posts.answers) > 50

    # The edge crashes and is started again: the route is back from the saved server state,
    # on the container's own address (not only its port), before any reconcile pass.
    pid = stackport.pid()
    os.kill(pid, signal.SIGKILL)
    with HAProxyRouter(stackport.directory) as router:
        wait_until(lambda: not router.ping(), 10, "haproxy to die")
    stackport.script()
    status, text = stackport.get(env.hostname)
    assert status == 200 and text.startswith("greeting bonjour "), (status, text)


def test_the_portal_orders_serves_and_redirects_certificates_of_routed_names(
    team: Any, stackport: Edge, pebble: Pebble, settings: Any, cleanup: list[Environment]
) -> None:
    settings.STACKPORT_ACME_DIRECTORY = pebble.directory_url
    settings.STACKPORT_ACME_CA_ROOT = str(pebble.ca_root)
    env = deploy(team, cleanup, template="static-site")
    verified(lifecycle.add_domain(environment=env, actor=team.developer, hostname=SHOP))
    sync_routes_for(env.pk)

    report = certificates.check_certificates()
    assert report["ordered"] == 2, report
    for host in (env.hostname, SHOP):
        cert = EdgeCertificate.objects.get(hostname=host)
        assert cert.status == EdgeCertificate.Status.ACTIVE, (cert.status, cert.error)
        assert "Pebble" in cert.issuer and cert.ordered_at is not None
        assert host in _verified_handshake(stackport, host, pebble.issuing_root)
    # Served over HTTPS, and plain HTTP goes there (the pass wrote the redirects).
    response = fetch(
        "GET", f"http://{stackport.host}:{stackport.port}/", headers={"Host": SHOP}, allow_redirects=False
    )
    assert response.status_code == 308
    assert response.headers["Location"] == f"https://{SHOP}:{stackport.https_port}/"
    with certificates.operations.edge() as router:
        status, body = router.get_over_https(SHOP)
    assert status == 200 and "Your static site is live" in body

    # Nothing is ordered again while the certificates are far from their end.
    assert certificates.check_certificates()["ordered"] == 0

    # A name that does not point here: the order fails, its reason is kept, it is not retried
    # at once.
    verified(lifecycle.add_domain(environment=env, actor=team.developer, hostname="elsewhere.test"))
    sync_routes_for(env.pk)
    assert certificates.check_certificates()["ordered"] == 0
    failed = EdgeCertificate.objects.get(hostname="elsewhere.test")
    assert failed.status == EdgeCertificate.Status.FAILED and failed.ordered_at is not None
    assert failed.error.startswith("DNS does not point here: elsewhere.test"), failed.error
    ordered_at = failed.ordered_at
    certificates.check_certificates()
    failed.refresh_from_db()
    assert failed.ordered_at == ordered_at  # tried again ORDER_RETRY later

    # A removed domain: its certificate is no longer served (nor its row kept).
    lifecycle.remove_domain(domain=env.domains.get(hostname=SHOP), actor=team.developer)
    sync_routes_for(env.pk)
    assert certificates.check_certificates()["unserved"] == 1
    with certificates.operations.edge() as router:
        assert SHOP not in router.certificates()  # type: ignore[attr-defined]
    assert not EdgeCertificate.objects.filter(hostname=SHOP).exists()
