"""Requests a second through the edge (Caddy) against straight to the container: the same
nginx static page, the same client, concurrency and duration, alternating, in one run.

Also measured, for comparison only: the same Caddy with a bare reverse_proxy route (one
upstream, none of Stackport's health-check and retry settings), "edge-min".

The stack is one nginx 1.26 replica deployed by Stackport (``--size``, default large: 1 CPU;
the small size's 0.25 CPU caps nginx itself and hides the edge's cost). The client is wrk
(Debian's ``wrk``) when installed, else a threaded Python client (much slower: it then
measures itself more than the edge). Both targets get the same Host header.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/edge.py [--runs 3] [--duration 10] [--connections 16] [--size large]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests
from _setup import Bench, BenchError, fetch, machine, median, note, stackport, wait_for_page

VERSIONS = [("nginx", "1.26")]
PAGE_TEXT = "Stackport nginx"
GOAL = 0.8


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
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    rates: dict[str, list[float]] = {"edge": [], "direct": [], "edge-min": []}
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
        targets = {
            "edge": (f"{bench.caddy.edge_url}/", env.hostname),
            "direct": (f"http://{address}/", env.hostname),
            "edge-min": (f"{bench.caddy.edge_url}/", "minimal.bench.localhost"),
        }
        for target, (url, host) in targets.items():
            wait_for_page(url, host, PAGE_TEXT)
            note(f"{target}: {url} (Host {host}) answers {len(fetch(url, host).content)} bytes")
        client = "wrk" if use_wrk else "python client"
        print(
            f"GET / of nginx 1.26 ({args.size}) with {client}, {args.connections} connections, "
            f"{args.duration:.0f} s a measurement, {args.runs} a target"
        )
        print(f"before: {machine()}")
        for url, host in targets.values():  # warm-up, not counted
            measure(url, host, args, 2)
        for run in range(args.runs):
            order = ["edge", "direct", "edge-min"]
            if run % 2:
                order.reverse()
            for target in order:
                cpu = cpu_seconds(bench.caddy.pid)
                rps, detail = measure(*targets[target], args, args.duration)
                cpu = cpu_seconds(bench.caddy.pid) - cpu
                rates[target].append(rps)
                per_request = cpu / (rps * args.duration) * 1e6
                print(
                    f"run {run + 1} {target:8} {rps:8.0f} req/s  {detail}; "
                    f"caddy CPU {cpu / args.duration:.2f} cores, {per_request:.0f} us a request",
                    flush=True,
                )
        bench.destroy(env)
    edge, direct = median(rates["edge"]), median(rates["direct"])
    minimal = median(rates["edge-min"])
    print(f"after: {machine()}")
    print(f"median: edge {edge:.0f} req/s, direct {direct:.0f} req/s, edge-min {minimal:.0f} req/s")
    print(f"bare-route ratio (edge-min / direct), for comparison: {minimal / direct:.2f}")
    print(f"edge throughput ratio (edge / direct): {edge / direct:.2f} (goal >= {GOAL})")


if __name__ == "__main__":
    main()
