"""Certificates for the HAProxy edge (``stacks.backends.haproxy``) from an ACME directory,
with the ``acme`` library (Certbot's): the portal orders them itself, where Caddy's edge
ran its own ACME client. HTTP-01 only: each token's key authorization is answered by the
router's token map (``set_challenge``) while the CA validates, and removed afterwards; the
certificate is then installed with ``set_certificate`` (no reload).

The CA connects to the name on the edge's public HTTP port, so the name must resolve to the
edge (in the tests: Pebble on loopback, resolving through a dnsmasq of the test's own).
Every failure is an ``EdgeError``: permanent when the CA refused the order or a challenge
(the name does not point here, a policy), not permanent for the network and time-outs.
The account key is made once and kept (``acme-account.pem`` in the router's folder, mode
0600, or the ``account_key`` path given): every later order signs with it, and the CA
answers the registration with the account it has already. ``HAProxyRouter.needs_renewal``
tells when a host's certificate is due. Not yet: a periodic renewal task and the callers
(``stacks.runtime.certificates`` still relies on Caddy).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import josepy as jose
import requests
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stacks.backends.edge import EdgeError, normalize_host
from stacks.backends.haproxy import HAProxyRouter

USER_AGENT = "stackport-edge"
ACCOUNT_KEY_FILE = "acme-account.pem"


@dataclass(frozen=True)
class IssuedCertificate:
    hosts: list[str]
    fullchain_pem: str  # the certificate, then its chain
    key_pem: str
    account: str = ""  # the ACME account's URL at the CA


def account_key(path: str | os.PathLike[str]) -> jose.JWKRSA:
    """The ACME account key kept in ``path`` (PEM, mode 0600), made there at the first call
    (an RSA 2048 key; two callers at once end up with the same one)."""
    path = Path(path)
    try:
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(pem)
                    out.flush()
                    os.fsync(out.fileno())
                # A link never replaces a key another caller made meanwhile.
                with suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise EdgeError(f"ACME account key {path}: {exc}", permanent=False) from exc
    except (ValueError, TypeError) as exc:
        raise EdgeError(f"ACME account key {path}: not a private key: {exc}", permanent=True) from exc
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise EdgeError(f"ACME account key {path}: not an RSA key", permanent=True)
    return jose.JWKRSA(key=loaded)


class NonceRejected(EdgeError):
    """The CA refused a request's anti-replay nonce twice in a row (the library retries once):
    transient by the protocol (RFC 8555, 6.5; Pebble refuses 5 % of them on purpose)."""


NONCE_ATTEMPTS = 3  # whole orders tried when the CA keeps refusing nonces


def obtain_certificate(
    router: HAProxyRouter,
    hosts: Sequence[str],
    *,
    directory_url: str,
    ca_bundle: str | None = None,
    email: str | None = None,
    timeout: float = 90.0,
    account_key_path: str | os.PathLike[str] | None = None,
) -> IssuedCertificate:
    """Order a certificate for ``hosts`` (the first one its subject) from the ACME directory
    ``directory_url`` (``ca_bundle``: a file of the CA certificates its HTTPS is checked
    against, for a test CA), answering HTTP-01 through ``router``; give up after ``timeout``
    seconds. Signs with the account key of ``account_key_path`` (default: ``acme-account.pem``
    in the router's folder), made there the first time. The tokens are removed from the
    router whatever happens. An order whose nonces the CA keeps refusing is placed again, up
    to ``NONCE_ATTEMPTS`` times."""
    for attempt in range(1, NONCE_ATTEMPTS + 1):
        try:
            return _obtain_once(
                router,
                hosts,
                directory_url=directory_url,
                ca_bundle=ca_bundle,
                email=email,
                timeout=timeout,
                account_key_path=account_key_path,
            )
        except NonceRejected:
            if attempt == NONCE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _obtain_once(
    router: HAProxyRouter,
    hosts: Sequence[str],
    *,
    directory_url: str,
    ca_bundle: str | None,
    email: str | None,
    timeout: float,
    account_key_path: str | os.PathLike[str] | None,
) -> IssuedCertificate:
    if isinstance(hosts, str) or not hosts:
        raise EdgeError("a certificate needs at least one host name", permanent=True)
    names = list(dict.fromkeys(normalize_host(host) for host in hosts))
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    key = account_key(account_key_path or Path(router.directory) / ACCOUNT_KEY_FILE)
    cert_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tokens: list[str] = []
    try:
        # verify_ssl is handed to requests' ``verify``: True or a CA bundle's path.
        verify: bool = ca_bundle if ca_bundle is not None else True  # type: ignore[assignment]
        network = client.ClientNetwork(
            key, user_agent=USER_AGENT, verify_ssl=verify, timeout=int(min(timeout, 45))
        )
        acme = client.ClientV2(client.ClientV2.get_directory(directory_url, network), net=network)
        registration = messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
        try:
            network.account = acme.new_account(registration)
        except errors.ConflictError as exc:
            # The key's account exists at this CA already: orders are signed for it.
            network.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        account = network.account.uri
        order = acme.new_order(acme_crypto.make_csr(key_pem, names))
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue
            challenge = next(
                (c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)), None
            )
            if challenge is None:
                raise EdgeError(
                    f"{authorization.body.identifier.value}: the CA offers no HTTP-01", permanent=True
                )
            response, key_authorization = challenge.response_and_validation(key)
            token = challenge.chall.encode("token")
            router.set_challenge(token, key_authorization)
            tokens.append(token)
            acme.answer_challenge(challenge, response)
        order = acme.poll_and_finalize(order, deadline=deadline)
    except errors.ValidationError as exc:
        raise EdgeError(f"{', '.join(names)}: the CA could not validate: {exc}", permanent=True) from exc
    except errors.TimeoutError as exc:
        raise EdgeError(
            f"{', '.join(names)}: no certificate within {timeout:.0f} s", permanent=False
        ) from exc
    except messages.Error as exc:
        if exc.code == "badNonce":
            raise NonceRejected(f"{', '.join(names)}: the CA refused: {exc}", permanent=False) from exc
        raise EdgeError(f"{', '.join(names)}: the CA refused: {exc}", permanent=True) from exc
    except (errors.Error, requests.RequestException, OSError) as exc:
        raise EdgeError(
            f"{', '.join(names)}: ACME directory {directory_url}: {exc}", permanent=False
        ) from exc
    finally:
        for token in tokens:
            try:
                router.remove_challenge(token)
            except EdgeError:
                pass  # an unreachable router: a stale token answers nothing useful
    return IssuedCertificate(names, order.fullchain_pem, key_pem.decode(), account)


def issue_and_install(
    router: HAProxyRouter,
    hosts: Sequence[str],
    *,
    directory_url: str,
    ca_bundle: str | None = None,
    email: str | None = None,
    timeout: float = 90.0,
    account_key_path: str | os.PathLike[str] | None = None,
) -> IssuedCertificate:
    """``obtain_certificate``, then serve it for every name of ``hosts``."""
    issued = obtain_certificate(
        router,
        hosts,
        directory_url=directory_url,
        ca_bundle=ca_bundle,
        email=email,
        timeout=timeout,
        account_key_path=account_key_path,
    )
    for host in issued.hosts:
        router.set_certificate(host, issued.fullchain_pem, issued.key_pem)
    return issued
