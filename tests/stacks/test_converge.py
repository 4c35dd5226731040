"""Every operation ends in a defined state, whatever step fails (issue: converge).

Against the in-memory backend with injected faults; the edge and the site check are
replaced by functions the tests control (the real ones run in the engine tests). What is
checked each time: the environment is running, degraded or failed (never deploying with
nothing in flight), the rows a customer sees match what runs, a release that never ran is
no rollback target, and a release that ran keeps the exact images it ran."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from projects.services import ServiceError
from stacks.backends.base import BackendError
from stacks.backends.edge import EdgeError
from stacks.backends.memory import MemoryBackend
from stacks.models import ComponentVersion, Operation, OperationStatus, VersionStatus
from stacks.runtime import lifecycle, operations
from stacks.runtime.operations import OperationFailed, run_operation
from tests.conftest import Team, add_memory_host

pytestmark = pytest.mark.django_db


class Site:
    """The site check and the edge, as the tests want them to answer."""

    def __init__(self) -> None:
        self.failures: list[Exception] = []
        self.routes: list[Exception] = []

    def check(self, *args: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)

    def sync(self, *args: Any) -> bool:
        if self.routes:
            raise self.routes.pop(0)
        return True


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Site:
    from stacks import tasks

    fake = Site()
    monkeypatch.setattr(operations, "_check_site", fake.check)
    monkeypatch.setattr(operations, "sync_routes", fake.sync)
    monkeypatch.setattr(tasks.run_operation_task, "apply_async", lambda *a, **k: None)
    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *a, **k: None)
    return fake


@pytest.fixture
def env(team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], site: Site) -> Environment:
    environment = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Shop", region="eu-central", template="lamp"
    )
    add_memory_host(environment)
    assert run_pending(environment) == OperationStatus.SUCCEEDED
    return environment


def run_pending(environment: Environment) -> str | None:
    op = environment.operations.get(status__in=["queued", "running"])
    result = run_operation(op.pk)
    environment.refresh_from_db()
    return result


def rows(environment: Environment) -> dict[str, tuple[str, int, str]]:
    return {sc.name: (sc.version.version, sc.replicas, sc.size.code) for sc in environment.components.all()}


def applied(environment: Environment) -> dict[str, tuple[str, int, str]]:
    assert environment.current_release is not None
    return {
        r["name"]: (r["version"], r["replicas"], r["size"])
        for r in environment.current_release.spec["components"]
    }


def test_a_deploy_that_ran_pins_its_images_and_is_a_rollback_target(env: Environment) -> None:
    release = env.current_release
    assert release is not None and release.ran_at is not None
    versions = {sc.name: sc.version.pinned_reference for sc in env.components.select_related("version")}
    assert release.images == versions
    assert rows(env) == applied(env)


@pytest.mark.parametrize("step", ["check", "route", "apply"])
def test_a_failed_upgrade_puts_the_previous_release_back_and_the_rows_with_it(
    team: Team, env: Environment, site: Site, memory_backend: type[MemoryBackend], step: str
) -> None:
    before = rows(env)
    serving = env.current_release
    assert serving is not None
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=3, size="medium")
    assert rows(env)["web"] == (before["web"][0], 3, "medium")  # desired: the target
    if step == "check":
        site.failures.append(OperationFailed("shop.example answers 502 through the edge"))
    elif step == "route":
        site.routes.append(EdgeError("the edge refused the route", permanent=True))
    else:
        memory_backend.fail_next("apply", BackendError("the new replicas did not start", permanent=True))

    assert run_pending(env) == OperationStatus.FAILED
    op = env.operations.order_by("-id").first()
    assert op is not None and "Release 1 is serving again." in op.error
    assert env.status == EnvironmentStatus.RUNNING and env.current_release == serving
    assert env.status_detail.startswith("Scale failed: ") and env.status_detail.endswith(
        "Release 1 is serving again."
    )
    assert rows(env) == before == applied(env)  # pages, quotas and metering see what runs
    failed = env.releases.get(number=2)
    assert failed.ran_at is None and failed.images == {}
    with pytest.raises(ServiceError, match="Release 2 never ran"):
        lifecycle.rollback(environment=env, actor=team.owner, release_number=2)


def test_a_first_deploy_that_fails_anywhere_ends_failed_with_the_fix(
    team: Team, offered_catalog: None, memory_backend: type[MemoryBackend], site: Site
) -> None:
    environment = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="New", region="eu-central", template="static-site"
    )
    add_memory_host(environment)
    site.routes.append(EdgeError("the edge refused the route", permanent=True))
    assert run_pending(environment) == OperationStatus.FAILED
    # The containers started, the route did not: some of it runs, none of it is reachable.
    assert environment.status in (EnvironmentStatus.DEGRADED, EnvironmentStatus.FAILED)
    assert environment.status != EnvironmentStatus.DEPLOYING
    assert "the edge refused the route" in environment.status_detail
    assert environment.current_release is None


def test_a_repair_that_fails_its_site_check_is_degraded_not_deploying(env: Environment, site: Site) -> None:
    assert env.current_release is not None
    op = Operation.objects.create(
        environment=env,
        kind="deploy",
        release=env.current_release,
        previous_release=env.current_release,
        params={"reason": "reconcile"},
    )
    site.failures.append(OperationFailed("shop answers 500 through the edge"))
    assert run_operation(op.pk) == OperationStatus.FAILED
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.DEGRADED
    assert (
        env.status_detail
        == "The containers run but the site does not answer: shop answers 500 through the edge."
    )


def test_an_unexpected_error_fails_the_operation_instead_of_looping(
    env: Environment, team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("format() got an unexpected keyword")

    monkeypatch.setattr(operations, "build_spec", broken)
    assert run_pending(env) == OperationStatus.FAILED
    op = env.operations.order_by("-id").first()
    assert op is not None and op.error.startswith("internal error (TypeError)")
    assert env.status != EnvironmentStatus.DEPLOYING and not op.is_active


def test_an_operation_interrupted_again_and_again_gives_up(
    env: Environment, team: Team, settings: Any
) -> None:
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=2)
    op = env.operations.get(status="queued")
    Operation.objects.filter(pk=op.pk).update(attempts=settings.STACKPORT_OPERATION_MAX_ATTEMPTS + 3)
    assert run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    env.refresh_from_db()
    assert "interrupted" in op.error and env.status == EnvironmentStatus.RUNNING
    assert rows(env) == applied(env)


def test_an_end_of_life_version_keeps_running_the_stacks_on_it(team: Team, env: Environment) -> None:
    """Scale, stop, start and roll back a stack whose version went end of life (and whose image
    was rebuilt meanwhile: the release runs the bytes it ran); a new stack on it is refused
    with the deadline."""
    php = env.components.select_related("version").get(name="php").version
    ran_with = php.pinned_reference
    ComponentVersion.objects.filter(pk=php.pk).update(
        status=VersionStatus.END_OF_LIFE, eol=date(2026, 11, 30), digest="sha256:" + "e" * 64
    )

    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=2)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    lifecycle.set_running(environment=env, actor=team.owner, running=False)
    assert run_pending(env) == OperationStatus.SUCCEEDED and env.status == EnvironmentStatus.STOPPED
    lifecycle.set_running(environment=env, actor=team.owner, running=True)
    assert run_pending(env) == OperationStatus.SUCCEEDED and env.status == EnvironmentStatus.RUNNING
    lifecycle.rollback(environment=env, actor=team.owner, release_number=1)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    assert env.current_release is not None and env.current_release.number == 1
    assert env.current_release.images["php"] == ran_with  # not the rebuilt digest

    with pytest.raises(ServiceError) as refused:
        lifecycle.create_project(
            organization=team.org,
            actor=team.owner,
            name="Late",
            region="eu-central",
            components=[
                {
                    "name": "php",
                    "component": "php-fpm",
                    "version": php.version,
                    "size": "small",
                    "replicas": 1,
                }
            ],
        )
    assert "is end of life" in refused.value.message
    assert "Its end of life was 2026-11-30." in refused.value.message


def test_the_page_shows_desired_and_applied_while_they_differ(team: Team, env: Environment) -> None:
    from tests.conftest import client_for

    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=3)
    html = client_for(team.owner).get(f"/environments/{env.pk}/").content.decode()
    assert "scaling to 3 (1 run now)…" in html


def test_quotas_count_the_larger_of_desired_and_applied_while_pending(team: Team, env: Environment) -> None:
    from billing.quotas import current_totals

    settled = current_totals(team.org)
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=1, size="small")
    web = env.components.get(name="web")
    assert web.size.code == "small"
    pending = current_totals(team.org)
    # Scaling down: until it ran, the larger (applied) size still counts.
    assert pending.cpus == settled.cpus and pending.memory_mb == settled.memory_mb


def test_metering_bills_what_ran_not_what_was_asked(team: Team, env: Environment) -> None:
    from billing.metering import interval_start, meter_interval
    from billing.models import UsageRecord

    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=3)
    meter_interval(interval_start(timezone.now()), environments=[Environment.objects.get(pk=env.pk)])
    web = UsageRecord.objects.get(environment=env, component="web")
    assert web.replicas == 1


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("host", "db.internal", True),
        ("EMPTY_BRACES", "{}", True),
        ("PATHLIKE", "${PATH}", True),
        ("FORMAT", "{host}:{port} %s %(x)s", True),
        ("BIG", "x" * 10_240, True),
        ("{}", "v", False),
        ("${PATH}", "v", False),
        ("K" * 10_240, "v", False),
    ],
)
def test_customer_variables_are_stored_byte_exact_or_refused_never_looping(
    team: Team, env: Environment, name: str, value: str, accepted: bool
) -> None:
    if not accepted:
        with pytest.raises(ServiceError):
            lifecycle.set_variable(environment=env, actor=team.owner, name=name, value=value)
        return
    lifecycle.set_variable(environment=env, actor=team.owner, name=name, value=value)
    assert env.variables.get(name=name).value == value
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=2)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    spec = MemoryBackend.stack(env.key).spec
    assert spec is not None
    php = next(c for c in spec.components if c.name == "php")
    assert dict(php.env)[name] == value


def test_an_organization_has_a_limit_on_operations_in_flight(
    team: Team, env: Environment, settings: Any
) -> None:
    other = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Other", region="eu-central", template="static-site"
    )
    assert run_pending(other) == OperationStatus.SUCCEEDED
    settings.STACKPORT_ORG_MAX_ACTIVE_OPERATIONS = 1
    lifecycle.scale(environment=env, actor=team.owner, component="web", replicas=2)
    with pytest.raises(ServiceError) as refused:
        lifecycle.set_running(environment=other, actor=team.owner, running=False)
    assert refused.value.status == 429 and "at most 1 at a time" in refused.value.message
    assert not other.operations.filter(status="queued").exists()
    # The hoster's own operations (no actor: repairs, clean-ups) are not limited.
    lifecycle.set_running(environment=other, actor=None, running=False)


def test_changed_variables_are_pending_until_a_redeploy_applies_them(team: Team, env: Environment) -> None:
    from tests.conftest import client_for

    client = client_for(team.owner)
    assert 'id="variables-pending"' not in client.get(f"/environments/{env.pk}/").content.decode()
    lifecycle.set_variable(environment=env, actor=team.owner, name="GREETING", value="hello")
    html = client.get(f"/environments/{env.pk}/").content.decode()
    assert 'id="variables-pending"' in html and "Redeploy to apply" in html

    response = client.post(f"/environments/{env.pk}/redeploy/")
    assert response.status_code == 302
    assert run_pending(env) == OperationStatus.SUCCEEDED
    assert env.current_release is not None and env.current_release.number == 1  # the same release
    spec = MemoryBackend.stack(env.key).spec
    assert spec is not None
    assert dict(next(c for c in spec.components if c.name == "php").env)["GREETING"] == "hello"
    assert 'id="variables-pending"' not in client.get(f"/environments/{env.pk}/").content.decode()

    lifecycle.set_running(environment=env, actor=team.owner, running=False)
    assert run_pending(env) == OperationStatus.SUCCEEDED
    with pytest.raises(ServiceError, match="stopped; start it"):
        lifecycle.redeploy(environment=env, actor=team.owner)
