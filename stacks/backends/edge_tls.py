"""HTTPS on the edge router: the config pieces ``stacks.backends.edge.EdgeRouter`` writes for it,
and a probe of the certificate the edge serves for a name.

Caddy's automatic HTTPS does the ACME work. Turned on for the edge server (``https_config``),
it takes every host name of the server's top-level routes, asks the ACME directory of
``TlsSettings`` for a certificate of each (HTTP-01 on the edge's HTTP port, TLS-ALPN-01 on
its HTTPS port), renews them, and drops a name's certificate from what it serves once no
route names it any more. Names no public CA can certify (``localhost`` and below, IP
addresses) get a certificate of Caddy's own local CA, never installed into a trust store.

Three *platform routes*, ahead of every customer route, complete it (``platform_routes``):

- ``stackport_challenges``: ``/.well-known/stackport-challenge/<token>`` answers the token of a
  pending domain claim, only on that claim's host name (the HTTP proof of control,
  ``stacks.runtime.domains``). Its host matchers sit inside a subroute, where automatic HTTPS
  does not look: a pending name gets no certificate.
- ``stackport_hsts``: ``Strict-Transport-Security`` on HTTPS answers of the hosts that opted in.
- ``stackport_https_redirect``: plain HTTP requests to hosts that have a certificate get a
  308 to the same URL over HTTPS (not ACME's or our own challenge paths).

The HAProxy edge (``stacks.backends.haproxy``) serves the same through maps of its static
config; both routers read what their HTTPS listener serves with the functions at the end.
"""

from __future__ import annotations

import re
import socket
import ssl
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import urllib3  # a dependency of requests
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

CHALLENGES_ID = "stackport_challenges"
HSTS_ID = "stackport_hsts"
HTTPS_REDIRECT_ID = "stackport_https_redirect"
# Platform routes come first, in this order (the HSTS route is not terminal).
PLATFORM_ROUTE_ORDER = {CHALLENGES_ID: 0, HSTS_ID: 1, HTTPS_REDIRECT_ID: 2}
CHALLENGE_PATH = "/.well-known/stackport-challenge/"
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
HSTS_VALUE = "max-age=31536000"
NO_CHALLENGE_BODY = "No such challenge here\n"
PROBE_TIMEOUT = 5.0
HTTPS_GET_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class TlsSettings:
    """How the edge gets certificates: the ACME ``directory`` (Let's Encrypt's in production),
    the addresses its HTTPS listener binds (``https_listen``), the public HTTPS port redirects
    name (``public_https_port``, 443 in production), a PEM file of roots to trust for the
    directory's own TLS (``ca_root``, for a test CA such as Pebble) and the ACME account's
    ``email`` (optional)."""

    directory: str
    https_listen: Sequence[str]
    public_https_port: int = 443
    ca_root: str = ""
    email: str = ""


@dataclass(frozen=True)
class CertificateInfo:
    """The certificate the edge served for a name."""

    names: tuple[str, ...]
    issuer: str
    not_before: datetime
    not_after: datetime

    def covers(self, host: str) -> bool:
        for name in self.names:
            if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
                return True
        return False


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def acme_issuer(tls: TlsSettings, http_port: int) -> dict[str, Any]:
    issuer: dict[str, Any] = {
        "module": "acme",
        "ca": tls.directory,
        "challenges": {
            "http": {"alternate_port": http_port},
            "tls-alpn": {"alternate_port": port_of(tls.https_listen[0])},
        },
    }
    if tls.email:
        issuer["email"] = tls.email
    if tls.ca_root:
        issuer["trusted_roots_pem_files"] = [tls.ca_root]
    return issuer


def https_config(
    apps: Mapping[str, Any], server: str, http_listen: Sequence[str], tls: TlsSettings
) -> dict[str, Any]:
    """``apps`` (Caddy's ``apps`` config) with automatic HTTPS on for ``server``: it also listens
    on the HTTPS addresses (TLS there only: Caddy keeps ``http_port`` plain), speaks HTTP/1.1
    and 2 (no UDP listener), makes no redirects of its own, and gets certificates from the
    ACME directory; Caddy's local CA never touches a trust store. Other keys are kept."""
    http = dict(apps.get("http") or {})
    servers = dict(http.get("servers") or {})
    current = dict(servers.get(server) or {})
    plain = [a for a in current.get("listen") or http_listen if a not in tls.https_listen]
    http_port = port_of(plain[0])
    automatic = {k: v for k, v in (current.get("automatic_https") or {}).items() if k != "disable"}
    current.update(
        listen=[*plain, *tls.https_listen],
        automatic_https={**automatic, "disable_redirects": True},
        protocols=["h1", "h2"],
        tls_connection_policies=current.get("tls_connection_policies") or [{}],
    )
    servers[server] = current
    http.update(servers=servers, http_port=http_port, https_port=port_of(tls.https_listen[0]))
    pki = {"certificate_authorities": {"local": {"install_trust": False}}}
    tls_app = {"automation": {"policies": [{"issuers": [acme_issuer(tls, http_port)]}]}}
    return {**apps, "http": http, "tls": tls_app, "pki": pki}


def challenges_route(challenges: Mapping[str, str]) -> dict[str, Any]:
    """Each pending claim's token on its own host name (validated and normalized already)."""
    routes: list[dict[str, Any]] = [
        {
            "match": [{"host": [host], "path": [CHALLENGE_PATH + token]}],
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 200,
                    "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                    "body": token,
                }
            ],
            "terminal": True,
        }
        for host, token in sorted(challenges.items())
    ]
    routes.append(
        {
            "handle": [
                {
                    "handler": "static_response",
                    "status_code": 404,
                    "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                    "body": NO_CHALLENGE_BODY,
                }
            ]
        }
    )
    return {
        "@id": CHALLENGES_ID,
        "match": [{"path": [CHALLENGE_PATH + "*"]}],
        "handle": [{"handler": "subroute", "routes": routes}],
        "terminal": True,
    }


def hsts_route(hosts: Sequence[str]) -> dict[str, Any]:
    return {
        "@id": HSTS_ID,
        "match": [{"protocol": "https", "host": sorted(hosts)}],
        "handle": [
            {
                "handler": "headers",
                "response": {"set": {"Strict-Transport-Security": [HSTS_VALUE]}, "deferred": True},
            }
        ],
    }


def redirect_route(hosts: Sequence[str], public_https_port: int) -> dict[str, Any]:
    port = "" if public_https_port == 443 else f":{public_https_port}"
    return {
        "@id": HTTPS_REDIRECT_ID,
        "match": [
            {
                "protocol": "http",
                "host": sorted(hosts),
                "not": [{"path": [ACME_CHALLENGE_PATH + "*", CHALLENGE_PATH + "*"]}],
            }
        ],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 308,
                "headers": {"Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]},
            }
        ],
        "terminal": True,
    }


def platform_routes(
    *,
    challenges: Mapping[str, str],
    hsts_hosts: Iterable[str],
    redirect_hosts: Iterable[str],
    public_https_port: int,
) -> list[dict[str, Any]]:
    """The platform routes for normalized host names and validated tokens; a route with
    nothing to match is left out."""
    routes = []
    if challenges:
        routes.append(challenges_route(challenges))
    hsts = sorted(set(hsts_hosts))
    if hsts:
        routes.append(hsts_route(hsts))
    redirect = sorted(set(redirect_hosts))
    if redirect:
        routes.append(redirect_route(redirect, public_https_port))
    return routes


def probe_certificate(address: str, host: str, timeout: float = PROBE_TIMEOUT) -> CertificateInfo | None:
    """The certificate the HTTPS listener at ``address`` (``ip:port``) serves for ``host``
    (SNI), read without verifying it; None when it serves none (a failed handshake).
    Raises ``OSError`` when nothing answers at ``address``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    hostname, _, port = address.rpartition(":")
    with socket.create_connection((hostname.strip("[]"), int(port)), timeout=timeout) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLError:
            return None
    if not der:
        return None
    return certificate_info(x509.load_der_x509_certificate(der))


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    """What ``CertificateInfo`` tells of ``cert``: its DNS names, issuer and validity."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        names = tuple(san.get_values_for_type(x509.DNSName))  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        names = ()
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertificateInfo(
        names=names,
        issuer=str(issuer[0].value) if issuer else cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def local_address(listen: str) -> str:
    """Where this machine reaches a listener bound to ``listen`` (``host:port``): a wildcard
    bind (``:port``, ``0.0.0.0``, ``[::]``) is reached on loopback."""
    bind, _, port = listen.rpartition(":")
    if bind in ("", "0.0.0.0"):  # noqa: S104 (connecting to this machine, not binding)
        return f"127.0.0.1:{port}"
    if bind == "[::]":
        return f"[::1]:{port}"
    return listen


def https_get(address: str, host: str, path: str, timeout: float) -> tuple[int, str]:
    """GET ``path`` of ``host`` from the HTTPS listener at ``address`` (``ip:port``; SNI and
    Host ``host``, no redirect followed): the status and up to ``HTTPS_GET_MAX_BODY`` bytes of
    the body. The certificate is not verified (this checks the site, not the certificate).
    Raises ``urllib3.exceptions.HTTPError`` when nothing answers."""
    ip, _, port = address.rpartition(":")
    pool = urllib3.HTTPSConnectionPool(
        ip.strip("[]"),
        int(port),
        server_hostname=host,
        cert_reqs="CERT_NONE",
        assert_hostname=False,
        retries=False,
        timeout=timeout,
    )
    try:
        with warnings.catch_warnings():  # unverified on purpose (see above)
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            response = pool.request(
                "GET", path, headers={"Host": host}, redirect=False, preload_content=False
            )
        body = response.read(HTTPS_GET_MAX_BODY)
        response.release_conn()
    finally:
        pool.close()
    return response.status, body.decode("utf-8", "replace")
