"""The catalog's rules written once (``stacks.catalog.offers``) and applied alike by the
pages, the dashboard, the API and the services: which versions a new stack gets (current,
published ones), which versions a running component can upgrade to, and which assembled
stacks go together."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from projects import services
from projects.models import Environment, EnvironmentStatus, Project, User
from projects.services import ServiceError
from stacks.catalog import offers
from stacks.models import ComponentVersion, Operation, OperationStatus, Release, VersionStatus
from stacks.runtime import lifecycle
from tests.conftest import Team, client_for

pytestmark = pytest.mark.django_db
WIZARD = "/projects/new/"
NGINX = {
    "name": "web",
    "component": "nginx",
    "version": "1.26",
    "size": "small",
    "replicas": 1,
    "public": True,
}
PHP = {
    "name": "php",
    "component": "php-fpm",
    "version": "8.4",
    "size": "small",
    "replicas": 1,
    "public": False,
}


def version(**fields: Any) -> ComponentVersion:
    """An unsaved version (the rule reads only its own fields)."""
    defaults: dict[str, Any] = {
        "component_id": 1,
        "version": "1",
        "status": VersionStatus.CURRENT,
        "digest": "sha256:" + "0" * 64,
        "position": 0,
        "migration": {},
    }
    return ComponentVersion(**{**defaults, **fields})


def api_post(user: User, path: str, body: dict[str, Any]) -> Any:
    import json

    _token, secret = services.create_api_token(user=user, name="test")
    client = Client(headers={"authorization": f"Bearer {secret}"})
    return client.post(f"/api{path}", data=json.dumps(body), content_type="application/json")


def api_get(user: User, path: str) -> Any:
    _token, secret = services.create_api_token(user=user, name="read")
    return Client(headers={"authorization": f"Bearer {secret}"}).get(f"/api{path}").json()


def wizard_data(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
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


def finish(environment: Environment) -> None:
    """What a worker leaves after the environment's queued operation succeeded."""
    op = environment.operations.get(status=OperationStatus.QUEUED)
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.SUCCEEDED, finished_at=timezone.now())
    Release.objects.filter(pk=op.release_id).update(ran_at=timezone.now())
    Environment.objects.filter(pk=environment.pk).update(
        status=EnvironmentStatus.RUNNING, current_release=op.release, backend_state={"host": "local-1"}
    )
    environment.refresh_from_db()


# --- the rules, pure ---------------------------------------------------------------------------------
def test_only_current_published_versions_are_offered(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0):
        assert offers.is_offered(version())
        assert not offers.is_offered(version(digest=""))
        for status in (
            VersionStatus.CANDIDATE,
            VersionStatus.VERIFIED,
            VersionStatus.DEPRECATED,
            VersionStatus.END_OF_LIFE,
        ):
            assert not offers.is_offered(version(status=status)), status


def test_upgrade_targets_are_newer_offered_versions_with_a_path_for_data(
    django_assert_num_queries: Any,
) -> None:
    running = version(version="15", position=1)
    newer = version(version="17", position=2, migration={"from": ["15"], "method": "dump-restore"})
    with django_assert_num_queries(0):
        assert offers.is_upgrade_target(running, newer, stateful=False)
        assert offers.is_upgrade_target(running, newer, stateful=True)
        # A stateful component needs the catalog's tested way for its data.
        no_path = version(version="17", position=2, migration={"from": ["14"]})
        assert offers.is_upgrade_target(running, no_path, stateful=False)
        assert not offers.is_upgrade_target(running, no_path, stateful=True)
        assert not offers.is_upgrade_target(running, version(version="17", position=2), stateful=True)
        # Newer only, offered only, the same component only.
        assert not offers.is_upgrade_target(running, running, stateful=False)
        assert not offers.is_upgrade_target(running, version(version="14", position=0), stateful=False)
        for status in (VersionStatus.VERIFIED, VersionStatus.DEPRECATED, VersionStatus.END_OF_LIFE):
            candidate = version(version="17", position=2, status=status, migration=newer.migration)
            assert not offers.is_upgrade_target(running, candidate, stateful=False), status
        assert not offers.is_upgrade_target(running, version(position=2, digest=""), stateful=False)
        assert not offers.is_upgrade_target(running, version(position=2, component_id=2), stateful=False)


# --- upgrades: the same list everywhere ------------------------------------------------------------
@pytest.fixture
def mixed(team: Team, offered_catalog: None) -> Environment:
    """A stack with a stateless component on a deprecated version (web: nginx 1.22), a
    stateful one whose next version has a tested migration (kv: MariaDB 10.11 -> 11.8) and
    a stateful one whose next version has none (db: PostgreSQL 15, 17 without migration)."""
    rows = [
        NGINX,
        {"name": "db", "component": "postgresql", "version": "15", "size": "small", "replicas": 1},
        {"name": "kv", "component": "mariadb", "version": "10.11", "size": "small", "replicas": 1},
    ]
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Mixed", region="eu-central", components=rows
    )
    finish(environment)
    # A stateless component may go back to a version that still runs (not offered any more).
    lifecycle.upgrade(environment=environment, actor=team.developer, component="web", version="1.22")
    finish(environment)
    ComponentVersion.objects.filter(component__code="postgresql", version="17").update(migration={})
    return environment


def test_the_upgrade_list_is_the_same_on_the_page_the_dashboard_and_the_api(
    team: Team, mixed: Environment
) -> None:
    from portal.dashboard import Catalog

    expected = {"web": ["1.26"], "db": [], "kv": ["11.8"]}

    response = client_for(team.viewer).get(f"/environments/{mixed.pk}/")
    page = {r["sc"].name: [cv.version for cv in r["upgrades"]] for r in response.context["rows"]}
    catalog = Catalog.load()
    dashboard = {
        sc.name: [cv.version for cv in catalog.upgrades_for(sc.version_id)] for sc in mixed.components.all()
    }
    api = {c["name"]: c["upgrades"] for c in api_get(team.viewer, f"/environments/{mixed.pk}")["components"]}
    service = offers.upgrades_for(mixed.components.select_related("component", "version"))

    assert page == dashboard == api == expected
    assert {name: [cv.version for cv in found] for name, found in service.items()} == expected
    available = {
        c["name"]: c["upgrade_available"]
        for c in api_get(team.viewer, f"/environments/{mixed.pk}")["components"]
    }
    assert available == {"web": True, "db": False, "kv": True}

    # What the dashboard says needs attention follows the same list.
    html = client_for(team.viewer).get(reverse("portal:dashboard")).content.decode()
    assert "nginx 1.26 is available (runs 1.22)." in html
    assert "MariaDB 11.8 is available (runs 10.11)." in html
    assert "PostgreSQL 17 is available" not in html


def test_a_newer_version_that_is_not_current_is_offered_nowhere(team: Team, mixed: Environment) -> None:
    from portal.dashboard import Catalog

    ComponentVersion.objects.filter(component__code="nginx", version="1.26").update(
        status=VersionStatus.VERIFIED
    )
    response = client_for(team.viewer).get(f"/environments/{mixed.pk}/")
    web = next(r for r in response.context["rows"] if r["sc"].name == "web")
    assert web["upgrades"] == []
    row = response.content.decode().split('id="component-web"')[1].split("</tr>")[0]
    assert "1.22" in row and "upgrade available" not in row
    catalog = Catalog.load()
    assert catalog.upgrade_for(mixed.components.get(name="web").version_id) is None
    api = api_get(team.viewer, f"/environments/{mixed.pk}")["components"]
    assert next(c for c in api if c["name"] == "web")["upgrades"] == []


def test_the_service_moves_data_only_to_an_upgrade_target(team: Team, mixed: Environment) -> None:
    with pytest.raises(ServiceError) as err:
        lifecycle.upgrade(environment=mixed, actor=team.developer, component="db", version="17")
    assert err.value.field == "version"
    assert err.value.message == "There is no tested way to move the data of PostgreSQL 15 to 17."
    ComponentVersion.objects.filter(component__code="mariadb", version="11.8").update(
        status=VersionStatus.DEPRECATED
    )
    with pytest.raises(ServiceError, match=r"^MariaDB 11\.8 is not offered \(deprecated\)\.$"):
        lifecycle.upgrade(environment=mixed, actor=team.developer, component="kv", version="11.8")
    ComponentVersion.objects.filter(component__code="mariadb", version="11.8").update(
        status=VersionStatus.CURRENT
    )
    op = lifecycle.upgrade(environment=mixed, actor=team.developer, component="kv", version="11.8")
    # Dump and restore into new volumes (the 10.11 ones are kept).
    assert op.params == {"component": "kv", "from": "10.11", "to": "11.8", "migrate": "dump-restore"}
    finish(mixed)
    with pytest.raises(ServiceError, match="cannot be moved to an older version"):
        lifecycle.upgrade(environment=mixed, actor=team.developer, component="kv", version="10.11")


# --- new stacks: current versions only -------------------------------------------------------------
def test_a_deprecated_version_is_refused_alike_by_the_service_the_api_and_the_wizard(
    team: Team, offered_catalog: None
) -> None:
    message = (
        "nginx 1.22 is deprecated: new stacks get current versions only. Choose a current version of nginx. "
        "Its end of life is 2028-06-30: stacks on it should upgrade before then."
    )
    old = {**NGINX, "version": "1.22"}
    with pytest.raises(ServiceError) as err:
        lifecycle.create_project(
            organization=team.org, actor=team.developer, name="Old", region="eu-central", components=[old]
        )
    assert (err.value.message, err.value.field, err.value.status) == (message, "version", 400)

    response = api_post(
        team.developer,
        "/projects",
        {"organization": team.org.pk, "name": "Old", "region": "eu-central", "components": [old]},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": message, "field": "version"}

    client = client_for(team.developer)
    page = client.post(WIZARD, wizard_data([old], step="create"))
    assert page.status_code == 400
    html = page.content.decode()
    at = html.find('for="id_c-0-version"')
    assert at >= 0 and message in html[at : at + 2500]
    # The wizard does not offer it in the first place.
    assert '<option value="1.22"' not in html and '<option value="1.26"' in html
    assert not Project.objects.exists()


def test_the_wizard_refuses_a_version_that_went_out_of_offer_after_the_preview(
    team: Team, offered_catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service is the gate: a version deprecated between the check and the create is
    refused by ``create_project`` with the same words."""
    client = client_for(team.developer)
    real = lifecycle.create_project

    def deprecate_then_create(**kwargs: Any) -> Environment:
        ComponentVersion.objects.filter(component__code="nginx", version="1.26").update(
            status=VersionStatus.DEPRECATED
        )
        return real(**kwargs)

    monkeypatch.setattr(lifecycle, "create_project", deprecate_then_create)
    response = client.post(WIZARD, wizard_data([NGINX], step="create"))
    assert response.status_code == 400
    assert "nginx 1.26 is deprecated: new stacks get current versions only." in response.content.decode()
    assert not Project.objects.exists()


def test_templates_use_current_versions_only(team: Team, offered_catalog: None) -> None:
    # MariaDB's only versions are deprecated: LAMP has nothing to run its database on.
    ComponentVersion.objects.filter(component__code="mariadb").update(status=VersionStatus.DEPRECATED)
    with pytest.raises(
        ServiceError, match="LAMP cannot be deployed right now: no published version of MariaDB"
    ):
        lifecycle.create_project(
            organization=team.org, actor=team.developer, name="Old", region="eu-central", template="lamp"
        )
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Site", region="eu-central", template="static-site"
    )
    assert [sc.version.version for sc in environment.components.all()] == ["1.26"]


def test_running_stacks_keep_their_deprecated_versions(team: Team, offered_catalog: None) -> None:
    """Deprecating a version stops new stacks from getting it; stacks on it still scale,
    stop, start and roll back."""
    environment = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Site", region="eu-central", components=[NGINX]
    )
    finish(environment)
    ComponentVersion.objects.filter(component__code="nginx", version="1.26").update(
        status=VersionStatus.DEPRECATED
    )
    lifecycle.scale(environment=environment, actor=team.developer, component="web", replicas=2)
    finish(environment)
    lifecycle.set_running(environment=environment, actor=team.developer, running=False)
    finish(environment)
    lifecycle.set_running(environment=environment, actor=team.developer, running=True)
    finish(environment)
    op = lifecycle.rollback(environment=environment, actor=team.developer, release_number=1)
    assert op.kind == "rollback" and environment.components.get().version.version == "1.26"


# --- compatibility: the wizard's rules are the service's ---------------------------------------------
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([PHP], "PHP-FPM does not answer HTTP itself. Add one of: Apache httpd, nginx."),
        (
            [
                {**NGINX, "component": "apache", "version": "2.4"},
                {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 1},
            ],
            "Apache httpd works with PHP-FPM, not with Python.",  # the first of two
        ),
    ],
)
def test_an_incompatible_stack_is_refused_alike_by_the_api_and_the_wizard(
    team: Team, offered_catalog: None, rows: list[dict[str, Any]], message: str
) -> None:
    response = api_post(
        team.developer,
        "/projects",
        {"organization": team.org.pk, "name": "Mine", "region": "eu-central", "components": rows},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": message, "field": "component"}

    page = client_for(team.developer).post(WIZARD, wizard_data(rows, step="create"))
    assert page.status_code == 400
    html = page.content.decode()
    at = html.find('for="id_c-0-component"')  # next to the row it belongs to
    assert at >= 0 and message in html[at : at + 2500]
    assert not Project.objects.exists() and not Operation.objects.exists()


def test_every_shipped_template_goes_together(team: Team, offered_catalog: None) -> None:
    """Only assembled stacks are checked by the service (a template is curated as a whole);
    the shipped ones pass the rules anyway."""
    from stacks.models import StackTemplate

    for template in StackTemplate.objects.filter(is_active=True):
        rows = lifecycle.template_rows(template)
        assert offers.compatibility_problems(rows, template.framework) == [], template.code
