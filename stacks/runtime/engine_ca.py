"""The portal's small certificate authority for its Docker engines (mutual TLS on tcp://).

One CA (an EC P-256 key, ten years) in a folder of its own (``STACKPORT_ENGINE_CA_DIR``,
mode 700, private keys mode 600). It issues each engine a server certificate for its
addresses, and the portal one client certificate; an engine started with ``--tlsverify``
and this CA accepts only clients holding a certificate of it (docs/security.md, "Docker
engines over TCP"). Pure ``cryptography``, no Django: ``scripts/docker-hosts.sh`` (and an
operator preparing a host) runs it as a command:

    python -m stacks.runtime.engine_ca server --ca DIR --name sp1 --address 10.199.1.2 --out DIR
    python -m stacks.runtime.engine_ca client --ca DIR

Everything is made once and kept: a second run changes nothing, except that a leaf
certificate (an engine's or the portal's) less than ``RENEW_DAYS`` from its end is issued
anew. Creating and issuing hold an ``flock`` on ``.lock`` in the CA folder, so the web
process, the worker and the command never mix two CAs' halves or two leaves' halves.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stacks.backends.base import EngineTLS

CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_DAYS = 30  # a leaf this close to its end is issued anew
CLIENT_NAME = "stackport-portal"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written whole under a fresh temporary name (mkstemp: O_EXCL, mode 600 from its
    creation, so no leftover file's mode can expose a key), then renamed over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The CA folder's lock (an flock, so it goes with the process that held it)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fresh(cert: x509.Certificate) -> bool:
    """Still valid for more than ``RENEW_DAYS``."""
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=RENEW_DAYS)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stackport"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA of ``directory``, made on first use."""
    with _locked(directory):
        return _ensure_ca(directory)


def _ensure_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """``ensure_ca`` for a caller holding the lock."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("Stackport engine CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_bytes(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _issue(directory: Path, common_name: str, addresses: list[str], server: bool) -> tuple[bytes, bytes]:
    ca_cert, ca_key = _ensure_ca(directory)  # the caller holds the lock
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(common_name)]
        for address in addresses:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(address)))
            except ValueError:
                names.append(x509.DNSName(address))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_bytes(key)


def issue_server(directory: Path, name: str, addresses: list[str], out: Path) -> Path:
    """An engine's certificate for ``addresses`` (IPs or DNS names) in ``out`` (ca.pem,
    cert.pem, key.pem; what dockerd's --tlscacert/--tlscert/--tlskey take). Kept when
    present, issued by this CA for the same names and not within ``RENEW_DAYS`` of its end."""
    with _locked(directory):
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o700)
        if not _server_cert_current(directory, out, sorted({name, *addresses})):
            cert, key = _issue(directory, name, addresses, server=True)
            _write(out / "key.pem", key, 0o600)
            _write(out / "cert.pem", cert, 0o644)
            _write(out / "ca.pem", (directory / "ca.pem").read_bytes(), 0o644)
    return out


def _server_cert_current(directory: Path, out: Path, wanted: list[str]) -> bool:
    ca_pem = (directory / "ca.pem").read_bytes() if (directory / "ca.pem").exists() else b""
    if not (ca_pem and (out / "ca.pem").exists() and (out / "ca.pem").read_bytes() == ca_pem):
        return False
    try:
        existing = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        sans = existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    have = sorted(
        {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        | set(sans.get_values_for_type(x509.DNSName))
    )
    return have == wanted and (out / "key.pem").exists() and _fresh(existing)


def client_tls(directory: Path, *, verify: bool = True) -> EngineTLS:
    """The portal's client certificate (made once, issued anew near its end), as the Docker
    backend takes it."""
    cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
    with _locked(directory):
        try:
            current = key_path.exists() and _fresh(x509.load_pem_x509_certificate(cert_path.read_bytes()))
        except (OSError, ValueError):
            current = False
        if not current:
            cert, key = _issue(directory, CLIENT_NAME, [], server=False)
            _write(key_path, key, 0o600)
            _write(cert_path, cert, 0o644)
    return EngineTLS(
        ca_cert=str(directory / "ca.pem"), client_cert=str(cert_path), client_key=str(key_path), verify=verify
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stacks.runtime.engine_ca", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="issue (or keep) an engine's server certificate")
    server.add_argument("--ca", required=True, type=Path)
    server.add_argument("--name", required=True)
    server.add_argument("--address", action="append", default=[])
    server.add_argument("--out", required=True, type=Path)
    client = commands.add_parser("client", help="make (or keep) the portal's client certificate")
    client.add_argument("--ca", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "server":
        print(issue_server(args.ca, args.name, args.address, args.out))
    else:
        print(client_tls(args.ca).client_cert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
