"""Who may serve a host name: claims on custom domains and their proof of control.

A host name belongs to one organization. An organization claims it when it adds its first
domain on that name (``stacks.runtime.lifecycle.add_domain`` is the only door) and proves
control by creating a DNS TXT record ``_stackport-challenge.<host>`` holding the claim's
token. Until then the domains stay pending and are not routed. Path prefixes split a host
only among the environments of the organization that holds it (one claim, one proof).

The alternative proof is over HTTP: the edge answers ``/.well-known/stackport-challenge/<token>``
on the pending name (``stacks.runtime.certificates.sync_edge``), and the check fetches
``http://<name>/.well-known/stackport-challenge/<token>`` itself, from the address the resolvers
give (public addresses only, pinned; no redirects; a few bytes, five seconds in all). It proves the
name points at this platform, not who controls it, so it is refused (the TXT record is then
needed) while another organization waits on the name, when another organization holds or
held the name or a name above it verified (``VerifiedName`` remembers, after release too),
and when the name looks covered by a wildcard (a random sibling resolves to the same address).

Several organizations may wait on the same name with their own tokens, so nobody can block a
name they do not control; the first one whose record is seen holds it (a partial unique
index makes that race safe), and from then on the name is refused to others (409).

The periodic check (``check_pending``, every minute by Celery beat) asks the resolvers of
``STACKPORT_DNS_RESOLVERS`` (the system's when empty), less often as a claim gets older.
Support can mark a claim verified (``mark_verified``, audited); a trusted single-tenant
install may turn verification off (``STACKPORT_DOMAIN_VERIFICATION=off``): claims are then
verified when made, and one organization still cannot take another's name.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import dns.exception
import dns.inet
import dns.rdatatype
import dns.resolver
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.models import Organization, Role
from projects.services import Origin, ServiceError, record_audit_event, require_role
from stacks import tasks
from stacks.backends.edge import EdgeError, normalize_host
from stacks.backends.edge_tls import CHALLENGE_PATH
from stacks.models import Domain, DomainClaim, VerifiedName
from stacks.runtime.addresses import is_public

if TYPE_CHECKING:
    from projects.models import User

RECORD_PREFIX = "_stackport-challenge"
OPERATE_PERMISSION = "projects.operate_stacks"
TAKEN = "This domain is already in use. It belongs to another organization."
# How often a pending claim is looked up, by its age: eager at first, then rarely.
CHECK_EVERY = ((timedelta(hours=1), timedelta(minutes=1)), (timedelta(days=7), timedelta(minutes=15)))
CHECK_EVERY_LATER = timedelta(hours=6)
CHECK_BATCH = 200
HTTP_DEADLINE_SECONDS = 5.0  # the whole HTTP check: connect, request, headers, body
HTTP_MAX_BYTES = 1024
HTTP_MAX_HEADER_LINES = 32
HTTP_MAX_HEADER_BYTES = 8192
WILDCARD_PROBE_PREFIX = "sp-"


# --- which names can be claimed --------------------------------------------------------------------
def platform_domains() -> list[str]:
    """The names (and everything under them) that belong to the platform itself."""
    names = [settings.STACKPORT_APPS_DOMAIN, *settings.STACKPORT_RESERVED_DOMAINS]
    portal_host = urlsplit(settings.STACKPORT_BASE_URL).hostname or ""
    try:
        ipaddress.ip_address(portal_host)
    except ValueError:
        names.append(portal_host)
    found = []
    for name in names:
        try:
            found.append(normalize_host(name.strip().strip(".")))
        except EdgeError:
            continue  # "localhost" and the like: nothing a customer could claim anyway
    return found


def refuse_unclaimable(raw: str, host: str = "") -> None:
    """Wildcards and the platform's own names cannot be claimed (``host``: the normalized
    name, once ``raw`` passed normalization)."""
    if "*" in raw:
        raise ServiceError(
            "Wildcard names cannot be claimed: add each host name on its own "
            "(www.example.com, shop.example.com).",
            field="hostname",
        )
    if not host:
        return
    apps = settings.STACKPORT_APPS_DOMAIN.lower()
    if host == apps or host.endswith("." + apps):
        raise ServiceError("Names under the apps domain are given by Stackport.", field="hostname")
    for name in platform_domains():
        if host == name or host.endswith("." + name):
            raise ServiceError(
                f"{name} belongs to the platform: it and the names under it cannot be claimed.",
                field="hostname",
            )


def claim_for(*, organization: Organization, hostname: str) -> DomainClaim:
    """The organization's claim on ``hostname``, made now when it has none (pending, or
    verified when verification is off). Refused (409) when another organization holds it."""
    taken = (
        DomainClaim.objects.filter(hostname=hostname, verified_at__isnull=False)
        .exclude(organization=organization)
        .exists()
    )
    if taken:
        raise ServiceError(TAKEN, field="hostname", status=409)
    claim, created = DomainClaim.objects.get_or_create(organization=organization, hostname=hostname)
    if created and settings.STACKPORT_DOMAIN_VERIFICATION:
        edge_later()  # the edge answers its HTTP challenge
    if created and not settings.STACKPORT_DOMAIN_VERIFICATION:
        claim.verified_at, claim.method = timezone.now(), DomainClaim.Method.TRUSTED
        try:
            with transaction.atomic():
                claim.save(update_fields=["verified_at", "method"])
                remember_owner(claim)
        except IntegrityError as exc:  # another organization got there in between
            raise ServiceError(TAKEN, field="hostname", status=409) from exc
    return claim


def release_if_unused(claim_id: int) -> None:
    """A claim whose last domain is gone frees the name (a later claim needs a new proof)."""
    deleted, _ = DomainClaim.objects.filter(pk=claim_id, domains__isnull=True).delete()
    if deleted:
        edge_later()  # its challenge, redirect and HSTS go from the edge


def status(domain: Domain) -> dict[str, Any]:
    """What the API and the page show of a domain's proof of control."""
    claim = domain.claim
    return {
        "status": "verified" if claim.verified_at else "pending",
        "verified_at": claim.verified_at,
        "record_type": "TXT",
        "record_name": claim.record_name,
        "record_value": claim.token,
        "last_checked_at": claim.last_checked_at,
        "check_error": claim.check_error,
        "http_check_url": challenge_url(claim),
    }


def challenge_url(claim: DomainClaim) -> str:
    """Where the HTTP proof fetches the claim's token (the edge answers it while pending)."""
    port = settings.STACKPORT_DOMAIN_HTTP_PORT
    netloc = claim.hostname if port == 80 else f"{claim.hostname}:{port}"
    return f"http://{netloc}{CHALLENGE_PATH}{claim.token}"


# --- looking the record up -------------------------------------------------------------------------
def resolver() -> dns.resolver.Resolver:
    """A resolver on ``STACKPORT_DNS_RESOLVERS`` ("ip" or "ip:port"; IPv6 as "[ip]:port"), or
    the system's. Nothing is cached between lookups: each check asks again."""
    configured = [r.strip() for r in settings.STACKPORT_DNS_RESOLVERS if r.strip()]
    res = dns.resolver.Resolver(configure=not configured)
    if configured:
        res.nameservers, ports = [], {}
        for entry in configured:
            address, port = entry, 53
            if entry.startswith("["):
                address, _, rest = entry[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else 53
            elif entry.count(":") == 1:
                address, port_text = entry.split(":")
                port = int(port_text)
            if not dns.inet.is_address(address):
                raise ValueError(f"STACKPORT_DNS_RESOLVERS: {entry!r} is not an IP address")
            res.nameservers.append(address)
            ports[address] = port
        res.nameserver_ports = ports
    res.lifetime = settings.STACKPORT_DNS_TIMEOUT_SECONDS
    res.timeout = min(2.0, settings.STACKPORT_DNS_TIMEOUT_SECONDS)
    res.cache = None
    return res


def lookup(claim: DomainClaim) -> str:
    """'' when the TXT record holds the claim's token, else why not (for the customer)."""
    name = claim.record_name
    try:
        answer = resolver().resolve(name, dns.rdatatype.TXT, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return f"No TXT record {name} was found yet."
    except (dns.resolver.LifetimeTimeout, dns.exception.Timeout):
        return "The DNS servers did not answer in time; checking again later."
    except dns.resolver.NoNameservers:
        return "The DNS servers could not answer for this name; checking again later."
    except dns.exception.DNSException as exc:
        return f"The DNS lookup failed ({type(exc).__name__}); checking again later."
    values = [b"".join(r.strings).decode("ascii", "replace") for r in answer.rrset or []]
    if claim.token in values:
        return ""
    if not values:
        return f"No TXT record {name} was found yet."
    return f"A TXT record {name} exists but does not hold the value to use."


def addresses(host: str) -> list[str]:
    """The A and AAAA records of ``host`` through the configured resolvers ([] when none)."""
    found: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = resolver().resolve(host, rdtype, search=False, raise_on_no_answer=False)
        except dns.exception.DNSException:
            continue
        found += [record.to_text() for record in answer.rrset or []]
    return found


def http_address(host: str, found: list[str] | None = None) -> tuple[str, str]:
    """The address to fetch ``host`` from (public; loopback only where the setting allows it,
    in tests) and '', or '' and why none may be used ('' too when the name has no address)."""
    found = addresses(host) if found is None else found
    for text in found:
        ip = ipaddress.ip_address(text)
        if is_public(ip) or (settings.STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK and ip.is_loopback):
            return text, ""
    if not found:
        return "", ""
    return "", f"{host} resolves only to addresses that are not public ({', '.join(sorted(found))})."


def names_above(host: str) -> list[str]:
    """``host`` and every name it is under (shop.example.com, example.com, com)."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def remember_owner(claim: DomainClaim) -> None:
    """Keep that ``claim``'s organization held its name verified (it outlives the claim)."""
    VerifiedName.objects.get_or_create(hostname=claim.hostname, organization=claim.organization)


def http_refused(claim: DomainClaim, found: list[str]) -> str:
    """Why the HTTP proof cannot tell that ``claim``'s organization controls the name ('' when
    it can): answering on the platform's address proves only that the name points here."""
    need_dns = "only the DNS record proves control of it."
    if DomainClaim.objects.filter(hostname=claim.hostname).exclude(pk=claim.pk).exists():
        return f"another organization also waits for this name: {need_dns}"
    above = names_above(claim.hostname)
    held = (
        VerifiedName.objects.filter(hostname__in=above).exclude(organization=claim.organization).exists()
        or DomainClaim.objects.filter(hostname__in=above, verified_at__isnull=False)
        .exclude(organization=claim.organization)
        .exists()
    )
    if held:
        return f"this name or a name above it is or was used by another organization: {need_dns}"
    parent = claim.hostname.partition(".")[2]
    if parent:
        sibling = f"{WILDCARD_PROBE_PREFIX}{secrets.token_hex(6)}.{parent}"
        if set(addresses(sibling)) & set(found):
            return f"every name under {parent} points here (a wildcard record): {need_dns}"
    return ""


class HttpCheckFailed(Exception):
    """Why the HTTP fetch gave no usable answer (for the customer)."""


def http_get(address: str, port: int, path: str, host_header: str) -> tuple[int, bytes]:
    """GET ``path`` from ``address`` (HTTP/1.0, ``Host: host_header``): the status and up to
    ``HTTP_MAX_BYTES`` + 1 bytes of the body, within ``HTTP_DEADLINE_SECONDS`` in all (each
    socket wait shrinks to what is left) and with a few small headers only."""
    deadline = time.monotonic() + HTTP_DEADLINE_SECONDS

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HttpCheckFailed(f"did not answer over HTTP within {HTTP_DEADLINE_SECONDS:g} seconds.")
        return remaining

    request = (
        f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: Stackport domain check\r\n"
        "Accept: text/plain\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        with socket.create_connection((address, port), timeout=left()) as sock:
            sock.settimeout(left())
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                if len(data) > HTTP_MAX_HEADER_BYTES or data.count(b"\r\n") > HTTP_MAX_HEADER_LINES:
                    raise HttpCheckFailed("answered HTTP with too many or too long headers.")
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    raise HttpCheckFailed("closed the HTTP connection before its headers ended.")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            if len(head) > HTTP_MAX_HEADER_BYTES or len(lines) > HTTP_MAX_HEADER_LINES + 1:
                raise HttpCheckFailed("answered HTTP with too many or too long headers.")
            parts = lines[0].split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise HttpCheckFailed("did not answer in HTTP.")
            length = HTTP_MAX_BYTES + 1
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = min(length, int(value.strip()))
            while len(body) < length:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        left()  # past the deadline: say so
        raise HttpCheckFailed("did not answer over HTTP in time.") from None
    except OSError as exc:
        raise HttpCheckFailed(f"did not answer over HTTP ({type(exc).__name__}).") from exc
    return int(parts[1]), body[: HTTP_MAX_BYTES + 1]


def check_http(claim: DomainClaim) -> str | None:
    """'' when the edge answers the claim's token on its name over HTTP, else why not; None when
    the name has no address (nothing to fetch: the DNS record is the only way then)."""
    found = addresses(claim.hostname)
    address, error = http_address(claim.hostname, found)
    if error or not address:
        return error or None
    refused = http_refused(claim, found)
    if refused:
        return refused
    port = settings.STACKPORT_DOMAIN_HTTP_PORT
    host_header = claim.hostname if port == 80 else f"{claim.hostname}:{port}"
    # Pinned: the connection goes to the address checked above, the name only in Host.
    try:
        code, body = http_get(address, port, CHALLENGE_PATH + claim.token, host_header)
    except HttpCheckFailed as exc:
        return f"{claim.hostname} {exc}"
    if code != 200 or body.decode("ascii", "replace").strip() != claim.token:
        return f"{claim.hostname} answers HTTP {code} without the token: it does not point here."
    return ""


# --- verifying ---------------------------------------------------------------------------------------
def verify_claim(
    claim: DomainClaim, *, method: str, actor: User | None = None, origin: Origin | None = None
) -> bool:
    """Mark ``claim`` verified (once proven, or by support) and route its domains after
    commit. False when another organization holds the name verified already."""
    with transaction.atomic():
        claim = DomainClaim.objects.select_for_update().get(pk=claim.pk)
        if claim.verified_at is not None:
            return True
        claim.verified_at, claim.method, claim.check_error = timezone.now(), method, ""
        try:
            with transaction.atomic():
                claim.save(update_fields=["verified_at", "method", "check_error"])
        except IntegrityError:
            DomainClaim.objects.filter(pk=claim.pk).update(check_error=TAKEN[:300])
            return False
        remember_owner(claim)
        record_audit_event(
            action="support.domain_verify" if method == DomainClaim.Method.SUPPORT else "domain.verify",
            actor=actor,
            organization=claim.organization,
            target=f"domain {claim.hostname}",
            data={"hostname": claim.hostname, "method": method},
            origin=origin,
        )
        environments = set(claim.domains.values_list("environment_id", flat=True))
        transaction.on_commit(lambda: routes_later(environments))
        edge_later()  # its HTTP challenge goes; its certificate is checked
    return True


def check_claim(claim: DomainClaim) -> bool:
    """Look the claim's record up now; verify it when found. True when verified."""
    if claim.verified_at is not None:
        return True
    taken = (
        DomainClaim.objects.filter(hostname=claim.hostname, verified_at__isnull=False)
        .exclude(pk=claim.pk)
        .exists()
    )
    error, method = (TAKEN if taken else lookup(claim)), DomainClaim.Method.DNS
    if error and not taken:
        http_error = check_http(claim)
        if http_error == "":
            error, method = "", DomainClaim.Method.HTTP
        elif http_error:
            error = f"{error} Over HTTP: {http_error}"
    DomainClaim.objects.filter(pk=claim.pk).update(last_checked_at=timezone.now(), check_error=error[:300])
    claim.refresh_from_db()
    if error:
        return False
    return verify_claim(claim, method=method)


def due(claim: DomainClaim, now: Any) -> bool:
    if claim.last_checked_at is None:
        return True
    age = now - claim.created_at
    every = next((every for limit, every in CHECK_EVERY if age < limit), CHECK_EVERY_LATER)
    return now - claim.last_checked_at >= every - timedelta(seconds=5)


def check_pending() -> dict[str, int]:
    """One pass of the periodic check: pending claims that are due are looked up; claims
    without domains left (an environment destroyed) are dropped."""
    now = timezone.now()
    report = {"checked": 0, "verified": 0, "released": 0}
    report["released"], _ = DomainClaim.objects.filter(
        domains__isnull=True, created_at__lt=now - timedelta(minutes=5)
    ).delete()
    pending = DomainClaim.objects.filter(verified_at__isnull=True).order_by("last_checked_at", "pk")
    for claim in pending[: CHECK_BATCH * 5]:
        if report["checked"] >= CHECK_BATCH:
            break
        if not due(claim, now):
            continue
        report["checked"] += 1
        report["verified"] += check_claim(claim)
    return report


def check_now(*, domain: Domain, actor: User, origin: Origin | None = None) -> DomainClaim:
    """The customer's "Check now": look the record up at once (a developer of the organization)."""
    require_role(actor, domain.environment.project.organization, Role.DEVELOPER)
    check_claim(domain.claim)
    domain.claim.refresh_from_db()
    return domain.claim


def mark_verified(*, claim: DomainClaim, actor: User, origin: Origin | None = None) -> bool:
    """Support vouches for a claim (audited as support.domain_verify)."""
    if not (actor.is_active and actor.is_staff and actor.has_perm(OPERATE_PERMISSION)):
        raise ServiceError("This needs the support permission to operate customers' stacks.", status=403)
    return verify_claim(claim, method=DomainClaim.Method.SUPPORT, actor=actor, origin=origin)


def set_hsts(*, domain: Domain, hsts: bool, actor: User, origin: Origin | None = None) -> Domain:
    """Turn HSTS on or off for the domain (a developer of the organization; audited). The edge
    sends it over HTTPS once the name's certificate is served."""
    organization = domain.environment.project.organization
    require_role(actor, organization, Role.DEVELOPER)
    with transaction.atomic():
        changed = Domain.objects.filter(pk=domain.pk).exclude(hsts=hsts).update(hsts=hsts)
        domain.hsts = hsts
        if changed:
            record_audit_event(
                action="domain.hsts",
                actor=actor,
                organization=organization,
                target=f"domain {domain.hostname}{domain.path_prefix}",
                data={"hostname": domain.hostname, "hsts": hsts},
                origin=origin,
            )
            edge_later()
    return domain


def edge_later() -> None:
    """Queue the edge's platform routes (``certificates.sync_edge``) after commit."""

    transaction.on_commit(tasks.sync_edge_task.delay)


def routes_later(environment_ids: Iterable[int]) -> None:
    """Queue a route sync of each environment (after a change of its domains)."""

    for environment_id in sorted(set(environment_ids)):
        tasks.sync_routes_task.delay(environment_id)
