"""Signals from Django auth and allauth, recorded in the audit log (nothing else happens here)."""

from __future__ import annotations

from typing import Any

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.contrib.auth import signals as auth_signals
from django.dispatch import receiver

from projects.services import Origin, record_audit_event


@receiver(auth_signals.user_logged_in, dispatch_uid="audit_login")
def _login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    record_audit_event(action="account.login", actor=user, origin=Origin.from_request(request))


@receiver(auth_signals.user_logged_out, dispatch_uid="audit_logout")
def _logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        record_audit_event(action="account.logout", actor=user, origin=Origin.from_request(request))


@receiver(auth_signals.user_login_failed, dispatch_uid="audit_login_failed")
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    # Django masks the password in ``credentials``; only the address tried is kept.
    tried = str(credentials.get("email") or credentials.get("username") or "")[:254]
    record_audit_event(action="account.login_failed", actor_email=tried, origin=Origin.from_request(request))


@receiver(account_signals.password_changed, dispatch_uid="audit_password_changed")
@receiver(account_signals.password_set, dispatch_uid="audit_password_set")
@receiver(account_signals.password_reset, dispatch_uid="audit_password_reset")
def _password(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    record_audit_event(action="account.password_changed", actor=user, origin=Origin.from_request(request))


@receiver(account_signals.email_confirmed, dispatch_uid="audit_email_confirmed")
def _email_confirmed(sender: Any, request: Any, email_address: Any, **kwargs: Any) -> None:
    record_audit_event(
        action="account.email_verified",
        actor=email_address.user,
        target=email_address.email,
        origin=Origin.from_request(request),
    )


@receiver(mfa_signals.authenticator_added, dispatch_uid="audit_mfa_added")
@receiver(mfa_signals.authenticator_removed, dispatch_uid="audit_mfa_removed")
@receiver(mfa_signals.authenticator_reset, dispatch_uid="audit_mfa_reset")
def _mfa(sender: Any, request: Any, user: Any, authenticator: Any, signal: Any, **kwargs: Any) -> None:
    change = {
        mfa_signals.authenticator_added: "added",
        mfa_signals.authenticator_removed: "removed",
        mfa_signals.authenticator_reset: "reset",
    }[signal]
    record_audit_event(
        action=f"account.mfa_{change}",
        actor=user,
        target=authenticator.type,
        origin=Origin.from_request(request),
    )
