"""Plan limits, enforced in stacks.runtime.lifecycle before anything is written."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing import quotas
from billing.models import Subscription
from projects.models import Project
from projects.services import ServiceError
from stacks.models import Domain, Operation, Release, StackComponent
from stacks.runtime import lifecycle
from tests.billing.conftest import make_plan, new_stack, settle

pytestmark = pytest.mark.django_db

WEB = {"name": "web", "component": "nginx", "version": "", "size": "small", "replicas": 1, "public": True}


def _rows(**changes: Any) -> list[dict[str, Any]]:
    return [dict(WEB, **changes)]


def test_no_plan_at_all_means_no_limits(team: Any, offered_catalog: None) -> None:
    assert quotas.plan_for(team.org) is None
    quotas.check_stack(organization=team.org, rows=_rows(replicas=10, size="xlarge"))
    assert all(q.limit is None and not q.nearly_used for q in quotas.usage_summary(team.org))


def test_organization_without_subscription_is_on_the_default_plan(team: Any, offered_catalog: None) -> None:
    plan = make_plan(is_default=True, max_cpus=Decimal("2"))
    make_plan("other", max_cpus=Decimal("8"))
    assert quotas.plan_for(team.org) == plan


def test_check_stack_names_the_limit_the_need_and_the_way_out(team: Any, offered_catalog: None) -> None:
    make_plan("starter", is_default=True, max_cpus=Decimal("2"))
    with pytest.raises(ServiceError) as caught:
        quotas.check_stack(organization=team.org, rows=_rows(size="large", replicas=3))
    assert caught.value.status == 402
    assert caught.value.field == "size"
    assert caught.value.message == (
        "Your plan Starter allows 2 CPUs; this change needs 3 CPUs. Choose a bigger plan on the Billing page."
    )


def test_stack_problems_lists_every_exceeded_limit(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_cpus=Decimal("0.5"), max_memory_mb=256, max_replicas=1, max_projects=0)
    problems = quotas.stack_problems(organization=team.org, rows=_rows(replicas=3))
    assert len(problems) == 4
    assert "allows 0 projects; this change needs 1 project" in problems[0]
    assert any("allows 1 replica per component; web needs 3" in p for p in problems)
    assert quotas.stack_problems(organization=team.org, rows=_rows()) == [problems[0]]


def test_storage_counts_the_volumes_of_stateful_components(
    team: Any, offered_catalog: None, settings: Any
) -> None:
    settings.STACKPORT_VOLUME_GB = 5
    make_plan(is_default=True, max_storage_gb=4)
    db = {"name": "db", "component": "mariadb", "version": "", "size": "small", "replicas": 1}
    problems = quotas.stack_problems(organization=team.org, rows=[WEB, db])
    assert problems == [
        "Your plan Tiny allows 4 GB of storage; this change needs 5 GB of storage. "
        "Choose a bigger plan on the Billing page."
    ]


def test_create_project_beyond_the_plan_writes_nothing(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_cpus=Decimal("0.5"))
    with pytest.raises(ServiceError, match=r"allows 0\.5 CPUs; this change needs 0\.75 CPUs") as caught:
        lifecycle.create_project(
            organization=team.org, actor=team.developer, name="Too big", region="eu-central", template="lamp"
        )
    assert caught.value.status == 402
    assert not Project.objects.exists()
    assert not Operation.objects.exists()
    assert not Release.objects.exists()


def test_project_limit_counts_existing_projects(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_projects=1)
    new_stack(team.org, team.developer)
    with pytest.raises(ServiceError, match="allows 1 project; this change needs 2 projects"):
        new_stack(team.org, team.developer, name="Second")
    # Another organization's projects do not count.
    new_stack(team.outsider_org, team.outsider)
    assert Project.objects.count() == 2


def test_scale_beyond_the_plan_is_refused_and_nothing_starts(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_replicas=2, max_cpus=Decimal("4"))
    env = new_stack(team.org, team.developer)
    before = (Operation.objects.count(), Release.objects.count())
    with pytest.raises(ServiceError, match="allows 2 replicas per component; web needs 3") as caught:
        lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=3)
    assert caught.value.status == 402
    assert (Operation.objects.count(), Release.objects.count()) == before
    assert StackComponent.objects.get(environment=env, name="web").replicas == 1
    # Within the plan it goes through.
    lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=2)
    assert StackComponent.objects.get(environment=env, name="web").replicas == 2


def test_scaling_down_is_allowed_over_the_limits(team: Any, offered_catalog: None) -> None:
    env = new_stack(team.org, team.developer)
    lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=4, size="large")
    settle(env)
    make_plan(is_default=True, max_cpus=Decimal("1"), max_replicas=1)
    lifecycle.scale(environment=env, actor=team.developer, component="web", replicas=3)
    assert StackComponent.objects.get(environment=env, name="web").replicas == 3


def test_starting_a_stopped_stack_counts_again(team: Any, offered_catalog: None) -> None:
    first = new_stack(team.org, team.developer)
    lifecycle.set_running(environment=first, actor=team.developer, running=False)
    settle(first)
    make_plan(is_default=True, max_cpus=Decimal("0.25"))
    second = new_stack(team.org, team.developer, name="Second")  # the first is stopped: it fits
    assert second.desired_running
    before = Operation.objects.count()
    with pytest.raises(ServiceError, match=r"allows 0\.25 CPUs; this change needs 0\.5 CPUs"):
        lifecycle.set_running(environment=first, actor=team.developer, running=True)
    first.refresh_from_db()
    assert not first.desired_running
    assert Operation.objects.count() == before
    # Stopping is never refused.
    lifecycle.set_running(environment=second, actor=team.developer, running=False)


def test_custom_domain_limit(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_custom_domains=1)
    env = new_stack(team.org, team.developer)
    lifecycle.add_domain(environment=env, actor=team.developer, hostname="shop.example.com")
    with pytest.raises(
        ServiceError, match="allows 1 custom domain; this change needs 2 custom domains"
    ) as caught:
        lifecycle.add_domain(environment=env, actor=team.developer, hostname="www.example.com")
    assert caught.value.field == "hostname"
    assert Domain.objects.count() == 1


def test_subscription_plan_wins_over_the_default(team: Any, offered_catalog: None) -> None:
    make_plan("small", is_default=True, max_cpus=Decimal("0.25"))
    big = make_plan("big", max_cpus=Decimal("8"))
    Subscription.objects.create(organization=team.org, plan=big)
    quotas.check_stack(organization=team.org, rows=_rows(replicas=4, size="large"))


def test_usage_summary_flags_nearly_used(team: Any, offered_catalog: None) -> None:
    make_plan(is_default=True, max_cpus=Decimal("0.3"), max_projects=5)
    new_stack(team.org, team.developer)
    uses = {q.resource: q for q in quotas.usage_summary(team.org)}
    assert uses["cpus"].used == Decimal("0.25") and uses["cpus"].limit == Decimal("0.3")
    assert uses["cpus"].nearly_used
    assert uses["projects"].used == 1 and not uses["projects"].nearly_used
    assert uses["memory_mb"].limit is None and not uses["memory_mb"].nearly_used
