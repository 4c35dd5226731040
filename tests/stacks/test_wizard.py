"""The new-project wizard: pre-built or assembled stacks, the catalog's rules applied as
the customer picks, price and quota before confirming, errors next to the fields."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from projects.models import Environment, Project
from projects.services import ServiceError
from stacks.models import ComponentVersion, Operation, OperationStatus, VersionStatus
from tests.conftest import Team, add_memory_host, client_for

pytestmark = pytest.mark.django_db
URL = "/projects/new/"
PAYLOAD = "<script>alert(\"x\")</script> & 'q'"
HTMX = {"HX-Request": "true"}


def html(response: Any) -> str:
    return response.content.decode()


def near(page: str, anchor: str, text: str, span: int = 2500) -> bool:
    """``text`` shows within ``span`` characters after ``anchor`` (next to that field)."""
    at = page.find(anchor)
    return at >= 0 and text in page[at : at + span]


def template_data(**extra: Any) -> dict[str, Any]:
    return {
        "name": "Shop",
        "region": "eu-central",
        "environment": "production",
        "mode": "template",
        "template": "lamp",
        "kernel": "",
        **extra,
    }


def assembled(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Mine",
        "region": "eu-central",
        "environment": "production",
        "mode": "assemble",
        "kernel": "",
        "framework": "",
        "c-TOTAL_FORMS": str(len(rows)),
        "c-INITIAL_FORMS": "0",
        **extra,
    }
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key == "public":
                if value:
                    data[f"c-{i}-public"] = "on"
            else:
                data[f"c-{i}-{key}"] = str(value)
    return data


NGINX = {
    "name": "web",
    "component": "nginx",
    "version": "1.26",
    "size": "small",
    "replicas": 1,
    "public": True,
}
PHP = {"name": "php", "component": "php-fpm", "version": "8.4", "size": "small", "replicas": 1}
PYTHON = {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 1}
APACHE = {
    "name": "web",
    "component": "apache",
    "version": "2.4",
    "size": "small",
    "replicas": 1,
    "public": True,
}
DB = {"name": "db", "component": "postgresql", "version": "17", "size": "small", "replicas": 1}


@pytest.fixture
def client(team: Team, offered_catalog: None) -> Client:
    return client_for(team.developer)


def nothing_written() -> bool:
    return not Project.objects.exists() and not Operation.objects.exists()


# --- the page ------------------------------------------------------------------------------------
def test_wizard_page_preselects_a_template_and_waits_for_a_check(client: Client) -> None:
    response = client.get(URL + "?template=wordpress")
    assert response.status_code == 200
    page = html(response)
    assert 'value="wordpress" id="template-wordpress"' in page
    assert (
        'id="template-wordpress"\n' in page
        or "checked" in page[page.index('id="template-wordpress"') :][:300]
    )
    assert 'id="create" disabled' in page
    assert "Frankfurt (EU Central)" in page and "Linux 6.12 LTS" in page


def test_the_wizard_needs_a_developer(team: Team, offered_catalog: None) -> None:
    assert client_for(team.viewer).get(URL).status_code == 403
    before = Project.objects.count()
    assert client_for(team.viewer).post(URL, template_data(step="create")).status_code == 403
    assert Project.objects.count() == before
    response = Client().get(URL)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_wizard_refuses_other_methods(client: Client) -> None:
    assert client.put(URL).status_code == 405
    assert client.delete(URL).status_code == 405


def test_creates_in_the_current_organization_only(team: Team, offered_catalog: None) -> None:
    response = client_for(team.outsider).post(URL, template_data(step="create"))
    assert response.status_code == 302
    assert Project.objects.get().organization == team.outsider_org


# --- pre-built stacks ---------------------------------------------------------------------------
def test_preview_of_a_template_shows_price_quota_and_enables_create(client: Client) -> None:
    response = client.post(URL, template_data(), headers=HTMX)
    assert response.status_code == 200
    page = html(response)
    assert "<html" not in page and page.lstrip().startswith('<form id="wizard"')
    assert 'id="price"' in page and "a month" in page
    assert 'id="quota-ok"' in page
    assert 'id="create" disabled' not in page
    assert nothing_written()


def test_without_htmx_the_preview_renders_the_whole_page(client: Client) -> None:
    page = html(client.post(URL, template_data(step="preview")))
    assert "<html" in page and 'id="price"' in page


def test_typing_refreshes_only_the_summary(client: Client) -> None:
    page = html(client.post(URL, template_data(part="summary"), headers=HTMX))
    assert page.lstrip().startswith('<div id="summary"') and 'id="price"' in page


def test_create_from_a_template(client: Client, team: Team) -> None:
    response = client.post(URL, template_data(step="create", environment="staging", kernel="6.1"))
    environment = Environment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/environments/{environment.pk}/"
    assert environment.name == "staging" and environment.kernel.line == "6.1"
    assert environment.project.name == "Shop" and environment.template.code == "lamp"
    assert environment.project.organization == team.org
    assert environment.operations.get().kind == "deploy"


@pytest.mark.parametrize(
    ("data", "anchor", "message"),
    [
        ({"name": ""}, 'for="id_name"', "This field is required."),
        (
            {"environment": "Prod!"},
            'for="id_environment"',
            "Use 1 to 30 lower-case letters, digits and hyphens.",
        ),
        ({"region": "mars"}, 'for="id_region"', "Select a valid choice."),
        (
            {"region": "eu-west", "kernel": "6.1"},
            'for="id_kernel"',
            "Amsterdam (EU West) offers Linux 6.12 LTS only.",
        ),
        ({"template": ""}, 'id="templates"', "Choose one of the pre-built stacks."),
        ({"template": "nope"}, 'id="templates"', "Select a valid choice."),
    ],
)
def test_bad_choices_are_explained_next_to_the_field_and_nothing_is_written(
    client: Client, data: dict[str, str], anchor: str, message: str
) -> None:
    response = client.post(URL, template_data(step="create", **data))
    assert response.status_code == 400
    page = html(response)
    assert near(page, anchor, message, 6000), message
    assert 'id="create" disabled' in page
    assert nothing_written()
    # The same in the preview: shown, not an error status (htmx swaps it).
    preview = client.post(URL, template_data(**data), headers=HTMX)
    assert preview.status_code == 200 and message in html(preview)


def test_a_duplicate_project_name_is_refused_by_the_service(client: Client) -> None:
    assert client.post(URL, template_data(step="create")).status_code == 302
    response = client.post(URL, template_data(step="create"))
    assert response.status_code == 400
    assert near(html(response), 'for="id_name"', "A project with this name exists already.")
    assert Project.objects.count() == 1


def test_a_template_without_a_published_version_cannot_be_chosen(client: Client) -> None:
    ComponentVersion.objects.filter(component__code="mariadb").update(status=VersionStatus.DEPRECATED)
    response = client.post(URL, template_data(step="create"))
    assert response.status_code == 400
    assert "LAMP cannot be deployed right now: no published version of MariaDB." in html(response)
    assert nothing_written()


def test_over_quota_stacks_are_shown_and_cannot_be_created(client: Client, monkeypatch: Any) -> None:
    monkeypatch.setattr(
        "billing.quotas.stack_problems", lambda **kw: ["Your plan allows 1 CPU; this stack needs 2."]
    )
    page = html(client.post(URL, template_data(), headers=HTMX))
    assert 'id="quota"' in page and "Your plan allows 1 CPU; this stack needs 2." in page
    assert 'id="create" disabled' in page
    response = client.post(URL, template_data(step="create"))
    assert response.status_code == 400 and nothing_written()


def test_a_refusal_by_the_service_keeps_its_status(client: Client, monkeypatch: Any) -> None:
    def refuse(**kwargs: Any) -> None:
        raise ServiceError("Your plan allows 2 projects.", status=402)

    monkeypatch.setattr("stacks.runtime.lifecycle.create_project", refuse)
    response = client.post(URL, template_data(step="create"))
    assert response.status_code == 402 and "Your plan allows 2 projects." in html(response)


def test_names_are_escaped(client: Client) -> None:
    page = html(client.post(URL, template_data(name=PAYLOAD, environment=PAYLOAD)))
    assert PAYLOAD not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    response = client.post(URL, template_data(step="create", name=PAYLOAD))
    assert response.status_code == 302
    assert Project.objects.get().name == PAYLOAD


# --- assembling ---------------------------------------------------------------------------------
def test_switching_to_assemble_starts_from_the_chosen_template(client: Client) -> None:
    data = template_data(mode="assemble")
    page = html(client.post(URL, data, headers=HTMX))
    assert 'name="c-TOTAL_FORMS" value="3"' in page
    for i, code in enumerate(("apache", "php-fpm", "mariadb")):
        assert f'name="c-{i}-component"' in page
        assert f'<option value="{code}" selected' in page
    assert 'id="price"' in page and 'id="create" disabled' not in page


def test_assemble_and_create(client: Client) -> None:
    rows = [NGINX, PYTHON, DB]
    response = client.post(URL, assembled(rows, step="create", framework="python"))
    assert response.status_code == 302
    environment = Environment.objects.get()
    assert [(c.name, c.component.code, c.version.version) for c in environment.components.all()] == [
        ("web", "nginx", "1.26"),
        ("app", "python", "3.13"),
        ("db", "postgresql", "17"),
    ]


def test_a_component_that_needs_another_says_which(client: Client) -> None:
    response = client.post(URL, assembled([PHP], step="create"))
    assert response.status_code == 400
    page = html(response)
    assert near(
        page,
        'for="id_c-0-component"',
        "PHP-FPM does not answer HTTP itself. Add one of: Apache httpd, nginx.",
    )
    assert 'id="create" disabled' in page and nothing_written()


def test_works_with_rules_refuse_a_pairing(client: Client) -> None:
    page = html(client.post(URL, assembled([APACHE, PYTHON]), headers=HTMX))
    assert "Python works with nginx, not with Apache httpd." in page
    assert 'id="create" disabled' in page


def test_the_framework_needs_its_runtime_and_add_brings_it(client: Client) -> None:
    page = html(client.post(URL, assembled([NGINX], framework="php"), headers=HTMX))
    assert near(page, 'for="id_framework"', "The PHP framework needs a PHP-FPM component: add one.")
    page = html(client.post(URL, assembled([NGINX], framework="php", step="add"), headers=HTMX))
    assert 'name="c-TOTAL_FORMS" value="2"' in page
    assert '<option value="php-fpm" selected' in page and 'value="app"' in page
    assert "needs a PHP-FPM component" not in page and 'id="create" disabled' not in page


def test_remove_a_row(client: Client) -> None:
    page = html(client.post(URL, {**assembled([NGINX, DB]), "drop": "1"}, headers=HTMX))
    assert (
        'name="c-TOTAL_FORMS" value="1"' in page and "postgresql" not in page.split('id="summary"')[1][:800]
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"size": "xlarge"}, "size", "nginx cannot run at size &#x27;xlarge&#x27;."),
        ({"replicas": 11}, "replicas", "Replicas must be a whole number from 0 to 10."),
        ({"name": "Web!"}, "name", "1 to 30 lower-case letters, digits and hyphens, a letter first."),
    ],
)
def test_bad_rows_are_explained_next_to_the_field(
    client: Client, change: dict[str, Any], field: str, message: str
) -> None:
    response = client.post(URL, assembled([{**NGINX, **change}], step="create"))
    assert response.status_code == 400
    assert near(html(response), f'for="id_c-0-{field}"', message), message
    assert nothing_written()


def test_stateful_components_run_one_replica(client: Client) -> None:
    page = html(client.post(URL, assembled([NGINX, {**DB, "replicas": 2}]), headers=HTMX))
    assert near(page, 'for="id_c-1-replicas"', "PostgreSQL keeps data and runs as a single replica.")


def test_an_end_of_life_version_is_refused(client: Client) -> None:
    ComponentVersion.objects.filter(component__code="nginx", version="1.22").update(
        status=VersionStatus.END_OF_LIFE
    )
    page = html(client.post(URL, assembled([{**NGINX, "version": "1.22"}]), headers=HTMX))
    # The deadline is in the message (a stack that runs it keeps running it).
    assert near(
        page,
        'for="id_c-0-version"',
        "nginx 1.22 is end of life: new stacks get current versions only. Choose a current version of "
        "nginx. Its end of life was 2028-06-30.",
    )


def test_new_stacks_are_offered_current_versions_only(client: Client) -> None:
    page = html(client.post(URL, assembled([NGINX]), headers=HTMX))
    assert '<option value="1.26" selected' in page
    assert '<option value="1.22"' not in page and "deprecated" not in page


def test_a_deprecated_version_is_refused_next_to_its_row(client: Client) -> None:
    message = (
        "nginx 1.22 is deprecated: new stacks get current versions only. Choose a current version of nginx."
    )
    preview = html(client.post(URL, assembled([{**NGINX, "version": "1.22"}]), headers=HTMX))
    assert near(preview, 'for="id_c-0-version"', message) and 'id="create" disabled' in preview
    response = client.post(URL, assembled([{**NGINX, "version": "1.22"}], step="create"))
    assert response.status_code == 400 and near(html(response), 'for="id_c-0-version"', message)
    assert nothing_written()


def test_changing_the_component_picks_one_of_its_versions(client: Client) -> None:
    page = html(client.post(URL, assembled([{**NGINX, "component": "apache"}]), headers=HTMX))
    assert '<option value="2.4" selected' in page and "has no version" not in page


def test_two_public_components_and_duplicate_names(client: Client) -> None:
    page = html(client.post(URL, assembled([NGINX, {**NGINX, "component": "nginx"}]), headers=HTMX))
    assert "Another component is named &#x27;web&#x27; already." in page
    assert "Only one component can receive the public route." in page


def test_an_empty_assembly(client: Client) -> None:
    response = client.post(URL, assembled([], step="create"))
    assert response.status_code == 400 and "Add at least one component." in html(response)


# --- the service's environment name ------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "Prod", "a b", "x" * 31, "prod/1", "ünï"])
def test_create_project_refuses_a_bad_environment_name(team: Team, offered_catalog: None, bad: str) -> None:
    from stacks.runtime import lifecycle

    with pytest.raises(ServiceError) as err:
        lifecycle.create_project(
            organization=team.org,
            actor=team.developer,
            name="Shop",
            region="eu-central",
            template="lamp",
            environment=bad,
        )
    assert err.value.field == "environment" and "lower-case letters, digits and hyphens" in err.value.message
    assert nothing_written()


def test_create_project_names_the_environment(team: Team, offered_catalog: None) -> None:
    from stacks.runtime import lifecycle

    environment = lifecycle.create_project(
        organization=team.org,
        actor=team.developer,
        name="Shop",
        region="eu-central",
        template="lamp",
        environment="staging-2",
    )
    assert environment.name == "staging-2"
    default = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Other", region="eu-central", template="lamp"
    )
    assert default.name == "production"


# --- sample applications: made by the operation, not the request ---------------------------------
def test_a_wordpress_stack_is_created_without_docker_and_its_operation_makes_the_content(
    client: Client, monkeypatch: Any, memory_backend: Any
) -> None:
    import hashlib

    import docker

    from stacks.catalog import samples
    from stacks.runtime import content_store, operations

    def no_engine(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Docker engine was called")

    monkeypatch.setattr(docker, "DockerClient", no_engine)
    monkeypatch.setattr(docker, "from_env", no_engine)
    monkeypatch.setattr(samples, "_wordpress_archive", no_engine)

    response = client.post(URL, template_data(step="create", template="wordpress", name="Blog"))
    assert response.status_code == 302, html(response)
    environment = Environment.objects.get()
    release = environment.releases.get()
    # The release names its sample; the content comes later.
    assert (release.source, release.source_detail, release.content_sha256) == ("template", "wordpress", "")

    # The worker: the sample is made by the operation (the engine's build stood in for).
    tree = samples._pack(
        [
            ("wp-login.php", b"<?php // login", samples.SAMPLE_MTIME),
            ("wp-config.php", samples.WP_CONFIG.encode(), samples.SAMPLE_MTIME),
        ]
    )
    made: list[str] = []

    def build() -> bytes:
        made.append("wordpress")
        return tree

    monkeypatch.setattr(samples, "_wordpress_archive", build)

    add_memory_host(environment)
    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)

    op = environment.operations.get()
    assert operations.run_operation(op.pk) == OperationStatus.SUCCEEDED
    op.refresh_from_db()
    release.refresh_from_db()
    names = [s["name"] for s in op.steps]
    assert names[:2] == ["Make the sample application", "Prepare the content"]
    assert all(s["status"] == "done" for s in op.steps)
    assert release.content_sha256 == hashlib.sha256(tree).hexdigest() and release.content_files == 2
    assert content_store.path(release.content_sha256).read_bytes() == tree
    assert memory_backend.calls("put_content") == [(environment.key, release.content_id)] and made == [
        "wordpress"
    ]
    assert memory_backend.stack(environment.key).content["h1"][release.content_id] == tree

    # Resumed (a worker lost after the content was made): nothing is made again.
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.RUNNING, heartbeat_at=None)
    assert operations.run_operation(op.pk) == OperationStatus.SUCCEEDED
    op.refresh_from_db()
    assert made == ["wordpress"] and "Make the sample application" not in [s["name"] for s in op.steps]


def test_a_sample_that_cannot_be_made_fails_the_operation_with_the_reason(
    client: Client, monkeypatch: Any
) -> None:
    from stacks.catalog import samples
    from stacks.runtime import operations

    def broken() -> bytes:
        raise samples.SampleError("building the WordPress tree failed: no network")

    monkeypatch.setattr(samples, "_wordpress_archive", broken)
    monkeypatch.setattr(operations, "backend_for", lambda environment: pytest.fail("no backend needed"))
    assert client.post(URL, template_data(step="create", template="wordpress")).status_code == 302
    environment = Environment.objects.get()
    op = environment.operations.get()
    assert operations.run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    assert op.error == (
        "The sample application could not be made: building the WordPress tree failed: no network"
    )
    environment.refresh_from_db()
    # A defined end: failed, with why and what to do; the release never ran.
    assert environment.status == "failed" and not environment.releases.get().content_sha256
    assert environment.status_detail.startswith("Deploy failed: The sample application could not be made")
    assert environment.status_detail.endswith("Fix the cause and deploy again.")
    assert environment.releases.get().ran_at is None
