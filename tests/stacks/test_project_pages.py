"""Project and environment pages and their actions, without an engine: operations stay
queued (they run after commit, and these tests do not commit), so a test finishes one by
hand where the next action needs the environment idle."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from projects.models import AuditEvent, Environment, EnvironmentStatus
from stacks.models import (
    ComponentVersion,
    Domain,
    Operation,
    OperationStatus,
    Release,
    StackComponent,
    Variable,
    VersionStatus,
)
from stacks.runtime import lifecycle
from tests.conftest import Team, client_for, place, verified

pytestmark = pytest.mark.django_db
PAYLOAD = "<script>alert(\"x\")</script> & 'q'"
STATIC = [
    {"name": "web", "component": "nginx", "version": "1.22", "size": "small", "replicas": 1, "public": True}
]


def static_stack(**kwargs: Any) -> Environment:
    """A stack on nginx 1.22, made while 1.22 was still current: new stacks get current
    versions only, and a stack keeps a version deprecated since."""
    old = ComponentVersion.objects.filter(component__code="nginx", version="1.22")
    status = old.get().status
    old.update(status=VersionStatus.CURRENT)
    try:
        return lifecycle.create_project(components=STATIC, **kwargs)
    finally:
        old.update(status=status)


def finish(environment: Environment, status: str = OperationStatus.SUCCEEDED) -> None:
    """What a worker would leave after the environment's active operation."""
    op = environment.operations.filter(status__in=[OperationStatus.QUEUED, OperationStatus.RUNNING]).first()
    if op is None:
        return
    steps = [{"name": "Start the containers", "status": "done"}, {"name": "Route traffic", "status": "done"}]
    Operation.objects.filter(pk=op.pk).update(status=status, steps=steps, finished_at=timezone.now())
    fields: dict[str, Any] = {"status": EnvironmentStatus.RUNNING}
    place(environment, "local")
    if op.release_id:
        fields["current_release_id"] = op.release_id
        if status == OperationStatus.SUCCEEDED:
            Release.objects.filter(pk=op.release_id).update(ran_at=timezone.now())
    if op.kind == "destroy":
        fields = {"status": EnvironmentStatus.DESTROYED}
    Environment.objects.filter(pk=environment.pk).update(**fields)
    environment.refresh_from_db()


@pytest.fixture
def env(team: Team, offered_catalog: None) -> Environment:
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Shop", region="eu-central", template="lamp"
    )
    finish(environment)
    return environment


@pytest.fixture
def static_env(team: Team, offered_catalog: None) -> Environment:
    environment = static_stack(
        organization=team.org, actor=team.developer, name="Static", region="eu-central"
    )
    finish(environment)
    return environment


@pytest.fixture
def theirs(team: Team, offered_catalog: None) -> Environment:
    environment = static_stack(
        organization=team.outsider_org, actor=team.outsider, name="Theirs", region="eu-central"
    )
    finish(environment)
    verified(
        lifecycle.add_domain(environment=environment, actor=team.outsider, hostname="theirs.example.test")
    )
    return environment


def state() -> tuple[Any, ...]:
    """Rows a refused request must leave as they were."""
    return (
        list(Operation.objects.order_by("pk").values_list("pk", "status")),
        list(Release.objects.order_by("pk").values_list("pk", "spec")),
        list(StackComponent.objects.order_by("pk").values_list("pk", "replicas", "size_id", "version_id")),
        list(Domain.objects.order_by("pk").values_list("pk", "hostname")),
        list(Variable.objects.order_by("pk").values_list("pk", "name", "value", "updated_at")),
        list(
            Environment.objects.order_by("pk").values_list(
                "pk", "status", "desired_running", "current_release"
            )
        ),
        AuditEvent.objects.exclude(action__startswith="account.").count(),
    )


def page(response: Any) -> str:
    return response.content.decode()


# --- pages ---------------------------------------------------------------------------------------
def test_environment_page_shows_components_versions_hosts_and_actions(team: Team, env: Environment) -> None:
    response = client_for(team.developer).get(f"/environments/{env.pk}/")
    assert response.status_code == 200
    html = page(response)
    for name in ("web", "php", "db"):
        assert f'id="component-{name}"' in html
    assert "Apache" in html and "PHP-FPM" in html and "MariaDB" in html
    assert 'id="host-count"' not in html and "on 1 host" not in html  # host names: staff only
    assert "Running" in html and env.public_url in html
    assert f"/environments/{env.pk}/scale/" in html and f"/environments/{env.pk}/domains/" in html
    assert f"/environments/{env.pk}/components/web/logs/" in html
    assert f"/environments/{env.pk}/components/web/metrics/" in html
    # Developers act, but only admins destroy.
    assert "destroy-form" not in html and f"/environments/{env.pk}/stop/" in html


def test_upgrade_available_and_end_of_life_badges_with_one_click_upgrade(
    team: Team, static_env: Environment
) -> None:
    html = page(client_for(team.developer).get(f"/environments/{static_env.pk}/"))
    assert "upgrade available: 1.26" in html and "end of life on 2028-06-30" in html
    assert 'name="version" value="1.26"' in html
    response = client_for(team.developer).post(
        f"/environments/{static_env.pk}/upgrade/", {"component": "web", "version": "1.26"}
    )
    assert response.status_code == 302 and response["Location"] == f"/environments/{static_env.pk}/"
    op = static_env.operations.get(status=OperationStatus.QUEUED)
    assert op.kind == "upgrade" and op.params["to"] == "1.26"
    assert StackComponent.objects.get(environment=static_env).version.version == "1.26"


def test_stateful_component_offers_only_upgrades_its_data_can_take(team: Team, offered_catalog: None) -> None:
    from stacks.models import ComponentVersion

    rows = [{"name": "db", "component": "mariadb", "version": "10.11", "size": "small", "replicas": 1}]
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Data", region="eu-central", components=rows
    )
    finish(environment)
    client = client_for(team.developer)
    # MariaDB 10.11 -> 11.8 has a tested migration (dump and restore), and says what it does
    # before the customer upgrades.
    html = page(client.get(f"/environments/{environment.pk}/"))
    assert "upgrade available: 11.8" in html
    assert "writes made during the copy are not carried over" in html
    ComponentVersion.objects.filter(component__code="mariadb", version="11.8").update(migration={})
    assert "upgrade available" not in page(client.get(f"/environments/{environment.pk}/"))


def test_viewer_sees_the_page_without_action_buttons(team: Team, env: Environment) -> None:
    html = page(client_for(team.viewer).get(f"/environments/{env.pk}/"))
    assert 'id="component-web"' in html
    for action in ("scale", "domains", "variables", "stop", "destroy", "rollback"):
        assert f"/environments/{env.pk}/{action}/" not in html, action


def test_admin_sees_the_typed_destroy_confirmation(team: Team, env: Environment) -> None:
    html = page(client_for(team.admin).get(f"/environments/{env.pk}/"))
    assert 'id="destroy-form"' in html and "Type <code>Shop</code> to confirm" in html


def test_project_page_shows_its_first_live_environment(team: Team, env: Environment) -> None:
    response = client_for(team.viewer).get(f"/projects/{env.project_id}/")
    assert response.status_code == 200 and 'id="component-web"' in page(response)


def test_project_page_lists_several_environments(team: Team, env: Environment) -> None:
    staging = Environment.objects.create(project=env.project, name="staging", kernel=env.kernel)
    html = page(client_for(team.viewer).get(f"/projects/{env.project_id}/"))
    assert f'href="/environments/{staging.pk}/"' in html and "staging" in html


def test_pages_answer_404_for_another_organizations_objects(
    team: Team, env: Environment, theirs: Environment
) -> None:
    client = client_for(team.owner)
    op = theirs.operations.first()
    for url in (f"/environments/{theirs.pk}/", f"/projects/{theirs.project_id}/", f"/operations/{op.pk}/"):
        assert client.get(url).status_code == 404, url
        assert client.get(url, headers={"HX-Request": "true"}).status_code == 404, url


def test_pages_need_a_sign_in(env: Environment) -> None:
    from django.test import Client

    response = Client().get(f"/environments/{env.pk}/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_pages_refuse_post(team: Team, env: Environment) -> None:
    client = client_for(team.owner)
    op = env.operations.first()
    for url in (f"/environments/{env.pk}/", f"/projects/{env.project_id}/", f"/operations/{op.pk}/"):
        assert client.post(url).status_code == 405, url


# --- actions: access ----------------------------------------------------------------------------
ACTIONS = [
    ("scale/", {"component": "web", "replicas": "2"}),
    ("upgrade/", {"component": "web", "version": "1.26"}),
    ("rollback/", {"release": "1"}),
    ("domains/", {"hostname": "shop.example.test"}),
    ("variables/", {"name": "GREETING", "value": "hi"}),
    ("variables/delete/", {"name": "GREETING"}),
    ("content/git/", {"git_url": "https://git.example.test/shop.git", "branch": "main"}),
    ("stop/", {}),
    ("start/", {}),
    ("destroy/", {"confirmation": "Theirs"}),
]


@pytest.mark.parametrize(("action", "data"), ACTIONS)
def test_actions_answer_404_for_another_organization_and_change_nothing(
    team: Team, theirs: Environment, action: str, data: dict[str, str]
) -> None:
    before = state()
    response = client_for(team.owner).post(f"/environments/{theirs.pk}/{action}", data)
    assert response.status_code == 404
    assert state() == before


def test_removing_another_organizations_domain_is_404(
    team: Team, env: Environment, theirs: Environment
) -> None:
    domain = theirs.domains.get()
    before = state()
    client = client_for(team.owner)
    assert client.post(f"/environments/{theirs.pk}/domains/{domain.pk}/remove/").status_code == 404
    # Their domain through our environment's URL: not ours either.
    assert client.post(f"/environments/{env.pk}/domains/{domain.pk}/remove/").status_code == 404
    assert state() == before


@pytest.mark.parametrize(("action", "data"), ACTIONS)
def test_viewers_cannot_act(team: Team, static_env: Environment, action: str, data: dict[str, str]) -> None:
    before = state()
    response = client_for(team.viewer).post(f"/environments/{static_env.pk}/{action}", data)
    assert response.status_code == 403
    assert state() == before


@pytest.mark.parametrize(("action", "_data"), ACTIONS)
def test_actions_are_post_only(team: Team, static_env: Environment, action: str, _data: Any) -> None:
    assert client_for(team.owner).get(f"/environments/{static_env.pk}/{action}").status_code == 405


def test_developers_cannot_destroy(team: Team, static_env: Environment) -> None:
    before = state()
    response = client_for(team.developer).post(
        f"/environments/{static_env.pk}/destroy/", {"confirmation": "Static"}
    )
    assert response.status_code == 403
    assert state() == before


# --- actions: happy paths and refusals -----------------------------------------------------------
def test_scale_replicas_up_and_size(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "web", "replicas": "2"})
    assert response.status_code == 302
    assert StackComponent.objects.get(environment=static_env).replicas == 2
    finish(static_env)
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "web", "size": "medium"})
    assert response.status_code == 302
    assert StackComponent.objects.get(environment=static_env).size.code == "medium"
    follow = client.get(f"/environments/{static_env.pk}/")
    assert "Scaling web." in page(follow)


def test_scale_refusal_is_shown_next_to_the_component_and_writes_nothing(
    team: Team, env: Environment
) -> None:
    before = state()
    response = client_for(team.developer).post(
        f"/environments/{env.pk}/scale/", {"component": "db", "replicas": "2"}
    )
    assert response.status_code == 400
    html = page(response)
    assert 'id="error-db"' in html and "keeps data and runs as a single replica" in html
    assert state() == before


def test_scale_over_the_limit_and_of_an_unknown_component(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    before = state()
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "web", "replicas": "11"})
    assert response.status_code == 400 and "Replicas must be a whole number from 0 to 10" in page(response)
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "nope", "replicas": "1"})
    assert response.status_code == 404
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "web"})
    assert response.status_code == 400 and "Give a number of replicas or a size." in page(response)
    assert state() == before


def test_a_second_operation_while_one_runs_is_409(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    assert (
        client.post(
            f"/environments/{static_env.pk}/scale/", {"component": "web", "replicas": "2"}
        ).status_code
        == 302
    )
    before = state()
    response = client.post(f"/environments/{static_env.pk}/scale/", {"component": "web", "replicas": "3"})
    assert response.status_code == 409 and "Another operation is still running" in page(response)
    assert state() == before


def test_upgrade_to_a_version_that_does_not_exist(team: Team, static_env: Environment) -> None:
    before = state()
    response = client_for(team.developer).post(
        f"/environments/{static_env.pk}/upgrade/", {"component": "web", "version": "9.9"}
    )
    assert response.status_code == 400 and "has no version &#x27;9.9&#x27;" in page(response)
    assert 'id="error-web"' in page(response)
    assert state() == before


def test_rollback_to_an_earlier_release(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    client.post(f"/environments/{static_env.pk}/upgrade/", {"component": "web", "version": "1.26"})
    finish(static_env)
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert "Roll back to 1" in html and "Roll back to 2" not in html
    # A confirmation first (no JavaScript needed), then the rollback.
    response = client.post(f"/environments/{static_env.pk}/rollback/", {"release": "1"})
    assert response.status_code == 200 and "Roll back to release 1?" in page(response)
    assert 'name="confirmed" value="yes"' in page(response) and 'name="release" value="1"' in page(response)
    assert not static_env.operations.filter(status=OperationStatus.QUEUED).exists()
    response = client.post(f"/environments/{static_env.pk}/rollback/", {"release": "1", "confirmed": "yes"})
    assert response.status_code == 302
    op = static_env.operations.get(status=OperationStatus.QUEUED)
    assert op.kind == "rollback" and op.release.number == 1


def test_rollback_refusals(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    before = state()
    response = client.post(f"/environments/{static_env.pk}/rollback/", {"release": "1"})
    assert response.status_code == 400 and "This release is the one running." in page(response)
    response = client.post(f"/environments/{static_env.pk}/rollback/", {"release": "7"})
    assert response.status_code == 404 and "There is no such release." in page(response)
    response = client.post(f"/environments/{static_env.pk}/rollback/", {"release": "x"})
    assert response.status_code == 400
    assert state() == before


def test_domains_add_and_remove(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    response = client.post(
        f"/environments/{static_env.pk}/domains/", {"hostname": "Shop.Example.test", "path_prefix": "/api"}
    )
    assert response.status_code == 302
    domain = static_env.domains.get()
    assert (domain.hostname, domain.path_prefix) == ("shop.example.test", "/api")
    assert "shop.example.test/api" in page(client.get(f"/environments/{static_env.pk}/"))
    response = client.post(f"/environments/{static_env.pk}/domains/{domain.pk}/remove/")
    assert response.status_code == 302 and not static_env.domains.exists()


def test_bad_domains_are_explained_next_to_the_field(
    team: Team, static_env: Environment, theirs: Environment
) -> None:
    client = client_for(team.developer)
    before = state()
    for hostname, status, message in (
        ("*.example.test", 400, "hostname"),
        ("theirs.example.test", 409, "This domain is already in use."),
        ("x.apps.localhost", 400, "Names under the apps domain are given by Stackport."),
    ):
        response = client.post(f"/environments/{static_env.pk}/domains/", {"hostname": hostname})
        assert response.status_code == status, hostname
        html = page(response)
        form = html[html.index('id="domain-form"') :]
        assert "invalid-feedback" in form[: form.index("</form>")], hostname
        if message != "hostname":
            assert message in form
    # Our own words, never the library's message with the value echoed back.
    for hostname in ("Not a domain!", "shop.example.test:8080", "192.0.2.10", "<b>x</b>.test"):
        response = client.post(f"/environments/{static_env.pk}/domains/", {"hostname": hostname})
        form = page(response)[page(response).index('id="domain-form"') :]
        assert response.status_code == 400 and "This is not a domain name we can serve." in form, hostname
        assert "Codepoint" not in form and "Not a domain!" not in form.split("invalid-feedback")[1][:300]
    response = client.post(
        f"/environments/{static_env.pk}/domains/", {"hostname": "shop.example.test", "path_prefix": "/a b"}
    )
    assert response.status_code == 400 and "A path prefix starts with /" in page(response)
    assert state() == before


def test_variables_and_write_only_secrets(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    assert (
        client.post(
            f"/environments/{static_env.pk}/variables/", {"name": "GREETING", "value": PAYLOAD}
        ).status_code
        == 302
    )
    assert (
        client.post(
            f"/environments/{static_env.pk}/variables/",
            {"name": "API_KEY", "value": "s3cr3t-value", "secret": "on"},
        ).status_code
        == 302
    )
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert "API_KEY" in html and "s3cr3t-value" not in html and "•••••• secret" in html
    assert (
        PAYLOAD not in html
        and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html
    )
    response = client.post(f"/environments/{static_env.pk}/variables/delete/", {"name": "GREETING"})
    assert response.status_code == 302
    assert list(Variable.objects.filter(environment=static_env).values_list("name", flat=True)) == ["API_KEY"]


def test_bad_variables_are_refused_next_to_the_field(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    before = state()
    response = client.post(f"/environments/{static_env.pk}/variables/", {"name": "A B", "value": "x"})
    assert response.status_code == 400
    html = page(response)
    form = html[html.index('id="variable-form"') :]
    assert "is not a valid variable name" in form[: form.index("</form>")]
    response = client.post(f"/environments/{static_env.pk}/variables/", {"name": "STACKPORT_X", "value": "x"})
    assert response.status_code == 400 and "reserved for Stackport" in page(response)
    response = client.post(f"/environments/{static_env.pk}/variables/delete/", {"name": "NOPE"})
    assert response.status_code == 404 and "There is no such variable." in page(response)
    assert state() == before


def test_generated_credentials_cannot_be_deleted(team: Team, env: Environment) -> None:
    generated = Variable.objects.filter(environment=env, generated=True).first()
    assert generated is not None
    html = page(client_for(team.developer).get(f"/environments/{env.pk}/"))
    assert "•••••• generated" in html
    response = client_for(team.developer).post(
        f"/environments/{env.pk}/variables/delete/",
        {"name": generated.name, "component": generated.component},
    )
    assert response.status_code == 404 and Variable.objects.filter(pk=generated.pk).exists()


def _zip(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    buffer.seek(0)
    buffer.name = "site.zip"
    return buffer


def test_content_upload_deploys_a_new_release(team: Team, static_env: Environment) -> None:
    response = client_for(team.developer).post(
        f"/environments/{static_env.pk}/content/upload/", {"archive": _zip({"index.html": "<h1>new</h1>"})}
    )
    assert response.status_code == 302
    release = static_env.releases.get(number=2)
    assert release.source == "upload" and release.source_detail == "site.zip" and release.content_files == 1


def test_a_bad_upload_is_explained_and_writes_nothing(team: Team, static_env: Environment) -> None:
    before = state()
    bad = io.BytesIO(b"not an archive at all")
    bad.name = "site.txt"
    response = client_for(team.developer).post(
        f"/environments/{static_env.pk}/content/upload/", {"archive": bad}
    )
    assert response.status_code == 400
    html = page(response)
    form = html[html.index('id="upload-form"') :]
    assert "is not a supported archive" in form[: form.index("</form>")]
    assert state() == before


def test_git_source(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    before = state()
    response = client.post(
        f"/environments/{static_env.pk}/content/git/", {"git_url": "ext::sh -c id", "branch": "main"}
    )
    assert response.status_code == 400 and "is not a repository address we can fetch" in page(response)
    assert state() == before
    for inward, says in [
        ("file:///work/main", "Repositories on this server&#x27;s disk are not allowed"),
        ("/work/main", "Repositories on this server&#x27;s disk are not allowed"),
        ("http://localhost:8000/x.git", "Refused: localhost is not a public host name"),
        ("http://127.1:5000/x.git", "Refused: 127.1 is not a public address"),
        ("http://169.254.169.254/latest/", "Refused: 169.254.169.254 is not a public address"),
    ]:
        response = client.post(
            f"/environments/{static_env.pk}/content/git/", {"git_url": inward, "branch": "main"}
        )
        assert response.status_code == 400 and says in page(response), inward
        assert state() == before
    response = client.post(
        f"/environments/{static_env.pk}/content/git/",
        {"git_url": "https://user:pw@git.example.test/shop.git", "branch": "main"},
    )
    assert response.status_code == 302
    release = static_env.releases.get(number=2)
    assert release.source == "git" and "pw" not in release.source_detail


def test_stop_and_start(team: Team, static_env: Environment) -> None:
    client = client_for(team.developer)
    asked = client.post(f"/environments/{static_env.pk}/stop/")
    assert asked.status_code == 200 and "Every container stops" in page(asked)
    assert not static_env.operations.filter(kind="stop").exists()
    assert client.post(f"/environments/{static_env.pk}/stop/", {"confirmed": "yes"}).status_code == 302
    static_env.refresh_from_db()
    assert not static_env.desired_running
    assert static_env.operations.get(status=OperationStatus.QUEUED).kind == "stop"
    Operation.objects.filter(environment=static_env).update(status=OperationStatus.SUCCEEDED)
    Environment.objects.filter(pk=static_env.pk).update(status=EnvironmentStatus.STOPPED)
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert (
        f"/environments/{static_env.pk}/start/" in html and f"/environments/{static_env.pk}/stop/" not in html
    )
    assert client.post(f"/environments/{static_env.pk}/start/").status_code == 302
    static_env.refresh_from_db()
    assert static_env.desired_running


def test_destroy_needs_the_typed_name(team: Team, static_env: Environment) -> None:
    client = client_for(team.admin)
    before = state()
    response = client.post(f"/environments/{static_env.pk}/destroy/", {"confirmation": "static"})
    assert response.status_code == 400
    html = page(response)
    form = html[html.index('id="destroy-form"') :]
    assert "Type the project&#x27;s name exactly to confirm." in form[: form.index("</form>")]
    assert state() == before
    response = client.post(f"/environments/{static_env.pk}/destroy/", {"confirmation": "Static"})
    assert response.status_code == 302
    static_env.refresh_from_db()
    assert static_env.status == EnvironmentStatus.DESTROYING
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert (
        "Destroying" in html
        and "destroy-form" not in html
        and f"/environments/{static_env.pk}/scale/" not in html
    )


# --- operation progress -------------------------------------------------------------------------
def test_operation_page_and_polling_partial(team: Team, offered_catalog: None) -> None:
    environment = static_stack(organization=team.org, actor=team.developer, name="Busy", region="eu-central")
    op = environment.operations.get()
    client = client_for(team.viewer)
    full = page(client.get(f"/operations/{op.pk}/"))
    assert "<html" in full and 'hx-trigger="every 1s"' in full and "<progress" in full
    partial = page(client.get(f"/operations/{op.pk}/", headers={"HX-Request": "true"}))
    assert "<html" not in partial and 'hx-trigger="every 1s"' in partial
    assert f'hx-get="/operations/{op.pk}/"' in partial and f'href="/operations/{op.pk}/"' in partial
    # The environment page embeds it, asking for a reload when it ends.
    html = page(client.get(f"/environments/{environment.pk}/"))
    assert f'hx-get="/operations/{op.pk}/?refresh=1"' in html

    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.RUNNING,
        steps=[
            {"name": "Start the containers", "status": "done"},
            {"name": "Route traffic", "status": "running"},
        ],
    )
    partial = page(client.get(f"/operations/{op.pk}/", headers={"HX-Request": "true"}))
    assert 'value="50" max="100"' in partial and "Route traffic" in partial and "every 1s" in partial

    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.FAILED, error=PAYLOAD, finished_at=timezone.now()
    )
    response = client.get(f"/operations/{op.pk}/", headers={"HX-Request": "true"})
    partial = page(response)
    assert "hx-trigger" not in partial and "hx-get" not in partial and "Failed" in partial
    assert PAYLOAD not in partial and "&lt;script&gt;" in partial
    assert "HX-Refresh" not in response
    refreshed = client.get(f"/operations/{op.pk}/?refresh=1", headers={"HX-Request": "true"})
    assert refreshed["HX-Refresh"] == "true"


# --- escaping and query counts -----------------------------------------------------------------
def test_customer_typed_names_are_escaped_on_every_page(team: Team, offered_catalog: None) -> None:
    environment = static_stack(organization=team.org, actor=team.developer, name=PAYLOAD, region="eu-central")
    client = client_for(team.admin)
    op = environment.operations.get()
    for url in (
        f"/environments/{environment.pk}/",
        f"/projects/{environment.project_id}/",
        f"/operations/{op.pk}/",
    ):
        html = page(client.get(url))
        assert PAYLOAD not in html, url
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in html, url
    response = client.post(f"/environments/{environment.pk}/destroy/", {"confirmation": "nope"})
    assert PAYLOAD not in page(response)


def _grow(environment: Environment, team: Team, n: int) -> None:
    """n more releases, domains and variables (and finished operations)."""
    start = environment.domains.count()
    for i in range(start, start + n):
        lifecycle.add_domain(
            environment=environment, actor=team.developer, hostname=f"d{i}-{environment.pk}.example.test"
        )
        lifecycle.set_variable(environment=environment, actor=team.developer, name=f"V{i}", value="x")
        lifecycle.scale(environment=environment, actor=team.developer, component="web", replicas=1 + i % 2)
        finish(environment)


def _count(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_environment_and_project_pages_make_a_fixed_number_of_queries(
    team: Team, env: Environment, django_assert_max_num_queries: Any
) -> None:
    client = client_for(team.developer)
    _grow(env, team, 1)
    client.get(f"/environments/{env.pk}/")  # the session's first request writes to it
    small = (_count(client, f"/environments/{env.pk}/"), _count(client, f"/projects/{env.project_id}/"))
    _grow(env, team, 6)
    assert (
        _count(client, f"/environments/{env.pk}/"),
        _count(client, f"/projects/{env.project_id}/"),
    ) == small
    # The environment page shows backups, volumes, pending variables and domain claims too.
    with django_assert_max_num_queries(24):
        client.get(f"/environments/{env.pk}/")
    with django_assert_max_num_queries(22):
        client.get(f"/projects/{env.project_id}/")


def test_the_public_component_is_never_scaled_to_zero(team: Team, static_env: Environment) -> None:
    """Scaling the only public replica to 0 left the site down and the environment deploying;
    now it is refused with the reason and the way to take a site offline (stop)."""
    client = client_for(team.developer)
    before = state()
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert 'aria-label="One replica fewer of web" disabled' in html
    for data in (
        {"component": "web", "replicas": "0"},
        {"component": "web", "replicas": "0", "confirmed": "yes"},
    ):
        refused = client.post(f"/environments/{static_env.pk}/scale/", data)
        assert refused.status_code == 400
        assert "web serves the site, so it keeps at least one replica" in page(refused)
        assert "stop the environment instead" in page(refused)
    assert state() == before
    # Scaling up needs no confirmation.
    assert (
        client.post(
            f"/environments/{static_env.pk}/scale/", {"component": "web", "replicas": "2"}
        ).status_code
        == 302
    )


def test_a_suspended_project_shows_why_and_offers_no_actions(team: Team, static_env: Environment) -> None:
    from django.utils import timezone

    from projects.models import Project

    Project.objects.filter(pk=static_env.project_id).update(
        suspended_at=timezone.now(), suspended_reason="Unpaid"
    )
    client = client_for(team.developer)
    html = page(client.get(f"/environments/{static_env.pk}/"))
    assert 'id="suspended"' in html and "Unpaid" in html
    assert "One replica more of web" not in html and f"/environments/{static_env.pk}/stop/" not in html
    dashboard = page(client.get("/"))
    assert (
        'id="suspended"' in dashboard and "Unpaid" in dashboard and "Nothing needs attention" not in dashboard
    )
