"""The edge's next data plane: HAProxy 2.6 (Debian's), started by ``scripts/haproxy.sh`` and
driven only through its runtime API on a unix socket, so that no route change ever reloads
it: client keep-alive connections survive every domain added or removed (with Caddy every
config write closes idle ones, bench/edge_churn.py; docs/decisions.md).

The config is static, rendered once by the script: a pool of backends ``r0..rN``, each with
a fixed number of server slots (all in maintenance until used), and one frontend that picks
the backend through maps: the longest path prefix of the request's host (keys
``host/prefix/``, lowercase, matched with ``map_beg``), else the host's own route, else a
404. Each route takes one backend of the pool; its settings are map entries keyed by the
backend's name (health-check path, Host header of the checks, prefix to strip). A route
change is only runtime commands: ``add/set/del map`` and ``set server <b>/<s> addr``, ``set
server ... state ready``, ``disable server``, ``set server ... health down`` (a new slot
gets traffic once its first check passes, ~0.25 s). Afterwards every map is written back to
its file and the server state (slot addresses, maintenance) to the server-state file, so a
restart comes back with every route.

HTTPS: the script binds an HTTPS listener (``ssl crt-list certs/crt-list``: a self-signed
default certificate made at the first start, then a line per host name added here; ALPN h2
and http/1.1). ``set_certificate``/``remove_certificate`` install and delete a host's
certificate with ``new``/``set``/``commit ssl cert``, ``add``/``del ssl crt-list`` and
``del ssl cert`` (open connections keep theirs, new ones get the new one, no reload) and
write the PEM file and the crt-list the next start loads. Four more maps: HTTP-01 tokens
(``/.well-known/acme-challenge/<token>`` answered with the key authorization by
``http-request return``, on every host, before any redirect), the hosts redirected from HTTP
to HTTPS (308, never ACME's path) and the hosts with HSTS (``set_challenge``,
``remove_challenge``, ``set_host_policies``), and the domain claims' tokens, each answered at
``/.well-known/stackport-challenge/<token>`` on its own host only (``set_platform_routes``).
``drain`` puts slots in HAProxy's DRAIN state for a blue/green swap (no new requests, the ones
in flight finish, ``wait_drained``) before their containers stop.

Behaviour matches the Caddy edge (``stacks.backends.edge``) for proxy routes: active HTTP
checks every second on the route's health path, a request that finds its slot's container
gone is retried on another slot (any method when nothing was sent; GET, HEAD and OPTIONS
also after), ``strip_prefix`` with ``X-Forwarded-Prefix``, and a request for a route with no usable
slot (a deploy's first replica not up yet, all of them being replaced) held until one is up,
polled every 100 ms for up to 5 s, then a 503 (a Lua action of the config, run only in a
backend where ``nbsrv lt 1``: the normal path runs no Lua). Difference: ``routes()`` gives
``Route`` values, not Caddy's JSON (``route_config`` gives what to compare them with).

Maintenance pages (``page=``: a stopped or suspended site answers 503 with ``Retry-After``,
``Cache-Control: no-store`` and the HTML page, like the Caddy edge; at most
``MAINTENANCE_PAGE_MAX_LENGTH`` bytes of UTF-8): the ``pages`` map gives the route's backend
the id of its page (the SHA-256 of its bytes), the page is written to ``pages/<id>.html``
before the entry is set, and a small Lua service of the config (``scripts/haproxy.sh``)
answers that file byte for byte, reading each id once (a file never changes: its name is
its content). Why not a map value answered by ``http-request return ... lf-string``:
HAProxy's log-format escapes control characters of a sample (a page's newlines come out as
``%0A``), and a map file's line is cut at 16 KB when loaded at start, so neither exactness
nor a restart would hold. A page is set before the slots go (it answers at once); a route
going back to proxying keeps its page until a slot passed its first check (at most
``PAGE_HANDOVER_TIMEOUT``), so no visitor sees a 503 without a server in between. Page
files no route names are deleted after the maps are mirrored.

Certificates are ordered by ``stacks.backends.acme_client`` (HTTP-01 through
``set_challenge``, installed with ``set_certificate``). The router offers the portal's
interface of the Caddy client, with the same meaning, so a setting picks either:
``routes``, ``set_route``, ``set_routes``, ``remove_route``, ``route_config`` (what
``routes()`` holds for a route), ``drain``/``wait_drained``, ``close``, ``timeout``, and for
HTTPS ``ensure_https`` (nothing to do: the listener is in the static config),
``set_platform_routes``, ``served_certificate`` (None for a name served the default
certificate) and ``get_over_https``, through the listener at ``https_address``. The
arguments are validated and normalized by the Caddy client's functions, and every failure is
an ``EdgeError`` whose ``permanent`` flag tells a caller whether a retry can help. This
client must run on the router's machine: it takes a file lock in the router's folder for
each change (concurrent callers, one at a time) and writes the mirrored files there.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import urllib3  # a dependency of requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stacks.backends.edge import (
    MAINTENANCE_PAGE_MAX_LENGTH,
    EdgeError,
    Route,
    normalize_host,
    normalize_path_prefix,
    normalize_upstream,
    validate_health_path,
    validate_route_id,
)
from stacks.backends.edge_tls import (
    CHALLENGE_PATH,
    PROBE_TIMEOUT,
    CertificateInfo,
    certificate_info,
    https_get,
    local_address,
    probe_certificate,
)
from stacks.backends.edge_tls import TOKEN_RE as CLAIM_TOKEN_RE

# The maps of scripts/haproxy.sh: route id -> backend; host -> backend; "host/prefix/" ->
# backend; and, by backend: health-check path, Host header of the checks, path prefix (as
# given: the prefixes map's keys are lowercase), prefix to strip (only routes that strip).
# Then the HTTPS ones: HTTP-01 token -> key authorization; host -> HTTPS origin its HTTP
# requests are redirected to; host -> Strict-Transport-Security value. Then backend -> the id
# of the maintenance page its route answers (the page is pages/<id>.html). Then the domain
# claims: "host/.well-known/stackport-challenge/<token, lowercase>" -> the token.
MAPS = (
    "routes",
    "hosts",
    "prefixes",
    "health",
    "checkhost",
    "prefix",
    "strip",
    "acme",
    "redirect",
    "hsts",
    "pages",
    "claims",
)
PAGE_ID_RE = re.compile(r"[0-9a-f]{64}")
# How long a route leaving its maintenance page waits for a slot to pass its first check
# before the page goes (the page answers meanwhile, not a 503 without a server).
PAGE_HANDOVER_TIMEOUT = 5.0
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
KEY_AUTHORIZATION_RE = re.compile(r"[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{1,256}")
HSTS_VALUE = "max-age=31536000"
DEFAULT_CERTIFICATE = "default.pem"
# Where the HTTPS listener is reached: host:port, [ip6]:port, or :port (loopback).
ADDRESS_RE = re.compile(r"(?:[A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
BACKEND_RE = re.compile(r"r[0-9]{1,4}")
DEFAULT_HEALTH_PATH = "/healthz"
# srv_admin_state bits: in maintenance by the runtime API or the config ("disabled");
# draining by the runtime API (``set server ... state drain``).
ADMIN_FORCED_MAINTENANCE = 0x01
ADMIN_FORCED_DRAIN = 0x08
READ_LIMIT = 64 * 1024 * 1024


@dataclass
class Slot:
    name: str  # "s1"
    address: str  # normalized ip:port
    enabled: bool
    draining: bool = False


@dataclass
class State:
    """What the router has now: its maps (key -> value) and each backend's slots."""

    maps: dict[str, dict[str, str]]
    slots: dict[str, list[Slot]] = field(default_factory=dict)
    # page id -> the page's text (None: its file is missing)
    pages: dict[str, str | None] = field(default_factory=dict)

    def backend_of(self, route_id: str) -> str | None:
        return self.maps["routes"].get(route_id)

    def route(self, route_id: str) -> Route | None:
        backend = self.backend_of(route_id)
        if backend is None:
            return None
        hosts = {h for h, b in self.maps["hosts"].items() if b == backend}
        hosts |= {key.partition("/")[0] for key, b in self.maps["prefixes"].items() if b == backend}
        return Route(
            route_id,
            sorted(hosts),
            # A draining slot is not part of the route (a set_route keeping it puts it back).
            sorted(
                slot.address for slot in self.slots.get(backend, []) if slot.enabled and not slot.draining
            ),
            self.maps["prefix"].get(backend),
            self.maps["health"].get(backend, DEFAULT_HEALTH_PATH),
            strip_prefix=backend in self.maps["strip"],
            page=self.page_of(backend),
        )

    def page_of(self, backend: str) -> str | None:
        page_id = self.maps["pages"].get(backend)
        return None if page_id is None else self.pages.get(page_id) or ""


def normalized_route(route: Route) -> Route:
    """``route`` validated and in canonical form (ASCII hosts and slots sorted; a page's
    route without upstreams), or a permanent ``EdgeError``."""
    route_id, hosts, upstreams = route.route_id, route.hosts, route.upstreams
    validate_route_id(route_id)
    if isinstance(hosts, str) or not hosts:
        raise EdgeError(f"route {route_id}: at least one host name is needed", permanent=True)
    ascii_hosts = sorted({normalize_host(host) for host in hosts})
    prefix = None if route.path_prefix is None else normalize_path_prefix(route.path_prefix)
    if route.page is not None:
        if not isinstance(route.page, str):
            raise EdgeError(f"route {route_id}: the page is not text", permanent=True)
        try:
            size = len(route.page.encode())
        except UnicodeEncodeError as exc:
            raise EdgeError(f"route {route_id}: the page is not valid text: {exc}", permanent=True) from exc
        if size > MAINTENANCE_PAGE_MAX_LENGTH:
            raise EdgeError(
                f"route {route_id}: the page has {size} bytes, at most {MAINTENANCE_PAGE_MAX_LENGTH}",
                permanent=True,
            )
        validate_health_path(route.health_path)
        strip = bool(route.strip_prefix) and prefix is not None
        page = route.page
        return Route(route_id, ascii_hosts, [], prefix, route.health_path, strip_prefix=strip, page=page)
    if isinstance(upstreams, str) or not upstreams:
        raise EdgeError(f"route {route_id}: at least one upstream is needed", permanent=True)
    slots = [normalize_upstream(upstream) for upstream in upstreams]
    if len(set(slots)) != len(slots):
        raise EdgeError(f"route {route_id}: an upstream is listed twice", permanent=True)
    validate_health_path(route.health_path)
    strip = bool(route.strip_prefix) and prefix is not None
    return Route(route_id, ascii_hosts, sorted(slots), prefix, route.health_path, strip_prefix=strip)


def certificate_pem(host: str, cert_pem: str, key_pem: str) -> str:
    """What HAProxy loads for ``host``: the certificates (leaf first), then the private key,
    in canonical PEM with no blank line (the runtime API ends a payload at one); a permanent
    ``EdgeError`` when they do not parse or the key is not the leaf's."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError, AttributeError) as exc:
        raise EdgeError(f"{host}: invalid certificate or key: {exc}", permanent=True) from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, spki) != chain[0].public_key().public_bytes(
        serialization.Encoding.PEM, spki
    ):
        raise EdgeError(f"{host}: the key is not the certificate's", permanent=True)
    parts = [cert.public_bytes(serialization.Encoding.PEM).decode() for cert in chain]
    parts.append(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    )
    return "".join(parts)


def prefix_key(host: str, prefix: str) -> str:
    """The prefixes map's key: ``example.com/api/`` (the frontend looks up
    ``host + lowercase path + "/"``, so ``/api`` and ``/api/...`` match, ``/apix`` does not)."""
    return f"{host}{prefix.lower()}/"


def split_address(address: str) -> tuple[str, str]:
    """``ip:port`` / ``[ip6]:port`` -> (ip, port)."""
    ip, _, port = address.rpartition(":")
    return ip.strip("[]"), port


def join_address(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class HAProxyRouter:
    """Talks to the runtime API of one HAProxy started by ``scripts/haproxy.sh`` with its
    folder ``directory`` (``STACKPORT_HAPROXY_DIR``), e.g.
    ``HAProxyRouter("/var/lib/stackport/haproxy", https_address="127.0.0.1:8443")``.
    ``timeout`` (seconds) applies to each runtime command; ``public_https_port`` is the port
    redirects to HTTPS name (443: none); ``https_address`` (``host:port``) is where this
    machine reaches the HTTPS listener (``STACKPORT_HAPROXY_HTTPS_LISTEN``; a wildcard bind
    means loopback), None when the portal uses no HTTPS (like ``EdgeRouter`` with
    ``tls=None``: no certificate is read, no redirect set). Holds no connection; a context
    manager like ``EdgeRouter``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        public_https_port: int = 443,
        https_address: str | None = None,
    ) -> None:
        if https_address is not None and (
            not isinstance(https_address, str) or not ADDRESS_RE.fullmatch(https_address)
        ):
            raise EdgeError(f"invalid HTTPS address {https_address!r} (expected host:port)", permanent=True)
        self.https_address = None if https_address is None else local_address(https_address)
        self.directory = Path(directory)
        self.socket_path = self.directory / "admin.sock"
        self.maps_dir = self.directory / "maps"
        self.state_file = self.directory / "server-state"
        self.certs_dir = self.directory / "certs"
        self.crt_list = self.certs_dir / "crt-list"
        self.pages_dir = self.directory / "pages"
        self.public_https_port = public_https_port
        self.timeout = timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HAProxyRouter({str(self.directory)!r})"

    def close(self) -> None:
        """Nothing to release (one connection per command); for symmetry with EdgeRouter."""

    def ping(self) -> bool:
        """True when the runtime API answers; never raises."""
        try:
            return self._command("show info").startswith("Name: HAProxy")
        except EdgeError:
            return False

    def set_route(
        self,
        route_id: str,
        hosts: list[str],
        upstreams: list[str],
        path_prefix: str | None = None,
        health_path: str = DEFAULT_HEALTH_PATH,
        *,
        strip_prefix: bool = False,
        page: str | None = None,
    ) -> bool:
        """Create or replace the route ``route_id`` (see ``EdgeRouter.set_route``). Returns
        False, sending nothing, when the router has exactly this route already."""
        return self.set_routes(
            [
                Route(
                    route_id, hosts, upstreams, path_prefix, health_path, strip_prefix=strip_prefix, page=page
                )
            ]
        )

    def set_routes(self, routes: Iterable[Route] = (), remove: Iterable[str] = ()) -> bool:
        """Create or replace every route of ``routes`` and delete the routes whose ids are
        in ``remove`` (absent ones are fine). Everything is validated before anything is
        sent; then only runtime commands, no reload. Returns True when anything changed."""
        desired = [normalized_route(route) for route in routes]
        ids = [route.route_id for route in desired]
        if len(set(ids)) != len(ids):
            raise EdgeError("a route id is given twice", permanent=True)
        gone = set(remove)
        for route_id in gone:
            validate_route_id(route_id)
        if gone & set(ids):
            raise EdgeError("a route id is both set and removed", permanent=True)
        if not desired and not gone:
            return False
        with self._locked():
            state = self._state()
            self._check_capacity(state, desired)
            changed = False
            try:
                for route in desired:
                    changed |= self._apply(state, route)
                for route_id in sorted(gone):
                    changed |= self._remove(state, route_id)
            except BaseException:
                # Whatever was applied before the failure is what a restart must find.
                with suppress(EdgeError):
                    self._mirror(state)
                raise
            if changed:
                self._mirror(state)
        return changed

    def remove_route(self, route_id: str) -> bool:
        """Delete the route ``route_id``. Returns False when there was none (not an error)."""
        validate_route_id(route_id)
        return self.set_routes((), [route_id])

    def routes(self) -> dict[str, Route]:
        """The routes on the router, by id (as ``Route``: ASCII hosts and slots sorted)."""
        state = self._state()
        found = {route_id: state.route(route_id) for route_id in sorted(state.maps["routes"])}
        return {route_id: route for route_id, route in found.items() if route is not None}

    @staticmethod
    def route_config(route: Route) -> Route:
        """What ``routes()[route.route_id]`` holds once ``route`` is set: ``route`` validated
        and normalized (a permanent ``EdgeError`` when invalid), so a caller compares
        ``routes().get(id) == router.route_config(route)`` the same way with either router."""
        return normalized_route(route)

    @staticmethod
    def route_upstreams(route: Route) -> list[str]:
        """The upstream addresses of a route as ``routes()`` gives it."""
        return list(route.upstreams)

    def drain(self, route_id: str, upstreams: Iterable[str]) -> bool:
        """Put the slots of ``route_id`` serving ``upstreams`` in HAProxy's DRAIN state
        (``set server <b>/<s> state drain``): they get no new request, the requests they
        have finish; they stay checked, and ``routes()`` leaves them out of the route. The
        next ``set_route`` decides: without them it takes them out, with them it puts them
        back in rotation (they get requests again once their check passes). Validated first
        (an upstream the route does not have, or no route ``route_id``, is a permanent
        ``EdgeError``); a slot draining already is left alone. Returns True when a slot
        changed.

        How the portal uses it in a blue/green swap (``operations.drainer``): the route
        lists both colours' slots for good (each gets traffic once its check passes); once
        the new colour is up, ``drain(route_id, old colour)``, ``wait_drained(route_id, old
        colour)``, stop the old containers, then ``set_route`` of the same route puts the
        old slots back in rotation, where their failing checks keep traffic away until the
        next swap starts containers there. A stopping upstream (gunicorn closes its listener
        on SIGTERM) then never gets a request it cannot answer: with Caddy, which cannot
        drain without a config write, a POST written to a backlogged connection of the old
        container got a 502 (about one in 2,000 during a swap)."""
        validate_route_id(route_id)
        if isinstance(upstreams, str):
            raise EdgeError(f"route {route_id}: upstreams must be a list", permanent=True)
        wanted = {normalize_upstream(upstream) for upstream in upstreams}
        with self._locked():
            state = self._state()
            backend = state.backend_of(route_id)
            if backend is None:
                raise EdgeError(f"no route {route_id} to drain", permanent=True)
            slots = {slot.address: slot for slot in state.slots.get(backend, []) if slot.enabled}
            unknown = sorted(wanted - set(slots))
            if unknown:
                raise EdgeError(f"route {route_id} has no upstream {', '.join(unknown)}", permanent=True)
            changed = False
            try:
                for address in sorted(wanted):
                    slot = slots[address]
                    if not slot.draining:
                        self._silent(f"set server {backend}/{slot.name} state drain")
                        slot.draining = changed = True
            finally:
                if changed:
                    self._mirror(state)
        return changed

    def in_flight(self, route_id: str) -> dict[str, int]:
        """The requests each slot of ``route_id`` is serving or has queued now, by
        upstream (``show stat``: ``scur`` + ``qcur``); {} when there is no such route."""
        validate_route_id(route_id)
        state = self._state()
        backend = state.backend_of(route_id)
        if backend is None:
            return {}
        names = {slot.name: slot.address for slot in state.slots.get(backend, []) if slot.enabled}
        counts: dict[str, int] = {}
        answer = self._command("show stat")
        lines = answer.splitlines()
        if not lines or not lines[0].startswith("# pxname,svname,"):
            raise EdgeError(f"unexpected answer to show stat: {answer[:200]!r}", permanent=False)
        columns = lines[0][2:].split(",")
        for line in lines[1:]:
            row = dict(zip(columns, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") in names:
                count = int(row.get("scur") or 0) + int(row.get("qcur") or 0)
                counts[names[row["svname"]]] = count
        return counts

    def wait_drained(
        self, route_id: str, upstreams: Iterable[str], timeout: float = 30.0, interval: float = 0.1
    ) -> bool:
        """Wait until the slots of ``route_id`` serving ``upstreams`` have no request in
        flight (after ``drain``); True when they have none, False after ``timeout``
        seconds (the caller stops them anyway: a request that long is not waited for)."""
        wanted = {normalize_upstream(upstream) for upstream in upstreams}
        deadline = time.monotonic() + timeout
        while True:
            counts = self.in_flight(route_id)
            if not any(counts.get(address, 0) for address in wanted):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # --- HTTPS -------------------------------------------------------------------------------------
    def set_certificate(self, host: str, cert_pem: str, key_pem: str) -> bool:
        """Serve ``cert_pem`` (the certificate, then its chain) with ``key_pem`` to clients
        asking for ``host`` by SNI, from now on and after a restart; replaces the host's
        certificate, connections open keep theirs. Validated first (PEM, the key is the
        certificate's); then only runtime commands (``new``/``set``/``commit ssl cert``,
        ``add ssl crt-list``), no reload. Returns False when the host has exactly this
        certificate already."""
        host = normalize_host(host)
        pem = certificate_pem(host, cert_pem, key_pem)
        path = self._cert_path(host)
        with self._locked():
            entries = self._crt_list_entries()
            loaded = path in self._stored_certificates()
            if loaded and entries.get(path) == host and self._file_text(path) == pem:
                return False
            # The file first: whatever happens next, a restart serves what was asked.
            self._write_file(path, pem, mode=0o600)
            if not loaded:
                self._expect(f"new ssl cert {path}", "New empty certificate store")
            self._command(f"abort ssl cert {path}")  # a transaction an interrupted change left
            self._expect(f"set ssl cert {path} <<\n{pem}", "Transaction ")
            self._expect(f"commit ssl cert {path}", "Success!")
            if path not in entries:
                self._expect(f"add ssl crt-list {self.crt_list} <<\n{path} {host}\n", "Success!")
                entries[path] = host
            self._write_crt_list(entries)
        return True

    def remove_certificate(self, host: str) -> bool:
        """Stop serving the certificate of ``host`` (clients asking for it get the default
        one) and delete its file. Returns False when it had none."""
        host = normalize_host(host)
        path = self._cert_path(host)
        with self._locked():
            entries = self._crt_list_entries()
            loaded = path in self._stored_certificates()
            if path not in entries and not loaded and not Path(path).exists():
                return False
            if path in entries:
                self._expect(f"del ssl crt-list {self.crt_list} {path}", "deleted")
                del entries[path]
                self._write_crt_list(entries)
            if loaded:
                self._expect(f"del ssl cert {path}", "deleted")
            Path(path).unlink(missing_ok=True)
        return True

    def certificates(self) -> dict[str, str]:
        """The host names with a certificate of their own -> the PEM served (certificate,
        chain, key), as the files a restart loads have them."""
        found = {}
        for path, host in self._crt_list_entries().items():
            text = self._file_text(path)
            if text is not None:
                found[host] = text
        return found

    def needs_renewal(self, host: str, days: float = 30) -> bool:
        """True when ``host`` has no certificate of its own on the router, or the one served
        (its leaf, as the file a restart loads has it) expires within ``days`` days."""
        host = normalize_host(host)
        path = self._cert_path(host)
        text = self._file_text(path)
        if text is None or path not in self._crt_list_entries():
            return True
        try:
            leaf = x509.load_pem_x509_certificates(text.encode())[0]
        except ValueError:
            return True  # unreadable: a new one is what it needs
        remaining = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
        return remaining <= datetime.timedelta(days=days)

    def set_challenge(self, token: str, key_authorization: str) -> bool:
        """Answer ``/.well-known/acme-challenge/<token>`` (HTTP-01, on every host, HTTP and
        HTTPS) with ``key_authorization``. Returns False when it was answered so already."""
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            raise EdgeError(f"invalid HTTP-01 token {token!r}", permanent=True)
        if not isinstance(key_authorization, str) or not KEY_AUTHORIZATION_RE.fullmatch(key_authorization):
            raise EdgeError(f"invalid key authorization for the token {token}", permanent=True)
        return self._change_maps({"acme": {token: key_authorization}})

    def remove_challenge(self, token: str) -> bool:
        """Stop answering ``token``. Returns False when it was not answered."""
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            raise EdgeError(f"invalid HTTP-01 token {token!r}", permanent=True)
        return self._change_maps({"acme": {token: None}})

    def set_host_policies(
        self, *, redirect_hosts: Iterable[str] = (), hsts_hosts: Iterable[str] = ()
    ) -> bool:
        """Replace the hosts whose HTTP requests are redirected to HTTPS (308, the same
        path and query; ACME's and the domain claims' paths are not redirected) and the
        hosts whose HTTPS answers carry ``Strict-Transport-Security: max-age=31536000``
        (opt-in), like ``EdgeRouter.set_platform_routes``. Returns True when anything
        changed."""
        return self._change_maps(self._policy_maps(redirect_hosts, hsts_hosts), replace=True)

    def _policy_maps(
        self, redirect_hosts: Iterable[str], hsts_hosts: Iterable[str]
    ) -> dict[str, dict[str, str | None]]:
        """The redirect and HSTS maps for these host names (validated: a permanent
        ``EdgeError``)."""
        if isinstance(redirect_hosts, str) or isinstance(hsts_hosts, str):
            raise EdgeError("redirect_hosts and hsts_hosts must be lists of host names", permanent=True)
        port = "" if self.public_https_port == 443 else f":{self.public_https_port}"
        redirect = {host: f"https://{host}{port}" for host in map(normalize_host, redirect_hosts)}
        hsts = dict.fromkeys(map(normalize_host, hsts_hosts), HSTS_VALUE)
        return {"redirect": {**redirect}, "hsts": {**hsts}}

    # --- the portal's interface (EdgeRouter's HTTPS methods) ---------------------------------------
    def ensure_https(self) -> bool:
        """Nothing to do, so False: unlike Caddy's (written by ``EdgeRouter.ensure_https``),
        this router's HTTPS listener is in the static config ``scripts/haproxy.sh`` renders,
        and certificates come through ``set_certificate``, not a setting of the router."""
        return False

    def set_platform_routes(
        self,
        *,
        challenges: dict[str, str] | None = None,
        hsts_hosts: Iterable[str] = (),
        redirect_hosts: Iterable[str] = (),
    ) -> bool:
        """What ``EdgeRouter.set_platform_routes`` does, with maps: ``challenges`` maps a
        pending host name to its domain claim's token (``stacks.runtime.domains``; not ACME),
        answered on that host only at ``/.well-known/stackport-challenge/<token>`` (200, the
        token, text/plain; the path matched ignoring case, like Caddy; any other path below it
        answers 404), on HTTP and HTTPS, never redirected; ``hsts_hosts`` get HSTS over
        HTTPS; ``redirect_hosts`` are sent from HTTP to HTTPS (only with ``https_address``,
        like Caddy's with ``tls``). The whole set is replaced; validated first (a permanent
        ``EdgeError``, nothing sent). Returns True when anything changed."""
        claims: dict[str, str | None] = {}
        for host, token in (challenges or {}).items():
            if not isinstance(token, str) or not CLAIM_TOKEN_RE.fullmatch(token):
                raise EdgeError(f"invalid challenge token for {host!r}", permanent=True)
            claims[f"{normalize_host(host)}{CHALLENGE_PATH}{token.lower()}"] = token
        if self.https_address is None:
            redirect_hosts = ()
        return self._change_maps(
            {"claims": claims, **self._policy_maps(redirect_hosts, hsts_hosts)}, replace=True
        )

    def served_certificate(self, host: str) -> CertificateInfo | None:
        """The certificate the HTTPS listener serves for ``host`` (SNI); None when the host
        has none of its own (the listener answers the default certificate then) or there is
        no ``https_address``. Raises a transient ``EdgeError`` when the listener does not
        answer."""
        if self.https_address is None:
            return None
        host = normalize_host(host)
        try:
            info = probe_certificate(self.https_address, host, timeout=min(self.timeout, PROBE_TIMEOUT))
        except OSError as exc:
            raise EdgeError(
                f"the edge's HTTPS listener {self.https_address} does not answer: {exc}", permanent=False
            ) from exc
        return None if info is None or info == self._default_certificate() else info

    def get_over_https(self, host: str, path: str = "/") -> tuple[int, str]:
        """GET ``path`` of ``host`` through the HTTPS listener, like
        ``EdgeRouter.get_over_https`` (``edge_tls.https_get``): the status and the start of the
        body, the certificate not verified. A permanent ``EdgeError`` without
        ``https_address``, a transient one when nothing answers."""
        if self.https_address is None:
            raise EdgeError("the edge serves no HTTPS", permanent=True)
        host = normalize_host(host)
        try:
            return https_get(self.https_address, host, path, self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise EdgeError(f"GET https://{host}{path} through the edge: {exc}", permanent=False) from exc

    def _default_certificate(self) -> CertificateInfo:
        """The certificate the listener serves a name without one of its own (made by
        ``scripts/haproxy.sh`` at its first start)."""
        path = self.certs_dir / DEFAULT_CERTIFICATE
        try:
            return certificate_info(x509.load_pem_x509_certificate(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise EdgeError(f"cannot read the default certificate {path}: {exc}", permanent=False) from exc

    def _change_maps(self, changes: dict[str, dict[str, str | None]], *, replace: bool = False) -> bool:
        """Set (or, for None, delete) map entries, then mirror the maps; with ``replace``,
        the entries of these maps that ``changes`` does not name are deleted too."""
        with self._locked():
            state = self._state()
            if replace:
                changes = {
                    name: {**dict.fromkeys(state.maps[name]), **entries} for name, entries in changes.items()
                }
            changed = False
            try:
                for name, entries in changes.items():
                    for key, value in sorted(entries.items()):
                        if value is None:
                            changed |= key in state.maps[name]
                            self._delete(state, name, key)
                        else:
                            changed |= state.maps[name].get(key) != value
                            self._put(state, name, key, value)
            finally:
                if changed:
                    self._mirror(state)
        return changed

    def _cert_path(self, host: str) -> str:
        return str(self.certs_dir / f"{host}.pem")

    def _crt_list_entries(self) -> dict[str, str]:
        """The crt-list's host lines as HAProxy has them: certificate file -> host name (the
        default certificate's line, without a name, is not one)."""
        answer = self._command(f"show ssl crt-list {self.crt_list}")
        lines = answer.splitlines()
        if not lines or lines[0].strip() != f"# {self.crt_list}":
            raise EdgeError(
                f"unexpected answer to show ssl crt-list (no HTTPS listener?): {answer[:200]!r}",
                permanent=False,
            )
        entries = {}
        for line in lines[1:]:
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(f"{self.certs_dir}/"):
                entries[parts[0]] = parts[1]
        return entries

    def _stored_certificates(self) -> set[str]:
        answer = self._command("show ssl cert")
        return {line.strip() for line in answer.splitlines() if line.strip() and not line.startswith("#")}

    def _write_crt_list(self, entries: dict[str, str]) -> None:
        lines = [str(self.certs_dir / DEFAULT_CERTIFICATE)]
        lines += [f"{path} {host}" for path, host in sorted(entries.items(), key=lambda item: item[1])]
        self._write_file(self.crt_list, "".join(f"{line}\n" for line in lines))

    @staticmethod
    def _file_text(path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EdgeError(f"cannot read {path}: {exc}", permanent=False) from exc

    def _expect(self, command: str, success: str) -> str:
        answer = self._command(command)
        if success not in answer:
            raise self._refused(command.partition("\n")[0], answer)
        return answer

    # --- planning -------------------------------------------------------------------------------
    @staticmethod
    def _check_capacity(state: State, desired: list[Route]) -> None:
        """Refuse, before anything is sent, a route with more upstreams than a backend has
        slots, or more new routes than free backends."""
        if not state.slots:
            raise EdgeError(
                "the router has no backends (not started by scripts/haproxy.sh?)", permanent=False
            )
        slots = min(len(slots) for slots in state.slots.values())
        for route in desired:
            if len(route.upstreams) > slots:
                raise EdgeError(
                    f"route {route.route_id}: {len(route.upstreams)} upstreams, a backend has {slots} slots "
                    "(STACKPORT_HAPROXY_SLOTS)",
                    permanent=True,
                )
        used = set(state.maps["routes"].values())
        free = [b for b in state.slots if b not in used]
        new = [route for route in desired if state.backend_of(route.route_id) is None]
        if len(new) > len(free):
            raise EdgeError(
                f"no free backend for {len(new)} new routes ({len(free)} free; STACKPORT_HAPROXY_BACKENDS)",
                permanent=False,
            )

    def _apply(self, state: State, route: Route) -> bool:
        """Make ``route`` what the router serves; False when it already was."""
        if state.route(route.route_id) == route:
            return False
        backend = state.backend_of(route.route_id)
        if backend is not None and backend not in state.slots:
            # Its backend is gone (the pool was made smaller): the route moves to another.
            self._clear_backend(state, backend)
            backend = None
        if backend is None:
            used = set(state.maps["routes"].values())
            backend = next((b for b in sorted(state.slots, key=lambda b: int(b[1:])) if b not in used), None)
            if backend is None:
                raise EdgeError(f"route {route.route_id}: no free backend", permanent=False)
            # A backend left half-used by an interrupted change starts clean.
            self._clear_backend(state, backend)
        # A page first (its file, then the map entry: it answers at once, before the slots go).
        leaving_page = route.page is None and backend in state.maps["pages"]
        if route.page is not None:
            self._put_page(state, backend, route.page)
        # Settings first, then slots, then the keys that send traffic to them.
        self._put(state, "health", backend, route.health_path)
        self._put(state, "checkhost", backend, route.hosts[0])
        if route.path_prefix is not None:
            self._put(state, "prefix", backend, route.path_prefix)
        else:
            self._delete(state, "prefix", backend)
        if route.strip_prefix and route.path_prefix is not None:
            self._put(state, "strip", backend, route.path_prefix)
        else:
            self._delete(state, "strip", backend)
        self._set_slots(state, backend, route.upstreams)
        if leaving_page:
            # The page answers until a slot can (or PAGE_HANDOVER_TIMEOUT has passed).
            self._wait_up(backend, PAGE_HANDOVER_TIMEOUT)
            self._delete(state, "pages", backend)
        self._put(state, "routes", route.route_id, backend)
        if route.path_prefix is None:
            wanted = {"hosts": set(route.hosts), "prefixes": set()}
        else:
            wanted = {"hosts": set(), "prefixes": {prefix_key(h, route.path_prefix) for h in route.hosts}}
        for name, keys in wanted.items():
            for key in sorted(keys):
                self._put(state, name, key, backend)
        for name, keys in wanted.items():
            for key, value in sorted(state.maps[name].items()):
                if value == backend and key not in keys:
                    self._delete(state, name, key)
        return True

    def _remove(self, state: State, route_id: str) -> bool:
        backend = state.backend_of(route_id)
        if backend is None:
            return False
        self._clear_backend(state, backend)
        self._delete(state, "routes", route_id)
        return True

    def _clear_backend(self, state: State, backend: str) -> None:
        """No key sends traffic to ``backend`` (keys first), its slots in maintenance, its
        settings gone."""
        for name in ("hosts", "prefixes"):
            for key, value in sorted(state.maps[name].items()):
                if value == backend:
                    self._delete(state, name, key)
        self._set_slots(state, backend, [])
        for name in ("health", "checkhost", "prefix", "strip", "pages"):
            self._delete(state, name, backend)

    def _put_page(self, state: State, backend: str, page: str) -> None:
        """``backend`` answers ``page``: its file (named by its SHA-256, never rewritten
        once there: the Lua service keeps pages in memory by id), then the map entry."""
        data = page.encode()
        page_id = hashlib.sha256(data).hexdigest()
        path = self.pages_dir / f"{page_id}.html"
        if state.pages.get(page_id) != page or not path.exists():
            try:
                self.pages_dir.mkdir(mode=0o700, exist_ok=True)
                self._write_bytes(path, data, mode=0o644)
            except OSError as exc:
                raise EdgeError(f"cannot write the page {path}: {exc}", permanent=False) from exc
            state.pages[page_id] = page
        self._put(state, "pages", backend, page_id)

    def _wait_up(self, backend: str, timeout: float) -> bool:
        """Wait until an enabled slot of ``backend`` is UP (its check passed); False after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self._command(f"show servers state {backend}")
            lines = answer.splitlines()
            columns = lines[1][2:].split() if len(lines) > 1 and lines[1].startswith("# ") else []
            for line in lines[2:]:
                row = dict(zip(columns, line.split(), strict=False))
                admin = int(row.get("srv_admin_state", "1"))
                if row.get("srv_op_state") == "2" and not admin & ADMIN_FORCED_MAINTENANCE:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _set_slots(self, state: State, backend: str, upstreams: Iterable[str]) -> None:
        """Slots enabled for exactly ``upstreams``: slots already there are left alone, new
        ones enabled (held down until a health check passes) before old ones go, when
        there are slots enough for both."""
        slots = state.slots.get(backend, [])
        wanted = set(upstreams)
        have = {slot.address for slot in slots if slot.enabled}
        if len(wanted - have) > sum(1 for slot in slots if not slot.enabled):
            self._disable_unwanted(backend, slots, wanted)
        free = iter([slot for slot in slots if not slot.enabled])
        for address in sorted(wanted - have):
            slot = next(free)
            ip, port = split_address(address)
            server = f"{backend}/{slot.name}"
            answer = self._command(f"set server {server} addr {ip} port {port}")
            if "changed" not in answer and "no need to change" not in answer:
                raise self._refused(f"set server {server} addr", answer)
            # "ready" leaves maintenance and a drain the slot's last user may have left.
            self._silent(f"set server {server} state ready")
            self._silent(f"set server {server} health down")
            slot.address, slot.enabled, slot.draining = address, True, False
        for slot in slots:
            # Drained (a blue/green swap) and wanted again: back in rotation, held down until
            # a check passes, like a new slot (its container has usually stopped: marked up
            # until two checks fail, it would get requests that wait out the connect time-out).
            if slot.enabled and slot.draining and slot.address in wanted:
                self._silent(f"set server {backend}/{slot.name} state ready")
                self._silent(f"set server {backend}/{slot.name} health down")
                slot.draining = False
        self._disable_unwanted(backend, slots, wanted)

    def _disable_unwanted(self, backend: str, slots: list[Slot], wanted: set[str]) -> None:
        for slot in slots:
            if slot.enabled and slot.address not in wanted:
                self._silent(f"disable server {backend}/{slot.name}")
                slot.enabled = False

    def _put(self, state: State, name: str, key: str, value: str) -> None:
        current = state.maps[name]
        if current.get(key) == value:
            return
        verb = "set" if key in current else "add"
        self._silent(f"{verb} map {self.maps_dir / f'{name}.map'} {key} {value}")
        current[key] = value

    def _delete(self, state: State, name: str, key: str) -> None:
        current = state.maps[name]
        if key not in current:
            return
        self._silent(f"del map {self.maps_dir / f'{name}.map'} {key}")
        del current[key]

    # --- reading and mirroring ------------------------------------------------------------------
    def _state(self) -> State:
        state = State(maps={name: self._read_map(name) for name in MAPS})
        for backend, slot, address, admin in self._servers(self._command("show servers state")):
            enabled = not admin & ADMIN_FORCED_MAINTENANCE
            draining = bool(admin & ADMIN_FORCED_DRAIN)
            state.slots.setdefault(backend, []).append(Slot(slot, address, enabled, draining))
        for slots in state.slots.values():
            slots.sort(key=lambda slot: int(slot.name[1:]))
        for page_id in set(state.maps["pages"].values()):
            path = self.pages_dir / f"{page_id}.html"
            try:
                state.pages[page_id] = path.read_bytes().decode() if PAGE_ID_RE.fullmatch(page_id) else None
            except (OSError, UnicodeDecodeError):
                state.pages[page_id] = None
        return state

    def _read_map(self, name: str) -> dict[str, str]:
        answer = self._command(f"show map {self.maps_dir / f'{name}.map'}")
        entries: dict[str, str] = {}
        for line in answer.splitlines():
            parts = line.split(maxsplit=2)
            if len(parts) == 3 and parts[0].startswith("0x"):
                entries[parts[1]] = parts[2]
            elif line.strip():
                raise self._refused(f"show map {name}", answer)
        return entries

    @staticmethod
    def _servers(answer: str) -> Iterator[tuple[str, str, str, int]]:
        """(backend, slot, ip:port, admin state bits) of every slot in ``show servers state``."""
        lines = answer.splitlines()
        if not lines or lines[0].strip() != "1":
            raise EdgeError(f"unexpected answer to show servers state: {answer[:200]!r}", permanent=False)
        columns: list[str] = []
        for line in lines[1:]:
            if line.startswith("# "):
                columns = line[2:].split()
                continue
            values = line.split()
            if not values or not columns:
                continue
            row = dict(zip(columns, values, strict=False))
            backend, slot = row.get("be_name", ""), row.get("srv_name", "")
            if not BACKEND_RE.fullmatch(backend) or not re.fullmatch(r"s[0-9]+", slot):
                continue
            admin = int(row.get("srv_admin_state", "1"))
            yield backend, slot, join_address(row.get("srv_addr", ""), row.get("srv_port", "")), admin

    def _mirror(self, state: State) -> None:
        """Write every map (as ``state`` has it: read at the start of the change, updated
        with every command that succeeded) and the server state to the files HAProxy loads
        at start."""
        for name in MAPS:
            text = "".join(f"{key} {value}\n" for key, value in sorted(state.maps[name].items()))
            self._write_file(self.maps_dir / f"{name}.map", text)
        servers = self._command("show servers state")
        if servers.splitlines()[:1] != ["1"]:
            raise EdgeError(f"unexpected answer to show servers state: {servers[:200]!r}", permanent=False)
        self._write_file(self.state_file, servers)
        # The pages no route answers any more (after the maps a restart loads: never one
        # they still name).
        used = set(state.maps["pages"].values())
        with suppress(OSError):
            for path in self.pages_dir.glob("*.html"):
                if path.stem not in used:
                    path.unlink(missing_ok=True)

    @staticmethod
    def _write_file(path: Path | str, text: str, mode: int = 0o600) -> None:
        HAProxyRouter._write_bytes(path, text.encode(), mode)

    @staticmethod
    def _write_bytes(path: Path | str, data: bytes, mode: int = 0o600) -> None:
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time, across processes (scripts/haproxy.sh takes it too)."""
        try:
            handle = open(self.directory / "state.lock", "a")
        except OSError as exc:
            raise EdgeError(
                f"{self.directory}: cannot take the router's lock: {exc}", permanent=False
            ) from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the runtime API ------------------------------------------------------------------------
    def _command(self, command: str) -> str:
        """Send one command; its whole answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(command.encode() + b"\n")
                chunks, size = [], 0
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > READ_LIMIT:
                        raise EdgeError(f"{command}: answer over {READ_LIMIT} bytes", permanent=False)
        except OSError as exc:
            raise EdgeError(
                f"{command}: HAProxy runtime API {self.socket_path} unreachable: {exc}", permanent=False
            ) from exc
        return b"".join(chunks).decode("utf-8", "replace")

    def _silent(self, command: str) -> None:
        """A command that answers nothing when it succeeds."""
        answer = self._command(command)
        if answer.strip():
            raise self._refused(command, answer)

    @staticmethod
    def _refused(command: str, answer: str) -> EdgeError:
        # Our commands are validated: a refusal is a router that is not what we expect.
        return EdgeError(f"HAProxy refused {command!r}: {answer.strip()[:300]}", permanent=True)
