"""The JSON API without an engine: tokens, access rules, every endpoint's happy path and
clear 4xx answers. Operations are queued on commit, so none runs here."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from projects import services
from projects.models import ApiToken, AuditEvent, Environment, Organization, Project, User
from stacks.backends.memory import MemoryBackend
from stacks.models import Domain, Operation, Release, ResourceSampleRow, StackComponent, Variable
from stacks.runtime import lifecycle
from tests.conftest import Team, add_memory_host, client_for, verified

pytestmark = pytest.mark.django_db
SCRIPT = '<script>alert("x")</script>'


class Api:
    """A test client speaking JSON with one token."""

    def __init__(self, secret: str | None) -> None:
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        self.client = Client(headers=headers)

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(f"/api{path}", params)

    def send(self, method: str, path: str, body: Any = None) -> Any:
        return getattr(self.client, method)(
            f"/api{path}",
            data=json.dumps(body) if body is not None else None,
            content_type="application/json",
        )

    def post(self, path: str, body: Any = None) -> Any:
        return self.send("post", path, body)


def api_for(user: User, **kwargs: Any) -> Api:
    _token, secret = services.create_api_token(user=user, name="test", **kwargs)
    return Api(secret)


@pytest.fixture
def env(team: Team, offered_catalog: None) -> Environment:
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="lamp"
    )
    # As if the deploy had run: the release is current, nothing is active.
    Operation.objects.filter(environment=environment).update(status="succeeded", finished_at=timezone.now())
    Environment.objects.filter(pk=environment.pk).update(
        status="running", current_release=environment.releases.get()
    )
    environment.releases.update(ran_at=timezone.now())
    environment.refresh_from_db()
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
    Operation.objects.filter(environment=environment).update(status="succeeded")
    Environment.objects.filter(pk=environment.pk).update(current_release=environment.releases.get())
    verified(
        lifecycle.add_domain(environment=environment, actor=team.outsider, hostname="theirs.example.test")
    )
    return environment


def finish(env: Environment) -> None:
    """As if the active operation had run to the end (its release ran; the test's
    environment keeps release 1 current)."""
    active = Operation.objects.filter(environment=env, status__in=["queued", "running"])
    Release.objects.filter(pk__in=active.values("release")).update(ran_at=timezone.now())
    active.update(status="succeeded")


def snapshot() -> tuple[Any, ...]:
    models = [Organization, Project, Environment, Operation, Release, StackComponent, Domain, Variable]
    return (
        *(list(m.objects.order_by("pk").values()) for m in models),
        list(ApiToken.objects.order_by("pk").values("pk", "name", "revoked_at", "read_only")),
        AuditEvent.objects.count(),
    )


# --- authentication ------------------------------------------------------------------------------
def test_missing_invalid_revoked_and_expired_tokens_answer_401(team: Team) -> None:
    token, secret = services.create_api_token(user=team.developer, name="t", expires_in_days=1)
    assert Api(secret).get("/organizations").status_code == 200
    for bad in (None, "nonsense", secret + "x"):
        response = Api(bad).get("/organizations")
        assert response.status_code == 401 and "token" in response.json()["detail"]
        assert response["WWW-Authenticate"] == "Bearer"
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Api(secret).get("/organizations").status_code == 401
    ApiToken.objects.filter(pk=token.pk).update(expires_at=None)
    services.revoke_api_token(token=token, actor=team.developer)
    assert Api(secret).get("/organizations").status_code == 401


def test_the_session_cookie_is_not_accepted(team: Team) -> None:
    browser = client_for(team.owner)
    assert browser.get("/api/organizations").status_code == 401
    response = browser.post("/api/projects", data={}, content_type="application/json")
    assert response.status_code == 401


def test_a_read_only_token_reads_and_refuses_every_change(team: Team, env: Environment) -> None:
    api = api_for(team.owner, read_only=True)
    assert api.get(f"/environments/{env.pk}").status_code == 200
    before = snapshot()
    for method, path in (
        ("post", f"/environments/{env.pk}/scale"),
        ("put", f"/environments/{env.pk}/variables"),
        ("delete", f"/environments/{env.pk}/variables/X"),
        ("post", "/projects"),
        ("patch", f"/organizations/{team.org.pk}"),
    ):
        response = api.send(method, path, {"component": "web", "replicas": 2})
        assert response.status_code == 403, (method, path)
        assert response.json()["detail"] == "This token is read-only."
    assert snapshot() == before


def test_a_token_limited_to_one_organization_sees_only_it(team: Team, env: Environment) -> None:
    other = services.create_organization(name="Second", owner=team.developer)
    mine = lifecycle.create_project(
        organization=other,
        actor=team.developer,
        name="Elsewhere",
        region="eu-central",
        template="static-site",
    )
    api = api_for(team.developer, organization=other)
    assert [o["id"] for o in api.get("/organizations").json()] == [other.pk]
    assert [p["id"] for p in api.get("/projects").json()] == [mine.project_id]
    assert api.get(f"/organizations/{team.org.pk}").status_code == 404
    assert api.get(f"/environments/{env.pk}").status_code == 404
    before = snapshot()
    assert api.post(f"/environments/{env.pk}/stop").status_code == 404
    response = api.post("/projects", {"organization": team.org.pk, "name": "X", "region": "eu-central"})
    assert response.status_code == 404
    assert snapshot() == before
    assert api.get(f"/environments/{mine.pk}").status_code == 200


# --- access rules ----------------------------------------------------------------------------------
def test_another_organizations_ids_answer_404_and_change_nothing(
    team: Team, env: Environment, theirs: Environment
) -> None:
    api = api_for(team.owner)
    op = theirs.operations.first()
    domain = theirs.domains.get()
    before = snapshot()
    calls = [
        ("get", f"/organizations/{team.outsider_org.pk}", None),
        ("get", f"/organizations/{team.outsider_org.pk}/members", None),
        ("get", f"/organizations/{team.outsider_org.pk}/audit", None),
        ("patch", f"/organizations/{team.outsider_org.pk}", {"name": "Mine"}),
        ("get", f"/projects/{theirs.project_id}", None),
        ("get", f"/environments/{theirs.pk}", None),
        ("get", f"/environments/{theirs.pk}/releases", None),
        ("get", f"/environments/{theirs.pk}/operations", None),
        ("get", f"/environments/{theirs.pk}/domains", None),
        ("get", f"/environments/{theirs.pk}/variables", None),
        ("get", f"/environments/{theirs.pk}/samples", None),
        ("get", f"/environments/{theirs.pk}/components/web/logs", None),
        ("get", f"/operations/{op.pk}", None),
        ("post", f"/environments/{theirs.pk}/scale", {"component": "web", "replicas": 2}),
        ("post", f"/environments/{theirs.pk}/upgrade", {"component": "php", "version": "8.4"}),
        ("post", f"/environments/{theirs.pk}/rollback", {"release": 1}),
        ("post", f"/environments/{theirs.pk}/stop", None),
        ("post", f"/environments/{theirs.pk}/start", None),
        ("post", f"/environments/{theirs.pk}/destroy", {"confirmation": "Theirs"}),
        ("post", f"/environments/{theirs.pk}/domains", {"hostname": "x.example.test"}),
        ("delete", f"/environments/{theirs.pk}/domains/{domain.pk}", None),
        ("put", f"/environments/{theirs.pk}/variables", {"name": "A", "value": "b"}),
        ("delete", f"/environments/{theirs.pk}/variables/A", None),
        ("post", f"/environments/{theirs.pk}/git", {"url": "https://example.test/x.git"}),
        ("post", f"/environments/{theirs.pk}/scale", {"nonsense": True}),  # bad body: still 404
        ("post", f"/environments/{theirs.pk}/content", None),  # no file: still 404
        ("post", "/projects", {"organization": team.outsider_org.pk, "name": "X", "region": "eu-central"}),
    ]
    for method, path, body in calls:
        response = api.send(method, path, body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.json() == {"detail": "Not found.", "field": None}
    # Our own domain in their environment's URL: 404 too.
    mine = lifecycle.add_domain(environment=env, actor=team.owner, hostname="mine.example.test")
    before = snapshot()
    assert api.send("delete", f"/environments/{theirs.pk}/domains/{mine.pk}").status_code == 404
    assert api.send("delete", f"/environments/{env.pk}/domains/{domain.pk}").status_code == 404
    assert snapshot() == before


def test_a_viewer_reads_but_may_not_write(team: Team, env: Environment) -> None:
    api = api_for(team.viewer)
    assert api.get(f"/environments/{env.pk}").status_code == 200
    before = snapshot()
    for method, path, body in (
        ("post", f"/environments/{env.pk}/scale", {"component": "web", "replicas": 2}),
        ("post", f"/environments/{env.pk}/stop", None),
        ("put", f"/environments/{env.pk}/variables", {"name": "A", "value": "b"}),
        ("post", f"/environments/{env.pk}/domains", {"hostname": "v.example.test"}),
        (
            "post",
            "/projects",
            {"organization": team.org.pk, "name": "V", "region": "eu-central", "template": "lamp"},
        ),
        ("get", f"/organizations/{team.org.pk}/audit", None),
    ):
        response = api.send(method, path, body)
        assert response.status_code == 403, (method, path)
        assert "role" in response.json()["detail"]
    assert snapshot() == before


def test_only_admins_destroy(team: Team, env: Environment) -> None:
    response = api_for(team.developer).post(f"/environments/{env.pk}/destroy", {"confirmation": "Shop"})
    assert response.status_code == 403
    assert not env.operations.filter(kind="destroy").exists()


# --- happy paths ---------------------------------------------------------------------------------
def test_organizations_members_and_audit(team: Team, env: Environment) -> None:
    api = api_for(team.admin)
    (org,) = api.get("/organizations").json()
    assert org["id"] == team.org.pk and org["role"] == "admin"
    assert api.get(f"/organizations/{team.org.pk}").json()["name"] == team.org.name
    members = api.get(f"/organizations/{team.org.pk}/members").json()
    assert {m["email"] for m in members} == {
        f"{r}@acme.test" for r in ("owner", "admin", "developer", "viewer")
    }
    audit = api.get(f"/organizations/{team.org.pk}/audit", q="project").json()
    assert audit["count"] >= 1 and audit["items"][0]["action"] == "project.create"
    response = api.send("patch", f"/organizations/{team.org.pk}", {"name": "Renamed Co"})
    assert response.status_code == 200 and response.json()["name"] == "Renamed Co"


def test_catalog(team: Team, offered_catalog: None) -> None:
    api = api_for(team.viewer)
    regions = api.get("/catalog/regions").json()
    assert any(r["code"] == "eu-central" and r["kernel_lines"] for r in regions)
    assert any(f["code"] == "php" for f in api.get("/catalog/frameworks").json())
    sizes = api.get("/catalog/sizes").json()
    assert {"small", "medium"} <= {s["code"] for s in sizes}
    components = {c["code"]: c for c in api.get("/catalog/components").json()}
    versions = {v["version"]: v for v in components["php-fpm"]["versions"]}
    assert {"8.2", "8.4"} <= set(versions) and {"status", "eol", "end_of_life", "offered"} <= set(
        versions["8.2"]
    )
    templates = {t["code"]: t for t in api.get("/catalog/templates").json()}
    assert "wordpress" in templates and templates["lamp"]["components"]


def test_create_from_a_template_and_read_it_back(team: Team, offered_catalog: None) -> None:
    api = api_for(team.developer)
    response = api.post(
        "/projects", {"organization": team.org.pk, "name": SCRIPT, "region": "eu-central", "template": "lamp"}
    )
    assert response.status_code == 202, response.content
    created = response.json()
    assert created["project"]["name"] == SCRIPT and created["operation"]["kind"] == "deploy"
    assert created["operation"]["status"] == "queued"
    assert response["Content-Type"].startswith("application/json") and b"<script>" not in response.content
    project = api.get(f"/projects/{created['project']['id']}").json()
    assert project["environments"][0]["id"] == created["environment"]
    assert [p["name"] for p in api.get("/projects").json()] == [SCRIPT]
    env = api.get(f"/environments/{created['environment']}").json()
    assert env["project_name"] == SCRIPT and env["status"] == "new" and env["active_operation"]
    assert {c["name"] for c in env["components"]} >= {"web", "php", "db"}


def test_create_an_assembled_stack_with_defaults(team: Team, offered_catalog: None) -> None:
    api = api_for(team.developer)
    body = {
        "organization": team.org.pk,
        "name": "Assembled",
        "region": "eu-central",
        "components": [{"name": "web", "component": "nginx", "public": True}],
    }
    response = api.post("/projects", body)
    assert response.status_code == 202, response.content
    env = Environment.objects.get(pk=response.json()["environment"])
    (sc,) = env.components.all()
    assert sc.component.code == "nginx" and sc.size == sc.component.default_size and sc.replicas == 1


def test_create_refuses_what_the_wizard_refuses(team: Team, offered_catalog: None) -> None:
    """Deprecated versions and incompatible assemblies: the service refuses them for the
    API as for the wizard (same words, the field they belong to), and writes nothing."""
    api = api_for(team.developer)
    before = snapshot()
    web = {"name": "web", "component": "nginx", "public": True}
    cases = [
        (
            [{**web, "version": "1.22"}],
            "nginx 1.22 is deprecated: new stacks get current versions only. "
            "Choose a current version of nginx. Its end of life is 2028-06-30: stacks on it should "
            "upgrade before then.",
            "version",
        ),
        (
            [{"name": "php", "component": "php-fpm"}],
            "PHP-FPM does not answer HTTP itself. Add one of: Apache httpd, nginx.",
            "component",
        ),
        (
            [{**web, "component": "apache"}, {"name": "app", "component": "nodejs"}],
            "Apache httpd works with PHP-FPM, not with Node.js.",
            "component",
        ),
    ]
    for rows, detail, field in cases:
        body = {"organization": team.org.pk, "name": "Mine", "region": "eu-central", "components": rows}
        response = api.post("/projects", body)
        assert response.status_code == 400, response.content
        assert response.json() == {"detail": detail, "field": field}
    assert snapshot() == before
    # The catalog says the same: deprecated versions are not offered.
    components = {c["code"]: c for c in api.get("/catalog/components").json()}
    offered = {v["version"]: v["offered"] for v in components["nginx"]["versions"]}
    assert offered == {"1.22": False, "1.26": True}


def test_environment_detail_shows_versions_upgrades_and_eol(team: Team, env: Environment) -> None:
    lifecycle.upgrade(environment=env, actor=team.developer, component="php", version="8.2")
    finish(env)
    data = api_for(team.viewer).get(f"/environments/{env.pk}").json()
    php = next(c for c in data["components"] if c["name"] == "php")
    assert php["version"] == "8.2" and php["upgrade_available"] and "8.4" in php["upgrades"]
    assert {"eol", "end_of_life", "eol_soon", "version_status", "replicas", "size"} <= set(php)
    assert data["url"].startswith("http://") and data["release"] == 1


def test_scale_upgrade_rollback_stop_start_and_destroy(team: Team, env: Environment) -> None:
    api = api_for(team.admin)
    response = api.post(
        f"/environments/{env.pk}/scale", {"component": "web", "replicas": 2, "size": "medium"}
    )
    assert response.status_code == 202 and response.json()["kind"] == "scale"
    web = env.components.get(name="web")
    assert web.replicas == 2 and web.size.code == "medium"
    assert api.post(f"/environments/{env.pk}/scale", {"component": "web", "replicas": 3}).status_code == 409
    finish(env)
    response = api.post(f"/environments/{env.pk}/upgrade", {"component": "php", "version": "8.2"})
    assert response.status_code == 202, response.content
    finish(env)
    releases = api.get(f"/environments/{env.pk}/releases").json()
    assert [r["number"] for r in releases["items"]] == [3, 2, 1] and releases["items"][2]["current"]
    response = api.post(f"/environments/{env.pk}/rollback", {"release": 2})
    assert response.status_code == 202 and response.json()["kind"] == "rollback"
    finish(env)
    assert api.post(f"/environments/{env.pk}/stop").json()["kind"] == "stop"
    finish(env)
    assert api.post(f"/environments/{env.pk}/start").json()["kind"] == "start"
    finish(env)
    wrong = api.post(f"/environments/{env.pk}/destroy", {"confirmation": "shop"})
    assert wrong.status_code == 400 and wrong.json() == {
        "detail": "Type the project's name exactly to confirm.",
        "field": "confirmation",
    }
    response = api.post(f"/environments/{env.pk}/destroy", {"confirmation": "Shop"})
    assert response.status_code == 202 and response.json()["kind"] == "destroy"
    assert Environment.objects.get(pk=env.pk).status == "destroying"
    ops = api.get(f"/environments/{env.pk}/operations").json()
    assert [o["kind"] for o in ops["items"]][:2] == ["destroy", "start"]
    detail = api.get(f"/operations/{ops['items'][0]['id']}").json()
    assert {"status", "progress", "steps", "log", "error", "params"} <= set(detail)


def test_domains(team: Team, env: Environment, theirs: Environment) -> None:
    api = api_for(team.developer)
    response = api.post(f"/environments/{env.pk}/domains", {"hostname": "Shop.Example.TEST"})
    assert response.status_code == 201 and response.json()["hostname"] == "shop.example.test"
    duplicate = api.post(f"/environments/{env.pk}/domains", {"hostname": "theirs.example.test"})
    assert duplicate.status_code == 409 and duplicate.json()["field"] == "hostname"
    bad = api.post(f"/environments/{env.pk}/domains", {"hostname": "*.example.test"})
    assert bad.status_code == 400 and bad.json()["field"] == "hostname"
    (listed,) = api.get(f"/environments/{env.pk}/domains").json()
    assert api.send("delete", f"/environments/{env.pk}/domains/{listed['id']}").status_code == 204
    assert not env.domains.exists()


def test_variables_never_show_secret_values(team: Team, env: Environment) -> None:
    api = api_for(team.developer)
    response = api.send("put", f"/environments/{env.pk}/variables", {"name": "GREETING", "value": SCRIPT})
    assert response.status_code == 200 and response.json()["value"] == SCRIPT
    response = api.send(
        "put",
        f"/environments/{env.pk}/variables",
        {"name": "API_KEY", "value": "s3cr3t-value", "secret": True},
    )
    assert response.status_code == 200 and response.json()["value"] is None
    listed = api.get(f"/environments/{env.pk}/variables")
    assert b"s3cr3t-value" not in listed.content
    by_name = {v["name"]: v for v in listed.json()}
    assert by_name["API_KEY"]["secret"] and by_name["API_KEY"]["value"] is None
    assert all(v["value"] is None for v in by_name.values() if v["generated"])
    assert api.send("delete", f"/environments/{env.pk}/variables/GREETING").status_code == 204
    assert api.send("delete", f"/environments/{env.pk}/variables/GREETING").status_code == 404
    # The secret is in no response or audit row of this test.
    assert "s3cr3t-value" not in str(list(AuditEvent.objects.values("data")))


def test_bad_input_answers_4xx_with_a_clear_message(team: Team, env: Environment) -> None:
    api = api_for(team.admin)
    before = snapshot()
    cases = [
        (
            "post",
            "/projects",
            {"organization": team.org.pk, "name": "X", "region": "mars-1", "template": "lamp"},
            400,
            "region",
        ),
        ("post", f"/environments/{env.pk}/scale", {"component": "web", "replicas": 99}, 400, "replicas"),
        ("post", f"/environments/{env.pk}/scale", {"component": "web", "replicas": "many"}, 422, "replicas"),
        ("post", f"/environments/{env.pk}/scale", {"component": "nope", "replicas": 1}, 404, "component"),
        ("post", f"/environments/{env.pk}/upgrade", {"component": "php", "version": "1.0"}, 400, "version"),
        ("put", f"/environments/{env.pk}/variables", {"name": "A B", "value": "x"}, 400, "name"),
        ("put", f"/environments/{env.pk}/variables", {"name": "A", "value": "x\x00y"}, 400, "value"),
        ("put", f"/environments/{env.pk}/variables", {"value": "x"}, 422, "name"),
        ("post", f"/environments/{env.pk}/git", {"url": "ftp://x/y", "branch": "main"}, 400, None),
        (
            "post",
            f"/environments/{env.pk}/git",
            {"url": "file:///work/main", "branch": "main"},
            400,
            "git_url",
        ),
        (
            "post",
            f"/environments/{env.pk}/git",
            {"url": "http://127.0.0.1:2019/", "branch": "main"},
            400,
            "git_url",
        ),
        (
            "post",
            f"/environments/{env.pk}/git",
            {"url": "http://[::1]:6379/", "branch": "main"},
            400,
            "git_url",
        ),
        (
            "post",
            f"/environments/{env.pk}/git",
            {"url": "http://2130706433/", "branch": "main"},
            400,
            "git_url",
        ),
        (
            "post",
            f"/environments/{env.pk}/git",
            {"url": "http://169.254.169.254/", "branch": "main"},
            400,
            "git_url",
        ),
        ("post", f"/environments/{env.pk}/rollback", {"release": 99}, 404, "release"),
    ]
    for method, path, body, status, field in cases:
        response = api.send(method, path, body)
        assert response.status_code == status, (path, body, response.content)
        data = response.json()
        assert isinstance(data["detail"], str) and data["detail"], data
        if field:
            assert data["field"] == field, (path, body, data)
    not_json = api.client.post(f"/api/environments/{env.pk}/scale", data="{", content_type="application/json")
    assert not_json.status_code in (400, 422) and isinstance(not_json.json()["detail"], str)
    assert snapshot() == before


def test_upload_and_git_deploys(team: Team, env: Environment) -> None:
    api = api_for(team.developer)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"<h1>hello</h1>"
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    buffer.name = "site.tar.gz"
    response = api.client.post(f"/api/environments/{env.pk}/content", {"archive": buffer})
    assert response.status_code == 202, response.content
    release = env.releases.order_by("-number").first()
    assert release.source == "upload" and release.content_files == 1
    finish(env)
    response = api.post(
        f"/environments/{env.pk}/git", {"url": "https://user:pw@git.example.test/site.git", "branch": "main"}
    )
    assert response.status_code == 202, response.content
    detail = api.get(f"/operations/{response.json()['id']}")
    assert b"pw@" not in detail.content and b"_encrypted" not in detail.content


def test_logs_and_samples(team: Team, env: Environment, memory_backend: type[MemoryBackend]) -> None:
    # Two replicas of web with 5 and 3 lines; the backend gives the last 3 of each.
    memory_backend.seed_logs(env.key, "web", [f"line {i}" for i in range(5)], replica=0)
    memory_backend.seed_logs(env.key, "web", [f"line {i}" for i in range(5, 8)], replica=1)
    memory_backend.seed_logs(env.key, "db", ["not web"])

    api = api_for(team.viewer)
    # Never deployed: no logs at all.
    assert api.get(f"/environments/{env.pk}/components/web/logs").json()["lines"] == []
    # Placed on a host that is not there (no engine here): a clear 503.
    Environment.objects.filter(pk=env.pk).update(backend_state={"host": "gone"})
    unavailable = api.get(f"/environments/{env.pk}/components/web/logs")
    assert unavailable.status_code == 503 and "logs" in unavailable.json()["detail"]
    add_memory_host(env, "gone")  # the host is there: its replicas' lines are read
    response = api.get(f"/environments/{env.pk}/components/web/logs", lines=3)
    assert response.status_code == 200 and response.json()["lines"] == ["line 5", "line 6", "line 7"]
    assert api.get(f"/environments/{env.pk}/components/nope/logs").status_code == 404
    assert api.get(f"/environments/{env.pk}/components/web/logs", lines=0).status_code == 422
    ResourceSampleRow.objects.create(environment=env, component="web", cpu_percent=12.5, memory_bytes=1024)
    ResourceSampleRow.objects.create(
        environment=env,
        component="web",
        cpu_percent=1,
        memory_bytes=1,
        taken_at=timezone.now() - timedelta(hours=2),
    )
    (sample,) = api.get(f"/environments/{env.pk}/samples", component="web").json()
    assert sample["cpu_percent"] == 12.5 and sample["memory_bytes"] == 1024


# --- schema and docs -------------------------------------------------------------------------------
def test_the_openapi_schema_describes_the_api() -> None:
    response = Client().get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["version"] == "1"
    assert "/api/environments/{environment_id}/scale" in schema["paths"]
    assert any(s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values())


def test_ninja_is_installed_so_the_docs_use_its_bundled_files() -> None:
    from django.apps import apps

    assert apps.is_installed("ninja"), 'add "ninja" to INSTALLED_APPS (the docs page needs its static files)'


def _with_ninja() -> Any:
    from django.conf import settings

    apps_list = list(settings.INSTALLED_APPS)
    return override_settings(INSTALLED_APPS=apps_list if "ninja" in apps_list else [*apps_list, "ninja"])


def test_the_docs_page_loads_only_from_self() -> None:
    from django.contrib.staticfiles import finders

    with _with_ninja():
        response = Client().get("/api/docs")
        assert response.status_code == 200
        html = response.content.decode()
        csp = response["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "cdn" not in html.lower() and "http://" not in html and "https://" not in html
        assert "/static/ninja/swagger-ui-bundle.js" in html and "/static/ninja/swagger-ui-init.js" in html
        # No inline script that would need 'unsafe-inline': only src= scripts and JSON data.
        for tag in html.split("<script")[1:]:
            head = tag.split(">", 1)[0]
            assert "src=" in head or 'type="application/json"' in head, head
        assert finders.find("ninja/swagger-ui-bundle.js")
