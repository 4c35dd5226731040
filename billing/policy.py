"""Billing as the stacks' policy (``STACKPORT_STACK_POLICY``): the plan's quotas and the
region's list prices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from billing import pricing, quotas
from projects.models import Environment, Organization
from projects.services import ServiceError
from stacks.backends.base import EgressPolicy
from stacks.runtime.policy import BackupPolicy, StackPolicy


class BillingPolicy(StackPolicy):
    def check_stack(
        self,
        *,
        organization: Organization,
        rows: Sequence[Mapping[str, Any]] | None,
        environment: Environment | None = None,
        extra_domains: int = 0,
    ) -> None:
        quotas.check_stack(
            organization=organization, rows=rows, environment=environment, extra_domains=extra_domains
        )

    def stack_problems(
        self,
        *,
        organization: Organization,
        rows: Sequence[Mapping[str, Any]] | None,
        environment: Environment | None = None,
    ) -> list[str]:
        return quotas.stack_problems(organization=organization, rows=rows, environment=environment)

    def estimate_monthly(
        self, *, organization: Organization, region: Any, rows: Sequence[Mapping[str, Any]]
    ) -> Any:
        return pricing.estimate_monthly(organization=organization, region=region, rows=rows)

    def volume_size_gb(self, *, organization: Organization, volume: dict[str, Any]) -> int | None:
        """The plan's volume size (None: no plan, or a plan without one: no limit)."""
        plan = quotas.plan_for(organization)
        return plan.volume_size_gb if plan is not None else None

    def egress_policy(self, *, organization: Organization) -> EgressPolicy:
        """The plan's internet switch; no plan: no internet."""
        plan = quotas.plan_for(organization)
        return EgressPolicy(internet=plan is not None and plan.internet_egress)

    def backup_policy(self, *, organization: Organization) -> BackupPolicy:
        plan = quotas.plan_for(organization)
        if plan is None:
            return BackupPolicy()
        return BackupPolicy(
            schedule=plan.backup_schedule,
            keep_daily=plan.backup_keep_daily,
            keep_weekly=plan.backup_keep_weekly,
        )

    def check_backup(self, *, organization: Organization, stored_bytes: int) -> None:
        plan = quotas.plan_for(organization)
        if plan is None or plan.max_backup_gb is None:
            return
        if stored_bytes >= plan.max_backup_gb * 1024**3:
            used = stored_bytes / 1024**3
            raise ServiceError(
                f"Your backups hold {used:.1f} GB, the {plan.name} plan's limit is {plan.max_backup_gb} GB: "
                "remove older backups' environments or change the plan.",
                status=402,
            )
