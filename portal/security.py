"""The account security page: two-factor authentication, open sessions, recent sign-ins.

allauth owns the flows (TOTP, WebAuthn, recovery codes, ending sessions); this page only
reads their rows and links to their pages.
"""

from __future__ import annotations

from typing import Any

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.usersessions.models import UserSession
from django.db.models import Q

from projects.access import AuthedRequest
from projects.models import AuditEvent

RECENT = 10


def security_context(request: AuthedRequest) -> dict[str, Any]:
    user = request.user
    authenticators = list(Authenticator.objects.filter(user=user).order_by("created_at"))
    types = {a.type for a in authenticators}
    addresses = {user.email.lower()} if user.email else set()
    addresses |= {e.lower() for e in EmailAddress.objects.filter(user=user).values_list("email", flat=True)}
    failed = Q(action="account.login_failed", actor__isnull=True)
    tried = Q(pk__in=[])
    for address in addresses:
        tried |= Q(actor_email__iexact=address)
    sign_ins = AuditEvent.objects.filter(Q(actor=user, action__startswith="account.login") | (failed & tried))
    sessions = list(UserSession.objects.filter(user=user).order_by("-last_seen_at")[:RECENT])
    current = request.session.session_key
    return {
        "totp": Authenticator.Type.TOTP in types,
        "webauthn_keys": [a for a in authenticators if a.type == Authenticator.Type.WEBAUTHN],
        "recovery_codes": Authenticator.Type.RECOVERY_CODES in types,
        "mfa_enabled": bool(types - {Authenticator.Type.RECOVERY_CODES}),
        "sessions": [(s, s.session_key == current) for s in sessions],
        "session_count": UserSession.objects.filter(user=user).count(),
        "sign_ins": list(sign_ins.order_by("-created_at", "-id")[:RECENT]),
    }
