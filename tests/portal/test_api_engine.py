"""The issue's check, through the JSON API with a token, on the real engine and a real edge (HAProxy):
WordPress from its template, a domain, scale, a PHP upgrade, rollback and destroy."""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest
import requests
from django.test import Client

from projects import services
from projects.models import Environment
from stacks.runtime.operations import run_operation, sync_routes_for
from tests.conftest import Team, verified
from tests.stacks import conftest as stacks_fixtures
from tests.stacks import test_lifecycle as lifecycle_fixtures
from tests.stacks.test_haproxy_edge import Edge
from tests.stacks.test_lifecycle import containers

# The stacks tests' fixtures (an HAProxy of our own, the published catalog, cleanup), reused.
haproxy = stacks_fixtures.haproxy
published_catalog = stacks_fixtures.published_catalog
catalog = stacks_fixtures.catalog
stackport = lifecycle_fixtures.stackport
engine_client = lifecycle_fixtures.engine_client
cleanup = lifecycle_fixtures.cleanup

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1200)]


class Api:
    def __init__(self, secret: str) -> None:
        self.client = Client(headers={"authorization": f"Bearer {secret}"})

    def get(self, path: str) -> Any:
        response = self.client.get(f"/api{path}")
        assert response.status_code == 200, (path, response.content)
        return response.json()

    def post(self, path: str, body: Any = None, status: int = 202) -> Any:
        response = self.client.post(
            f"/api{path}", data=json.dumps(body or {}), content_type="application/json"
        )
        assert response.status_code == status, (path, response.content)
        return response.json()

    def run(self, operation: dict[str, Any]) -> dict[str, Any]:
        """What the Celery worker does with the queued operation, then its state via the API."""
        run_operation(operation["id"])
        done = self.get(f"/operations/{operation['id']}")
        assert done["status"] == "succeeded", f"{done['kind']} failed: {done['error']}\n{done['log']}"
        assert done["progress"] == 100 and all(s["status"] in ("done", "skipped") for s in done["steps"])
        return done


def fetch(edge: Edge, host: str, path: str = "/") -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.get(f"{edge.edge_url}{path}", headers={"Host": host}, timeout=20)


def running(client: docker.DockerClient, env: Environment, component: str) -> list[Any]:
    return [
        c
        for c in containers(client, env)
        if c.status == "running" and c.labels.get("org.stackport.component") == component
    ]


def test_wordpress_through_the_api_from_create_to_destroy(
    team: Team, stackport: Edge, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    _token, secret = services.create_api_token(user=team.admin, name="issue check", organization=team.org)
    api = Api(secret)

    created = api.post(
        "/projects",
        {"organization": team.org.pk, "name": "Blog", "region": "eu-central", "template": "wordpress"},
    )
    env = Environment.objects.get(pk=created["environment"])
    cleanup.append(env)
    api.run(created["operation"])
    detail = api.get(f"/environments/{env.pk}")
    assert detail["status"] == "running" and detail["release"] == 1
    page = fetch(stackport, env.hostname, "/wp-admin/install.php")
    assert page.status_code == 200 and "WordPress" in page.text, page.text[:300]

    # A domain of the customer's own: routed by the edge (the task does this after commit).
    added = api.post(f"/environments/{env.pk}/domains", {"hostname": "blog.example.test"}, status=201)
    assert (
        added["status"] == "pending" and added["record"]["name"] == "_stackport-challenge.blog.example.test"
    )
    verified(env.domains.get())  # as if its TXT record had been seen (tests/stacks/test_domains.py)
    sync_routes_for(env.pk)
    page = fetch(stackport, "blog.example.test", "/wp-admin/install.php")
    assert page.status_code == 200 and "WordPress" in page.text
    assert fetch(stackport, "other.example.test").status_code != 200

    api.run(api.post(f"/environments/{env.pk}/scale", {"component": "web", "replicas": 2}))
    assert len(running(engine_client, env, "web")) == 2
    assert (
        next(c for c in api.get(f"/environments/{env.pk}")["components"] if c["name"] == "web")["replicas"]
        == 2
    )
    for _ in range(6):
        assert fetch(stackport, env.hostname, "/wp-admin/install.php").status_code == 200

    # The template runs the newest PHP; move to the older one first, so the upgrade is 8.2 -> 8.4.
    def php() -> dict[str, Any]:
        return next(c for c in api.get(f"/environments/{env.pk}")["components"] if c["name"] == "php")

    newest = php()["version"]
    older = [
        v["version"]
        for c in api.get("/catalog/components")
        if c["code"] == "php-fpm"
        for v in c["versions"]
        if v["status"] in ("current", "deprecated") and v["version"] != newest
    ][-1]
    api.run(api.post(f"/environments/{env.pk}/upgrade", {"component": "php", "version": older}))
    on_older = php()
    assert on_older["version"] == older and on_older["upgrade_available"] and newest in on_older["upgrades"]
    before_upgrade = api.get(f"/environments/{env.pk}")["release"]
    api.run(api.post(f"/environments/{env.pk}/upgrade", {"component": "php", "version": newest}))
    assert {c.labels["org.stackport.version"] for c in running(engine_client, env, "php")} == {newest}
    assert php()["version"] == newest and not php()["upgrade_available"]
    assert fetch(stackport, env.hostname, "/wp-admin/install.php").status_code == 200

    api.run(api.post(f"/environments/{env.pk}/rollback", {"release": before_upgrade}))
    assert api.get(f"/environments/{env.pk}")["release"] == before_upgrade
    assert {c.labels["org.stackport.version"] for c in running(engine_client, env, "php")} == {older}
    assert len(running(engine_client, env, "web")) == 2
    page = fetch(stackport, "blog.example.test", "/wp-admin/install.php")
    assert page.status_code == 200 and "WordPress" in page.text

    api.post(f"/environments/{env.pk}/destroy", {"confirmation": "blog"}, status=400)
    api.run(api.post(f"/environments/{env.pk}/destroy", {"confirmation": "Blog"}))
    assert api.get(f"/environments/{env.pk}")["status"] == "destroyed"
    assert containers(engine_client, env) == []
    assert fetch(stackport, env.hostname).status_code != 200
    assert fetch(stackport, "blog.example.test").status_code != 200
