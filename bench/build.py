"""B-13: a dependency build from the cache against the same build run for real, in the same run.

A Python app (Flask behind gunicorn, from a Procfile) with 20 pinned dependencies in its
requirements.txt is uploaded through ``lifecycle.deploy_content`` and deployed by
``run_operation``: the first deploy runs pip in a build container of the python image
(from PyPI, through the machine's network); the second uploads the same app with only its
code changed (the same lock on the same image) and takes the built dependencies from the
cache. Both times the page is checked through the edge.

Prints the seconds of the "Build the dependencies" step and of the whole deploy for each
run, and as its last line ``build ratio (cached / first)``: the second build step over the
first (goal <= 0.1). ``--runs N`` repeats the pair N times, each with a fresh cache (a new
requirement pin makes a new key), and takes medians.

    DJANGO_ENV=test DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/stackport_bench \\
        .venv/bin/python bench/build.py [--runs 1]

The build container reaches PyPI through this machine's network; when TLS goes through a
proxy with its own CA, ``SSL_CERT_FILE`` (when set) is handed to it as
``STACKPORT_BUILD_CA_BUNDLE``.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from _setup import BenchError, machine, median, note, stackport, step_durations, wait_for_page

VERSIONS = [("python", "3.13")]
GOAL = 0.1
STEP = "Build the dependencies"
REQUIREMENTS = [
    "flask==3.1.0",
    "werkzeug==3.1.3",
    "jinja2==3.1.5",
    "itsdangerous==2.2.0",
    "click==8.1.8",
    "blinker==1.9.0",
    "markupsafe==3.0.2",
    "requests==2.32.3",
    "urllib3==2.3.0",
    "idna==3.10",
    "charset-normalizer==3.4.1",
    "certifi==2024.12.14",
    "python-dateutil==2.9.0.post0",
    "six==1.17.0",
    "pyyaml==6.0.2",
    "attrs==24.3.0",
    "packaging==24.2",
    "typing-extensions==4.12.2",
    "simplejson==3.19.3",
]
# The 20th pin changes per run (tzdata's versions), so every run starts from a cold cache.
TZDATA = ["2024.2", "2024.1", "2023.4", "2023.3", "2025.1"]
APP = """\
import flask, yaml, requests, dateutil, simplejson

app = flask.Flask(__name__)


@app.get("/healthz")  # the edge's active health check wants a 2xx here
def healthz():
    return "ok"


@app.get("/")
def index():
    return "MARK"
"""
PROCFILE = "web: python3 -m gunicorn --bind 0.0.0.0:$PORT --workers 1 app:app\n"


def archive(mark: str, tzdata: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("app.py", APP.replace("MARK", mark))
        zipped.writestr("requirements.txt", "\n".join([*REQUIREMENTS, f"tzdata=={tzdata}"]) + "\n")
        zipped.writestr("Procfile", PROCFILE)
    buffer.seek(0)
    return buffer


def deploy(bench: Any, env: Any, tzdata: str) -> tuple[float, float, bool]:
    """Upload and deploy; (build step seconds, deploy seconds until the page answers, cached)."""
    from stacks.runtime import lifecycle

    mark = f"build-bench-{uuid.uuid4().hex}"
    started = time.monotonic()
    op = lifecycle.deploy_content(
        environment=env, actor=None, archive=archive(mark, tzdata), filename="app.zip"
    )
    op = bench.run(op)
    wait_for_page(bench.caddy.edge_url, env.hostname, mark)
    total = time.monotonic() - started
    build = op.params.get("build")
    if not build:
        raise BenchError(f"no build recorded:\n{op.log}")
    return step_durations(op)[STEP], total, bool(build["cached"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.runs <= len(TZDATA):
        raise SystemExit(f"--runs: 1 to {len(TZDATA)}")
    bundle = os.environ.get("SSL_CERT_FILE", "")
    if bundle and Path(bundle).is_file():
        os.environ.setdefault("STACKPORT_BUILD_CA_BUNDLE", bundle)
    with stackport(VERSIONS) as bench:
        rows = [
            {
                "name": "app",
                "component": "python",
                "version": "3.13",
                "size": "small",
                "replicas": 1,
                "public": True,
            }
        ]
        env = bench.create("Build bench", components=rows)
        bench.run(env.operations.get())
        print(f"python app with {len(REQUIREMENTS) + 1} pinned dependencies, {args.runs} run(s)")
        print(f"before: {machine()}")
        first: list[float] = []
        cached: list[float] = []
        for run in range(args.runs):
            note(f"run {run + 1}: first build")
            step, total, hit = deploy(bench, env, TZDATA[run])
            if hit:
                raise BenchError("the first build of a new lock came from the cache")
            print(f"run {run + 1}: first build  {step:7.2f} s  (deploy {total:6.1f} s)")
            first.append(step)
            note(f"run {run + 1}: unchanged lock")
            step, total, hit = deploy(bench, env, TZDATA[run])
            if not hit:
                raise BenchError("an unchanged lock was built again")
            print(f"run {run + 1}: cached build {step:7.2f} s  (deploy {total:6.1f} s)")
            cached.append(step)
        print(f"after: {machine()}")
        ratio = median(cached) / median(first)
        verdict = "ok" if ratio <= GOAL else "over the goal"
        print(
            f"build ratio (cached / first): {ratio:.3f} (goal <= {GOAL}: {verdict}; "
            f"median {median(cached):.2f} s / {median(first):.2f} s)"
        )


if __name__ == "__main__":
    main()
