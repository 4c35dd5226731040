"""HTTPS for a customer's domain in Chromium, on the real engine (docs/domains.md): the customer
adds the domain on the environment page, sees the TXT record, checks it once the test's DNS
server serves it, sees the certificate Pebble issued, and opens the site over plain HTTP, which
the edge sends on to HTTPS. The edge (HAProxy, the default, whose certificate the test's runs of
the certificate pass order as Celery beat's would, and Caddy), Pebble and the DNS server are
tests/stacks/test_https.py's."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import expect

from projects.models import Environment
from stacks.runtime.hosts import ensure_local_hosts
from tests.browser.conftest import CHROMIUM, chromium_args, sign_in_as
from tests.conftest import Team
from tests.stacks import conftest as stacks_conftest
from tests.stacks import test_https
from tests.stacks.conftest import fetch, wait_until
from tests.stacks.test_domains import DnsServer
from tests.stacks.test_https import HOST, HttpsEdge, is_active
from tests.stacks.test_lifecycle import deploy

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(1800)]
# Fixtures of those modules, used here too.
https_edge, tasks_now, dns_server = test_https.https_edge, test_https.tasks_now, test_https.dns_server
cleanup, engine_client = test_https.cleanup, test_https.engine_client
catalog, published_catalog = stacks_conftest.catalog, stacks_conftest.published_catalog


def spki_hash(pem: str) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes for a certificate."""
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    return base64.b64encode(
        hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()
    ).decode()


def test_a_customer_adds_a_domain_and_opens_it_over_https(
    live_server: Any,
    settings: Any,
    page: Any,
    playwright: Any,
    team: Team,
    https_edge: HttpsEdge,
    dns_server: DnsServer,
    catalog: None,
    cleanup: list[Environment],
    tasks_now: list[int],
) -> None:
    settings.STACKPORT_BASE_URL = live_server.url
    ensure_local_hosts("unix:///var/run/docker.sock")
    environment = deploy(team, cleanup, template="static-site")
    dns_server.start(addresses={HOST: "127.0.0.1", **https_edge.apps_records})
    sign_in_as(page, live_server.url, team.developer)

    page.goto(f"{live_server.url}/environments/{environment.pk}/")
    page.fill("#domain-form input[name=hostname]", HOST)
    page.click("#domain-form button[type=submit]")
    claim = environment.domains.get().claim
    domains = page.locator("#domains")
    expect(domains).to_contain_text("pending")
    expect(domains).to_contain_text(claim.record_name)
    expect(domains).to_contain_text(claim.token)

    dns_server.start(
        txt={claim.record_name: claim.token}, addresses={HOST: "127.0.0.1", **https_edge.apps_records}
    )
    page.click(f"button[aria-label='Check {HOST} now']")
    expect(page.locator("body")).to_contain_text(f"{HOST} is verified")
    wait_until(lambda: is_active(HOST), 120, f"a certificate for {HOST}")
    page.reload()
    certificate = page.locator("#domains li.certificate", has_text=HOST)
    expect(certificate).to_contain_text("HTTPS active")
    expect(certificate).to_contain_text("Pebble")

    # A browser that resolves the name to the edge and accepts Pebble's chain (the chain against
    # Pebble's root is verified in tests/stacks/test_https.py; Chromium would need an NSS store).
    intermediate = fetch(
        "GET", f"https://{https_edge.management}/intermediates/0", verify=str(https_edge.ca_root)
    )
    accepted = ",".join(spki_hash(pem) for pem in (intermediate.text, https_edge.pebble_root.read_text()))
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[*chromium_args(HOST), f"--ignore-certificate-errors-spki-list={accepted}"],
    )
    try:
        visitor = browser.new_page()
        response = visitor.goto(f"http://{HOST}:{https_edge.http_addr.rsplit(':', 1)[1]}/")
        assert response is not None and response.status < 500
        assert visitor.url == f"https://{HOST}:{https_edge.https_port}/"
    finally:
        browser.close()
