"""B-2: blue/green upgrade of a static site's web component (nginx 1.22 -> 1.26) under steady
GET and POST load through the edge: failed requests, and p99 latency during the upgrade
against p99 in an equal window right before it, in the same run. The edge is the product's
default router, HAProxy (``--edge haproxy``: a blue/green swap drains the old replica on the
edge before it stops), or Caddy (``--edge caddy``), each a router of the bench's own.

The load runs in a process of its own (so the operation in this one does not share its
GIL): ``--threads`` keep-alive connections, paced to ``--rate`` requests a second in all.
Half the connections send GETs, half POSTs with a 1 KB body (``--post-share``). A GET fails
when it does not answer 200 with the page; a POST fails unless nginx itself answered it (a
static site answers POST with its own 405 page: the request went through the edge to the
container, body included); errors and timeouts fail. The upgrade
window is lifecycle.upgrade + run_operation; the "before" window is the same length, ending
where the upgrade starts (the first seconds of load are a warm-up, not counted).

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/upgrade.py [--edge haproxy|caddy] [--runs 3] [--rate 200] [--threads 4] \\
        [--before 20] [--timeline]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _setup import (
    EDGES,
    STACK_LABEL,
    Bench,
    BenchError,
    container_timeline,
    describe_timeline,
    machine,
    median,
    note,
    stackport,
    wait_for_page,
)

VERSIONS = [("nginx", "1.22"), ("nginx", "1.26")]
STATIC = [
    {"name": "web", "component": "nginx", "version": "1.22", "size": "small", "replicas": 1, "public": True}
]
PAGE_TEXT = "Stackport nginx"
WARMUP = 3.0  # seconds of load not counted
GOAL_RATIO = 1.5


# --- the load (runs in a child process; no Django there) ---------------------------------------------
POST_BODY = b"x" * 1024


def load(edge_addr: str, host: str, rate: float, threads: int, posts: int, stop: Any, out: str) -> None:
    """GET / (POST / on the first ``posts`` connections) with Host ``host`` on ``threads``
    keep-alive connections, ``rate`` a second in all; write [monotonic send time, seconds,
    status or error name, method] per request to ``out``."""
    records: list[tuple[float, float, int | str, str]] = []
    lock = threading.Lock()
    address, port = edge_addr.rsplit(":", 1)
    interval = threads / rate

    def worker(number: int) -> None:
        method = "POST" if number < posts else "GET"
        connection: http.client.HTTPConnection | None = None
        due = time.monotonic() + interval * number / threads
        while not stop.is_set():
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            due = max(due + interval, time.monotonic())  # behind schedule: no burst
            sent = time.monotonic()
            result: int | str
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(address, int(port), timeout=10)
                if method == "POST":
                    connection.request("POST", "/", body=POST_BODY, headers={"Host": host})
                else:
                    connection.request("GET", "/", headers={"Host": host})
                response = connection.getresponse()
                body = response.read()
                if method == "POST":
                    # nginx's own "405 Not Allowed" page: the container got the request.
                    answered = response.status == 405 and b"nginx" in body
                    result = 200 if answered else f"{response.status}-not-from-nginx"
                else:
                    result = (
                        response.status if PAGE_TEXT.encode() in body else f"{response.status}-wrong-body"
                    )
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                result = type(exc).__name__
                if connection is not None:
                    connection.close()
                connection = None
            with lock:
                records.append((sent, time.monotonic() - sent, result, method))
        if connection is not None:
            connection.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    Path(out).write_text(json.dumps(records))


# --- analysis ------------------------------------------------------------------------------------------
def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def window(records: list[Any], start: float, end: float) -> list[Any]:
    return [r for r in records if start <= r[0] < end]


def summary(records: list[Any]) -> str:
    latencies = [r[1] * 1000 for r in records]
    return (
        f"{len(records)} requests, p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies, default=float('nan')):.1f} ms, "
        f"{sum(1 for ms in latencies if ms > 100)} over 100 ms"
    )


# --- one run -----------------------------------------------------------------------------------------
def upgrade_run(bench: Bench, run: int, args: argparse.Namespace) -> tuple[float, int]:
    from stacks.runtime import lifecycle

    env = bench.create(f"Upgrade {run}", components=STATIC, current=("nginx", "1.22"))
    bench.run(env.operations.get())
    wait_for_page(f"{bench.edge.edge_url}/", env.hostname, PAGE_TEXT)
    posts = round(args.threads * args.post_share)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    child = context.Process(
        target=load,
        args=(bench.edge.edge_addr, env.hostname, args.rate, args.threads, posts, stop, out),
    )
    child.start()
    try:
        loaded = time.monotonic()
        time.sleep(WARMUP + args.before)
        wall, begin = time.time(), time.monotonic()
        operation = lifecycle.upgrade(environment=env, actor=None, component="web", version="1.26")
        bench.run(operation)
        end = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.terminate()
    records = json.loads(Path(out).read_text())
    Path(out).unlink()
    if child.exitcode != 0:
        raise BenchError(f"the load process exited with {child.exitcode}")
    length = end - begin
    before_start = max(begin - length, loaded + WARMUP)
    if before_start > begin - length:
        note(f"the before window is shorter than the upgrade ({begin - before_start:.1f} s): raise --before")
    before, during = window(records, before_start, begin), window(records, begin, end)
    failures = [r for r in records if r[2] != 200]
    ratio = percentile([r[1] for r in during], 0.99) / percentile([r[1] for r in before], 0.99)
    print(f"run {run + 1}: upgrade {length:.2f} s; {len(records)} requests in all, {len(failures)} failed")
    for method in ("GET", "POST"):
        sent_n = sum(1 for r in records if r[3] == method)
        failed_n = sum(1 for r in failures if r[3] == method)
        print(f"  {method}: {sent_n} sent, {failed_n} failed")
    print(f"  before: {summary(before)}")
    print(f"  during: {summary(during)}")
    for sent, seconds, result, method in sorted(during, key=lambda r: -r[1])[:5]:
        print(f"    slow: {method} +{sent - begin:.2f} s took {seconds * 1000:.0f} ms ({result})")
    for sent, seconds, result, method in failures[:10]:
        print(f"    failed: {method} +{sent - begin:.2f} s after {seconds * 1000:.0f} ms: {result}")
    if args.timeline:
        timeline = container_timeline(f"{STACK_LABEL}={env.key}", wall, time.time())
        print(describe_timeline(timeline, "    "))
    print(f"  p99 ratio {ratio:.2f}", flush=True)
    bench.destroy(env)
    return ratio, len(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--edge", choices=EDGES, default="haproxy", help="the edge router (default haproxy, the product's)"
    )
    parser.add_argument("--runs", type=int, default=3, help="upgrades, each on a fresh stack (default 3)")
    parser.add_argument("--rate", type=float, default=200, help="requests a second in all (default 200)")
    parser.add_argument("--threads", type=int, default=4, help="connections (default 4)")
    parser.add_argument(
        "--post-share", type=float, default=0.5, help="share of the connections sending POSTs (default 0.5)"
    )
    parser.add_argument(
        "--before", type=float, default=20, help="seconds of load before the upgrade (default 20)"
    )
    parser.add_argument(
        "--timeline", action="store_true", help="print the containers' start/healthy/stop times"
    )
    args = parser.parse_args()
    ratios: list[float] = []
    failed = 0
    with stackport(VERSIONS, edge=args.edge) as bench:
        print(
            f"nginx 1.22 -> 1.26 under {args.rate:.0f} requests/s on {args.threads} connections via the "
            f"{args.edge} edge ({round(args.threads * args.post_share)} of them POST)"
        )
        print(f"before: {machine()}")
        for run in range(args.runs):
            note(f"run {run + 1}/{args.runs}")
            ratio, failures = upgrade_run(bench, run, args)
            ratios.append(ratio)
            failed += failures
    print(f"after: {machine()}")
    print(f"p99 ratios: {', '.join(f'{r:.2f}' for r in ratios)}; median {median(ratios):.2f}")
    print(
        f"upgrade p99 ratio (during / before): {median(ratios):.2f} (goal <= {GOAL_RATIO}), "
        f"failed requests: {failed} (goal 0)"
    )


if __name__ == "__main__":
    main()
