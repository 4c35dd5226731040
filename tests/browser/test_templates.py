"""Every pre-built stack does its real job, seen in Chromium (issue 16, item 3).

Each test deploys a template on the real engine through the service layer (as
tests/stacks/test_lifecycle.py does), then opens its pages in Chromium through the test's own
HAProxy edge (the product's router, as `make run` runs it): the browser resolves the apps domain (and the custom domain) to loopback and goes to
the edge's port, which is also the public port the stack is told about, so the Host header and
the addresses the apps print match what a visitor sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import expect

from projects.models import Environment
from stacks.runtime import lifecycle
from stacks.runtime.hosts import ensure_local_hosts
from stacks.runtime.operations import sync_routes_for
from tests.browser.conftest import CHROMIUM, chromium_args
from tests.conftest import verified
from tests.stacks import conftest as stacks_conftest
from tests.stacks import test_lifecycle
from tests.stacks.conftest import use_haproxy, wait_until
from tests.stacks.test_haproxy_edge import Edge
from tests.stacks.test_lifecycle import deploy
from tests.stacks.test_wordpress_media import png

pytestmark = [
    pytest.mark.browser,
    pytest.mark.engine,
    pytest.mark.slow,
    pytest.mark.django_db,
    pytest.mark.timeout(2400),
]

# Fixtures of the engine tests this file builds on.
haproxy, catalog, published_catalog = (
    stacks_conftest.haproxy,
    stacks_conftest.catalog,
    stacks_conftest.published_catalog,
)
engine_client, cleanup = test_lifecycle.engine_client, test_lifecycle.cleanup

DOMAIN = "blog.example.test"
PASSWORD = "a-long-Passw0rd-for-tests"


@pytest.fixture
def edge(settings: Any, haproxy: Edge, catalog: None) -> Edge:
    """test_lifecycle's ``stackport``, with the edge's own port as the public port: the port a
    browser puts in the Host header is the one the stacks (WordPress's address) are given."""
    ensure_local_hosts("unix:///var/run/docker.sock")
    return use_haproxy(settings, haproxy)  # the product's edge router, as `make run` runs it


@pytest.fixture
def visitor(playwright: Any, edge: Edge) -> Iterator[Any]:
    """A Chromium page that resolves the apps domain and the custom domain to the edge's host."""
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, args=chromium_args(f"*.{django_settings.STACKPORT_APPS_DOMAIN}", DOMAIN)
    )
    context = browser.new_context()
    # WordPress's admin on a loaded machine: generous, not a timing assertion.
    context.set_default_timeout(300_000)
    context.set_default_navigation_timeout(300_000)
    try:
        yield context.new_page()
    finally:
        browser.close()


def counter(page: Any, pattern: str) -> int:
    """The number ``pattern`` (one group) finds in the page's text."""
    text = page.locator("body").inner_text()
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text[:500]!r}"
    return int(found.group(1))


def reload_until(page: Any, condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    def check() -> bool:
        page.reload()
        return condition()

    wait_until(check, timeout, what)


def test_lamp_page_reads_its_database(
    team: Any, edge: Edge, cleanup: list[Environment], visitor: Any
) -> None:
    env = deploy(team, cleanup, name="Lamp", template="lamp")
    response = visitor.goto(env.public_url + "/")
    assert response is not None and response.status == 200
    expect(visitor.locator("h1")).to_have_text("Hello from LAMP on Stackport")
    # The count is a row count read back from MariaDB: each visit inserts one.
    first = counter(visitor, r"Database: connected, (\d+) visits")
    visitor.reload()
    assert counter(visitor, r"Database: connected, (\d+) visits") > first


def test_queue_sample_runs_a_job_submitted_from_the_page(
    team: Any, edge: Edge, cleanup: list[Environment], visitor: Any
) -> None:
    env = deploy(team, cleanup, name="Queue", template="python-queue")
    visitor.goto(env.public_url + "/")
    expect(visitor.locator("h1")).to_have_text("Hello from the queue sample on Stackport")
    expect(visitor.locator("body")).to_contain_text("0 waiting, 0 done.")
    # The web app puts the job in Redis; the worker takes it and records it in PostgreSQL.
    with visitor.expect_navigation():
        visitor.click("text=Add a job")
    reload_until(
        visitor,
        lambda: "0 waiting, 1 done." in visitor.locator("body").inner_text(),
        "the worker to run the job",
    )
    with visitor.expect_navigation():
        visitor.click("text=Add a job")
    reload_until(
        visitor, lambda: "0 waiting, 2 done." in visitor.locator("body").inner_text(), "a second job"
    )


def test_node_app_counts_in_redis(team: Any, edge: Edge, cleanup: list[Environment], visitor: Any) -> None:
    env = deploy(team, cleanup, name="Node", template="nodejs")
    visitor.goto(env.public_url + "/")
    expect(visitor.locator("h1")).to_have_text("Hello from Node.js on Stackport")
    first = counter(visitor, r"Cache: connected, (\d+) hits")
    visitor.reload()
    second = counter(visitor, r"Cache: connected, (\d+) hits")
    visitor.reload()
    assert first < second < counter(visitor, r"Cache: connected, (\d+) hits")


def test_python_web_app_uses_its_database_and_cache(
    team: Any, edge: Edge, cleanup: list[Environment], visitor: Any
) -> None:
    env = deploy(team, cleanup, name="Python", template="python-web")
    visitor.goto(env.public_url + "/")
    expect(visitor.locator("h1")).to_have_text("Hello from Python on Stackport")
    visits = counter(visitor, r"Database: connected, (\d+) visits")
    hits = counter(visitor, r"Cache: connected, (\d+) hits")
    visitor.reload()
    assert counter(visitor, r"Database: connected, (\d+) visits") > visits
    assert counter(visitor, r"Cache: connected, (\d+) hits") > hits


def test_wordpress_is_installed_a_post_with_an_image_is_published_and_read_on_both_addresses(
    team: Any, edge: Edge, cleanup: list[Environment], visitor: Any, tmp_path: Any
) -> None:
    env = deploy(team, cleanup, name="Blog", template="wordpress")
    site = env.public_url

    # Install through the form of wp-admin/install.php.
    visitor.goto(site + "/wp-admin/install.php")
    if visitor.locator("#language-continue").count():
        visitor.click("#language-continue")
    visitor.fill("#weblog_title", "Stackport blog")
    visitor.fill("#user_login", "editor")
    visitor.fill("#pass1", PASSWORD)
    visitor.fill("#admin_email", "editor@example.test")
    visitor.click("#submit")
    expect(visitor.locator("body")).to_contain_text("Success!")
    expect(visitor.locator("body")).to_contain_text("editor")

    # Log in.
    visitor.goto(site + "/wp-login.php")
    visitor.fill("#user_login", "editor")
    visitor.fill("#user_pass", PASSWORD)
    with visitor.expect_navigation():
        visitor.click("#wp-submit")
    assert "/wp-admin/" in visitor.url, (visitor.url, visitor.locator("body").inner_text()[:1000])
    expect(visitor.locator("#wpadminbar")).to_be_visible()

    # Upload an image with the browser uploader of wp-admin/media-new.php.
    image = tmp_path / "pixel.png"
    image.write_bytes(png(40, 30))
    visitor.goto(site + "/wp-admin/media-new.php?browser-uploader")
    visitor.set_input_files("#async-upload", str(image))
    with visitor.expect_navigation():
        visitor.click("#html-upload")
    assert "/wp-admin/upload.php" in visitor.url, (visitor.url, visitor.locator("body").inner_text()[:1000])

    # Publish a post showing it (by its path, so it is read on any of the site's addresses), from the logged-in page through WordPress's REST API (the
    # block editor's own path), with the nonce WordPress hands the logged-in browser.
    published = visitor.evaluate(
        """async () => {
            const nonce = await (await fetch('/wp-admin/admin-ajax.php?action=rest-nonce')).text();
            const headers = {'X-WP-Nonce': nonce, 'Content-Type': 'application/json'};
            const media = await (await fetch('/?rest_route=/wp/v2/media', {headers})).json();
            const img = media[0];
            const body = JSON.stringify({
                title: 'Hello from the browser',
                status: 'publish',
                featured_media: img.id,
                content: `<p>A post with a picture.</p><img src="${new URL(img.source_url).pathname}" alt="pixel" id="pixel">`,
            });
            const post = await (await fetch('/?rest_route=/wp/v2/posts', {method: 'POST', headers, body})).json();
            return {link: post.link, image: img.source_url};
        }"""
    )
    assert published["link"].startswith(site + "/"), published
    assert published["image"].startswith(site + "/wp-content/uploads/"), published

    def read_post(address: str, link: str) -> None:
        visitor.context.clear_cookies()  # an anonymous reader
        visitor.goto(link)
        assert visitor.url.startswith(address + "/"), visitor.url
        expect(visitor.locator("h1, .wp-block-post-title").first).to_contain_text("Hello from the browser")
        picture = visitor.locator("img#pixel")
        expect(picture).to_be_visible()
        # Its address is the one the post is read on (the uploads are served on both).
        source = visitor.evaluate("document.querySelector('img#pixel').currentSrc")
        assert source.startswith(address + "/wp-content/uploads/"), source
        # Really loaded from the uploads volume through the edge.
        wait_until(
            lambda: visitor.evaluate("document.querySelector('img#pixel').naturalWidth") == 40,
            60,
            "the image to load",
        )

    read_post(site, published["link"])

    # A verified custom domain: the same post on its address, links and media following it.
    verified(lifecycle.add_domain(environment=env, actor=team.developer, hostname=DOMAIN))
    sync_routes_for(env.pk)
    custom = f"http://{DOMAIN}:{django_settings.STACKPORT_EDGE_PUBLIC_PORT}"
    read_post(custom, published["link"].replace(site, custom))
    assert env.hostname not in visitor.content()
