"""HTTPS for every routed name: what the edge must be told, and what it serves.

Every host name the routes carry gets a certificate from ``STACKPORT_ACME_DIRECTORY``: each
live environment's name under the apps domain and its verified custom domains. Caddy
(``stacks.backends.edge_tls``) obtains and renews them itself. For HAProxy the portal orders
them (``order_due``, in the same pass): a name without a certificate of its own on the router,
or whose certificate ends within ``RENEW_BEFORE``, is ordered through
``stacks.backends.acme_client`` (HTTP-01 answered by the router) and installed without a
reload; a failed order is tried again after ``ORDER_RETRY``, its reason kept on the row. This
module also

- tells the edge what the database knows (``sync_edge``): automatic HTTPS on, the tokens of
  pending domain claims (the HTTP proof of control), the hosts that opted into HSTS, and the
  hosts to redirect from HTTP to HTTPS (those whose certificate is served, so a name whose
  certificate has not come yet keeps working over HTTP);
- records what the edge serves for each name (``check_certificates``, every minute from Celery
  beat): an ``EdgeCertificate`` row per routed name with its state, issuer and expiry, read by
  a TLS handshake with the edge's HTTPS listener. A name still without a certificate after
  ``ISSUE_GRACE`` is marked failed with a reason in our words (``explain``); Caddy keeps
  retrying on its own (with growing pauses), and so does this check.

Removing a domain removes its route: Caddy then stops serving (and renewing) its certificate,
and the name's row goes at the next check.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
import structlog
from django.conf import settings
from django.core.cache import cache
from django.db.models import F, Q
from django.utils import timezone

from projects.models import Environment, EnvironmentStatus
from stacks.backends import acme_client
from stacks.backends.base import EdgeRouting
from stacks.backends.edge import EdgeError
from stacks.backends.haproxy import HAProxyRouter
from stacks.models import Domain, DomainClaim, EdgeCertificate
from stacks.runtime import domains, operations

log = structlog.get_logger(__name__)

ISSUE_GRACE = timedelta(minutes=5)  # a name without a certificate this long is explained as failed
RECHECK_ACTIVE = timedelta(hours=6)
EXPIRY_WARNING = timedelta(days=14)  # Caddy renews at a third of the lifetime left: this is late
CHECK_BATCH = 200
CHALLENGE_DAYS = 7  # pending claims older than this get no HTTP challenge on the edge
CHALLENGE_LIMIT = 2000
LOG_TAIL_BYTES = 512 * 1024
RENEW_BEFORE = timedelta(days=30)  # the portal renews HAProxy's certificates this long before the end
ORDER_RETRY = timedelta(minutes=10)  # a failed order is tried again after this
ORDER_BATCH = 3  # orders per pass: each takes seconds (the CA validates over HTTP)
ORDER_LOCK = "stackport:certificates:ordering"
ORDER_TIMEOUT = 90.0

DNS_NOT_HERE = (
    "DNS does not point here: {host} {detail}. Point its A/AAAA (or CNAME) record at this "
    "platform; the certificate is requested again on its own."
)
RATE_LIMITED = (
    "Rate limited: the certificate authority allows only so many certificates per domain and "
    "week. The edge asks again later on its own."
)
CAA_REFUSED = "A CAA record of the domain does not allow the certificate authority to issue for it."
NOT_YET = "No certificate yet: the certificate authority has not issued one. The edge keeps trying."
REFUSED = "The certificate authority refused it ({reason}). The edge asks again later on its own."


# --- what the edge must know -----------------------------------------------------------------------
def https_enabled() -> bool:
    return bool(settings.STACKPORT_ACME_DIRECTORY)


def port_suffix() -> str:
    """``:<port>`` of the edge's public HTTPS port in a URL ('' for 443)."""
    port = settings.STACKPORT_EDGE_HTTPS_PUBLIC_PORT
    return "" if port == 443 else f":{port}"


def live_environments() -> Any:
    return Environment.objects.filter(current_release__isnull=False).exclude(
        status=EnvironmentStatus.DESTROYED
    )


def routed_hostnames() -> set[str]:
    """Every host name the edge routes: live environments' names and verified domains."""
    names = {environment.hostname for environment in live_environments().only("id")}
    names |= set(
        Domain.objects.filter(
            environment__in=live_environments(), claim__verified_at__isnull=False
        ).values_list("hostname", flat=True)
    )
    return names


def challenges() -> dict[str, str]:
    """Host name -> token of the pending claims the edge answers HTTP challenges for (the
    newest claim when several organizations wait on one name: only the DNS record tells them
    apart, see ``domains.check_http``)."""
    since = timezone.now() - timedelta(days=CHALLENGE_DAYS)
    pending = DomainClaim.objects.filter(
        verified_at__isnull=True, created_at__gte=since, domains__isnull=False
    ).distinct()
    return dict(pending.order_by("created_at", "pk").values_list("hostname", "token")[:CHALLENGE_LIMIT])


def active_hostnames() -> set[str]:
    return set(
        EdgeCertificate.objects.filter(status=EdgeCertificate.Status.ACTIVE).values_list(
            "hostname", flat=True
        )
    )


def redirected(names: set[str]) -> set[str]:
    """Of ``names`` (which have a certificate), those plain HTTP is sent to HTTPS for."""
    if settings.STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES:
        return names
    return {name for name in names if name != "localhost" and not name.endswith(".localhost")}


def sync_edge(router: EdgeRouting | None = None) -> bool:
    """Automatic HTTPS on (when an ACME directory is set) and the platform routes as the database
    has them; writes only what differs. True when the edge's config changed."""
    own = router is None
    if router is None:
        router = operations.edge()
    try:
        changed = router.ensure_https()
        active = active_hostnames()
        hsts = Domain.objects.filter(hsts=True, claim__verified_at__isnull=False, hostname__in=active)
        changed |= router.set_platform_routes(
            challenges=challenges(),
            hsts_hosts=set(hsts.values_list("hostname", flat=True)),
            redirect_hosts=redirected(active & routed_hostnames()),
        )
    finally:
        if own:
            router.close()
    return changed


def shown_for(environment: Environment, domains: list[Domain]) -> list[tuple[str, EdgeCertificate | None]]:
    """(host name, its certificate row or None before the first check) of the environment's
    routed names, for its page (none while HTTPS is off)."""
    if not https_enabled():
        return []
    names = [environment.hostname]
    names += sorted({d.hostname for d in domains if d.claim.verified_at is not None} - set(names))
    rows = {c.hostname: c for c in EdgeCertificate.objects.filter(hostname__in=names)}
    return [(name, rows.get(name)) for name in names]


# --- what the edge serves ----------------------------------------------------------------------------
def due(cert: EdgeCertificate, now: datetime) -> bool:
    if cert.status != EdgeCertificate.Status.ACTIVE or cert.checked_at is None:
        return True
    if cert.not_after is not None and cert.not_after - now < EXPIRY_WARNING:
        return True
    return now - cert.checked_at >= RECHECK_ACTIVE


def check_certificates() -> dict[str, int]:
    """One pass: a row per routed name (rows of names no longer routed go), then a TLS
    handshake with the edge for each row that is due; then the platform routes (redirects
    follow the result) are written if they differ."""
    report = {"checked": 0, "active": 0, "failed": 0, "removed": 0}
    if not https_enabled():
        try:
            sync_edge()  # the HTTP challenges still need their route
        except EdgeError as exc:
            log.warning("certificates_edge_unreachable", error=exc.message)
        return report
    now = timezone.now()
    wanted = routed_hostnames()
    report["removed"], _ = EdgeCertificate.objects.exclude(hostname__in=wanted).delete()
    EdgeCertificate.objects.bulk_create(
        [EdgeCertificate(hostname=name, created_at=now) for name in sorted(wanted)], ignore_conflicts=True
    )
    before = active_hostnames()
    rows = EdgeCertificate.objects.filter(
        ~Q(status=EdgeCertificate.Status.ACTIVE)
        | Q(checked_at__isnull=True)
        | Q(checked_at__lt=now - RECHECK_ACTIVE)
        | Q(not_after__lt=now + EXPIRY_WARNING)
    ).order_by("checked_at", "pk")[:CHECK_BATCH]  # read below, after this pass's orders
    with operations.edge() as router:
        if isinstance(router, HAProxyRouter):
            report["unserved"] = unserve_unrouted(router, wanted)
            report["ordered"] = order_due(router, wanted)
        for cert in rows:
            try:
                probe(router, cert, now)
            except EdgeError as exc:
                log.warning("certificates_edge_unreachable", error=exc.message)
                break
            report["checked"] += 1
            report["active"] += cert.status == EdgeCertificate.Status.ACTIVE
            report["failed"] += cert.status == EdgeCertificate.Status.FAILED
        # Also the safety net of the platform routes (a router that lost its config).
        try:
            sync_edge(router)
        except EdgeError as exc:
            log.warning("certificates_edge_unreachable", error=exc.message)
    if active_hostnames() != before:
        log.info("certificates_changed", active=len(active_hostnames()))
    return report


def unserve_unrouted(router: HAProxyRouter, wanted: set[str]) -> int:
    """Remove from ``router`` the certificates of names no longer routed (a removed domain, a
    destroyed environment): HAProxy keeps what the portal installed until told. Returns how
    many went."""
    removed = 0
    try:
        for host in sorted(set(router.certificates()) - wanted):
            removed += router.remove_certificate(host)
    except EdgeError as exc:
        log.warning("certificates_edge_unreachable", error=exc.message)
    return removed


def order_due(router: HAProxyRouter, wanted: set[str]) -> int:
    """Order a certificate for each of the routed names ``wanted`` that has none of its own on
    ``router`` or whose one ends within ``RENEW_BEFORE`` (at most ``ORDER_BATCH``, the
    longest-waiting first; none ordered within ``ORDER_RETRY``), and serve it. One pass at a
    time (a lock): an order is never sent twice at once. A failed order's reason, in our
    words, goes on the name's row. Returns the number of certificates installed."""
    if not cache.add(ORDER_LOCK, timezone.now().isoformat(), timeout=int(ORDER_TIMEOUT * (ORDER_BATCH + 1))):
        return 0
    installed = 0
    try:
        now = timezone.now()
        waiting = EdgeCertificate.objects.filter(hostname__in=wanted).filter(
            Q(ordered_at__isnull=True) | Q(ordered_at__lt=now - ORDER_RETRY)
        )
        tried = 0
        for cert in waiting.order_by(F("ordered_at").asc(nulls_first=True), "pk"):
            if tried >= ORDER_BATCH:
                break
            try:
                if not router.needs_renewal(cert.hostname, days=RENEW_BEFORE.days):
                    continue
            except EdgeError as exc:
                log.warning("certificates_edge_unreachable", error=exc.message)
                break
            tried += 1
            EdgeCertificate.objects.filter(pk=cert.pk).update(ordered_at=timezone.now())
            try:
                acme_client.issue_and_install(
                    router,
                    [cert.hostname],
                    directory_url=settings.STACKPORT_ACME_DIRECTORY,
                    ca_bundle=settings.STACKPORT_ACME_CA_ROOT or None,
                    email=settings.STACKPORT_ACME_EMAIL or None,
                    timeout=ORDER_TIMEOUT,
                )
            except EdgeError as exc:
                reason = explain(cert.hostname, exc.message)[:300]
                log.info("certificate_order_failed", host=cert.hostname, error=exc.message)
                EdgeCertificate.objects.filter(pk=cert.pk).update(error=reason)
                continue
            installed += 1
            # Probed at once (the pass's probe follows): its state shows the new certificate.
            EdgeCertificate.objects.filter(pk=cert.pk).update(checked_at=None, error="")
            log.info("certificate_installed", host=cert.hostname)
    finally:
        cache.delete(ORDER_LOCK)
    return installed


def probe(router: EdgeRouting, cert: EdgeCertificate, now: datetime) -> None:
    """Record what the edge serves for ``cert.hostname`` now."""
    info = router.served_certificate(cert.hostname)
    cert.checked_at = now
    if info is not None and info.covers(cert.hostname) and info.not_after > now:
        cert.status, cert.issuer, cert.not_after, cert.error = (
            EdgeCertificate.Status.ACTIVE,
            info.issuer[:200],
            info.not_after,
            "",
        )
    elif isinstance(router, HAProxyRouter) and cert.error:
        # The portal's order failed (HAProxy): the CA's answer is known now, no grace needed.
        cert.status = EdgeCertificate.Status.FAILED
    elif now - cert.created_at < ISSUE_GRACE:
        cert.status, cert.error = EdgeCertificate.Status.PENDING, ""
    else:  # why, found now (DNS; Caddy's log, which HAProxy has not)
        caddy_log = None if not isinstance(router, HAProxyRouter) else ""
        cert.status, cert.error = EdgeCertificate.Status.FAILED, explain(cert.hostname, caddy_log)[:300]
    cert.save(update_fields=["status", "issuer", "not_after", "error", "checked_at"])


# --- why not ------------------------------------------------------------------------------------------
def explain(host: str, error: str | None = None) -> str:
    """Why ``host`` has no certificate, in our words: its DNS first (does it point at the edge?),
    then the certificate authority's answer: ``error`` (the portal's order), else the last one
    in the edge's log (Caddy's)."""
    detail = dns_detail(host)
    if detail:
        return DNS_NOT_HERE.format(host=host, detail=detail)
    return translate(last_acme_error(host) if error is None else error)


def dns_detail(host: str) -> str:
    """'' when ``host`` resolves to the edge (or the edge's addresses are not configured and it
    resolves at all), else what it resolves to."""
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = domains.resolver().resolve(host, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return "does not exist in DNS"
        except dns.exception.DNSException:
            continue
        found += [record.to_text() for record in answer.rrset or []]
    if not found:
        return "has no A or AAAA record"
    ours = {address.strip() for address in settings.STACKPORT_EDGE_PUBLIC_ADDRESSES if address.strip()}
    if ours and not ours & set(found):
        return f"resolves to {', '.join(sorted(found))}, not to {', '.join(sorted(ours))}"
    return ""


def translate(error: str) -> str:
    """The certificate authority's error (as Caddy logged it) in our words."""
    if not error:
        return NOT_YET
    lowered = error.lower()
    if "ratelimited" in lowered or "rate limit" in lowered or "too many" in lowered:
        return RATE_LIMITED
    if ":caa" in lowered:
        return CAA_REFUSED
    if any(
        word in lowered
        for word in (":dns", "nxdomain", "no such host", "connection refused", ":connection", "timeout")
    ):
        return DNS_NOT_HERE.format(host="the name", detail="could not be reached at this platform by the CA")
    return REFUSED.format(reason=error.strip()[:150])


def last_acme_error(host: str) -> str:
    """The last error Caddy logged while getting ``host``'s certificate ('' when none or no log)."""
    path = Path(settings.STACKPORT_EDGE_LOG)
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - LOG_TAIL_BYTES))
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    last = ""
    for line in tail.splitlines():
        if host not in line or '"error"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        names = [entry.get("identifier"), *(entry.get("identifiers") or [])]
        if host in names and isinstance(entry.get("error"), str):
            last = entry["error"]
    return last
