"""The edge router the portal drives, chosen by ``STACKPORT_EDGE_ROUTER``: the dotted path of a
function that takes no argument and returns a router client for this install (one of the two
below, or an operator's own with the same methods, ``stacks.backends.base.EdgeRouting``).

- ``caddy``: ``stacks.backends.edge.EdgeRouter`` on Caddy's admin API
  (``STACKPORT_EDGE_ADMIN_URL``); Caddy obtains and renews certificates itself.
- ``haproxy``: ``stacks.backends.haproxy.HAProxyRouter`` on the runtime API of the HAProxy
  that ``scripts/haproxy.sh`` runs in ``STACKPORT_HAPROXY_DIR``; route changes never reload
  it, a blue/green swap drains the old slots, and the portal orders and renews the
  certificates (``stacks.runtime.certificates.order_due``).

docs/decisions.md says why HAProxy is the data plane (B-8, B-11); Caddy stays selectable.
"""

from __future__ import annotations

from typing import cast

from django.conf import settings
from django.utils.module_loading import import_string

from stacks.backends.base import EdgeRouting
from stacks.backends.edge import EdgeRouter
from stacks.backends.edge_tls import TlsSettings
from stacks.backends.haproxy import HAProxyRouter


def edge() -> EdgeRouting:
    """A client of the configured edge router (a context manager: ``with edge() as router``)."""
    return cast(EdgeRouting, import_string(settings.STACKPORT_EDGE_ROUTER)())


def caddy() -> EdgeRouter:
    return EdgeRouter(
        settings.STACKPORT_EDGE_ADMIN_URL, listen=[settings.STACKPORT_EDGE_LISTEN], tls=tls_settings()
    )


def haproxy() -> HAProxyRouter:
    return HAProxyRouter(
        settings.STACKPORT_HAPROXY_DIR,
        public_https_port=settings.STACKPORT_EDGE_HTTPS_PUBLIC_PORT,
        https_address=settings.STACKPORT_EDGE_HTTPS_LISTEN if settings.STACKPORT_ACME_DIRECTORY else None,
    )


def tls_settings() -> TlsSettings | None:
    """How Caddy gets certificates (docs/domains.md); None: plain HTTP only."""
    if not settings.STACKPORT_ACME_DIRECTORY:
        return None
    return TlsSettings(
        directory=settings.STACKPORT_ACME_DIRECTORY,
        https_listen=[settings.STACKPORT_EDGE_HTTPS_LISTEN],
        public_https_port=settings.STACKPORT_EDGE_HTTPS_PUBLIC_PORT,
        ca_root=settings.STACKPORT_ACME_CA_ROOT,
        email=settings.STACKPORT_ACME_EMAIL,
    )
