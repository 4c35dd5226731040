"""Billing as the stacks' policy (``STACKPORT_STACK_POLICY``): the plan's quotas and the
region's list prices."""

from __future__ import annotations

from typing import Any

from billing import pricing, quotas
from projects.models import Environment, Organization
from stacks.runtime.policy import StackPolicy


class BillingPolicy(StackPolicy):
    def check_stack(
        self,
        *,
        organization: Organization,
        rows: list[dict[str, Any]] | None,
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
        rows: list[dict[str, Any]] | None,
        environment: Environment | None = None,
    ) -> list[str]:
        return quotas.stack_problems(organization=organization, rows=rows, environment=environment)

    def estimate_monthly(self, *, organization: Organization, region: Any, rows: list[dict[str, Any]]) -> Any:
        return pricing.estimate_monthly(organization=organization, region=region, rows=rows)
