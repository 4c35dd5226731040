"""What a customer's stack may use and what it costs: decided above stacks, by billing.

Stacks sits below billing (billing prices what stacks run), so it never imports it; the
policy is a small class named by ``STACKPORT_STACK_POLICY`` (billing's plans and quotas in
this portal), resolved lazily and cached, like a backend. The default allows everything and
shows no price, for a portal without billing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

from projects.models import Environment, Organization
from stacks.backends.base import EgressPolicy

if TYPE_CHECKING:  # spec asks the policy, so the row type is only named here
    from stacks.runtime.spec import ComponentRow


@dataclass(frozen=True)
class BackupPolicy:
    """How an organization's environments are backed up: ``schedule`` (off, hourly, daily,
    weekly) and how many daily and weekly backups are kept per component."""

    schedule: str = "daily"
    keep_daily: int = 7
    keep_weekly: int = 4


class StackPolicy:
    """Allows every stack, prices nothing. Subclass it and name the subclass in the setting."""

    def check_stack(
        self,
        *,
        organization: Organization,
        rows: list[ComponentRow] | None,
        environment: Environment | None = None,
        extra_domains: int = 0,
    ) -> None:
        """Raise ``ServiceError`` (402) when the stack after a change needs more than allowed.
        ``rows``: the component rows after the change (None: unchanged); ``environment``: the
        one changed, None for a new project. Called before anything is written."""

    def stack_problems(
        self,
        *,
        organization: Organization,
        rows: list[ComponentRow] | None,
        environment: Environment | None = None,
    ) -> list[str]:
        """The messages ``check_stack`` would raise, to show before the customer confirms."""
        return []

    def estimate_monthly(self, *, organization: Organization, region: Any, rows: list[ComponentRow]) -> Any:
        """A month of running ``rows`` in ``region`` at list prices (shown in the wizard), or None."""
        return None

    def backup_policy(self, *, organization: Organization) -> BackupPolicy:
        """The organization's backup schedule and retention."""
        return BackupPolicy()

    def check_backup(self, *, organization: Organization, stored_bytes: int) -> None:
        """Raise ``ServiceError`` (402) when the organization may not store another backup
        (``stored_bytes``: what its backups hold now)."""

    def egress_policy(self, *, organization: Organization) -> EgressPolicy:
        """Where the organization's containers may connect to (docs/security.md, "Network
        egress"); the default, a portal without plans, lets them reach the internet."""
        return EgressPolicy(internet=True)

    def volume_size_gb(self, *, organization: Organization, volume: dict[str, Any]) -> int | None:
        """The size a new volume of the organization's stack is made with and held to (the
        catalog's volume entry ``volume``), in GB; None: no limit (the default)."""
        return None


@cache
def _policy(path: str) -> StackPolicy:
    return import_string(path)()  # type: ignore[no-any-return]


def stack_policy() -> StackPolicy:
    return _policy(settings.STACKPORT_STACK_POLICY)
