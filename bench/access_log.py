"""B-12, what a site's access log costs: the catalog's nginx image as shipped (the access log
buffered, 32 KB, written at least every second) against the same image writing a line per
request (its config before, mounted over the shipped one), alternating in one run.

Both containers run the image's built-in page with 1 CPU and the engine's json-file log (10 MB
x 3), as a customer's replica does; wrk (or a Python client) GETs ``/`` with ``--connections``
keep-alive connections. For each: requests a second, and the host CPU the log copy costs a
request (dockerd, containerd-shim and the kernel's workers, from ``/proc``). Last line:
``throughput ratio (buffered / line by line)`` (higher is better; 1 means the log costs
nothing).

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/access_log.py [--runs 3] [--duration 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _setup import PLAIN_LABEL, REPO, BenchError, machine, median, note, stackport, wait_for_page

VERSIONS = [("nginx", "1.26")]
PAGE_TEXT = "Stackport nginx"  # the image's built-in page
CONFIG = REPO / "stacks" / "catalog" / "images" / "nginx" / "nginx.conf"
SHIPPED = re.compile(r"access_log /dev/stdout stackport buffer=\S+ flush=\S+;")
LOG_COPY = ("dockerd", "containerd-shim", "kworker")


def cpu_by_name() -> dict[str, float]:
    """CPU seconds so far of every process, summed by name (kworker/... as ``kworker``)."""
    totals: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = text[text.index("(") + 1 : text.rindex(")")].split("/")[0]
        fields = text.rsplit(")", 1)[1].split()
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return totals


def start(client: Any, image: str, config: Path, key: str) -> tuple[Any, str]:
    container = client.containers.run(
        image,
        detach=True,
        nano_cpus=1_000_000_000,
        mem_limit="1g",
        log_config={"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}},
        volumes={str(config): {"bind": "/etc/nginx/stackport/nginx.conf", "mode": "ro"}},
        labels={PLAIN_LABEL: key},
    )
    for _ in range(100):
        container.reload()
        address = container.attrs["NetworkSettings"]["IPAddress"]
        if address:
            url = f"http://{address}:8080/"
            wait_for_page(url, "localhost", PAGE_TEXT, timeout=30)
            return container, url
        time.sleep(0.1)
    raise BenchError(f"{key}: the container got no address:\n{container.logs(tail=20).decode()}")


def measure(url: str, args: argparse.Namespace) -> float:
    out = subprocess.run(  # noqa: S603 - wrk with our own arguments
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{int(args.duration)}s", url],  # noqa: S607
        capture_output=True, text=True, timeout=args.duration + 60, check=True,
    ).stdout  # fmt: skip
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if rps is None or "Non-2xx" in out:
        raise BenchError(f"wrk against {url}:\n{out}")
    return float(rps[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="measurements per container (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    shipped = CONFIG.read_text()
    if not SHIPPED.search(shipped):
        raise BenchError(f"{CONFIG}: no buffered access_log line to compare with")
    folder = Path(tempfile.mkdtemp(prefix="bench-log-"))
    configs = {"buffered": folder / "buffered.conf", "line by line": folder / "lines.conf"}
    configs["buffered"].write_text(shipped)
    configs["line by line"].write_text(SHIPPED.sub("access_log /dev/stdout stackport;", shipped))
    for config in configs.values():
        config.chmod(0o644)
    folder.chmod(0o755)
    with stackport(VERSIONS) as bench:
        from stacks.catalog.pipeline import image_tag
        from stacks.models import ComponentVersion

        image = image_tag(ComponentVersion.objects.get(component__code="nginx", version="1.26"))
        client = bench.docker()
        urls = {}
        for name, config in configs.items():
            container, urls[name] = start(client, image, config, f"access-log-{name.replace(' ', '-')}")
            bench.cleanups.append(lambda container=container: container.remove(force=True))
        bench.cleanups.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        print(
            f"GET / of the nginx 1.26 image's page, wrk, {args.connections} connections, "
            f"{args.duration:.0f} s each"
        )
        print(f"before: {machine()}")
        for url in urls.values():
            measure(url, argparse.Namespace(**{**vars(args), "duration": 2}))  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in urls}
        copy_cost: dict[str, list[float]] = {name: [] for name in urls}
        for run in range(args.runs):
            order = list(urls) if run % 2 == 0 else list(reversed(urls))
            for name in order:
                before = cpu_by_name()
                rps = measure(urls[name], args)
                after = cpu_by_name()
                copy = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in LOG_COPY)
                served = after.get("nginx", 0.0) - before.get("nginx", 0.0)
                rates[name].append(rps)
                copy_cost[name].append(copy / (rps * args.duration) * 1e6)
                print(
                    f"run {run + 1} {name:13} {rps:8.0f} req/s; log copy {copy / args.duration:.2f} CPU, "
                    f"{copy_cost[name][-1]:.0f} us a request; nginx {served / args.duration:.2f} CPU",
                    flush=True,
                )
        note("removing the containers")
    print(f"after: {machine()}")
    for name in urls:
        print(
            f"median {name:13} {median(rates[name]):8.0f} req/s, "
            f"log copy {median(copy_cost[name]):.0f} us a request"
        )
    ratio = median(rates["buffered"]) / median(rates["line by line"])
    print(f"throughput ratio (buffered / line by line): {ratio:.2f}")


if __name__ == "__main__":
    main()
