"""A variable change applied under load (issue 16): an environment with two public Python
replicas gets a variable changed and the redeploy that applies it (a rolling, blue/green
replacement of the replicas) while a client sends keep-alive GETs through the real edge
without pause. No request may fail, and the new value must reach the app."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from projects.models import Environment
from stacks.runtime import lifecycle
from tests.stacks import test_lifecycle
from tests.stacks.conftest import Caddy
from tests.stacks.test_lifecycle import deploy, get, run
from tests.stacks.test_operations import zip_archive

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]

stackport = test_lifecycle.stackport
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup

PYTHON = [
    {"name": "app", "component": "python", "version": "3.13", "size": "small", "replicas": 2, "public": True}
]
# A WSGI app without dependencies (nothing to build): it prints GREETING and the replica's
# host name, so the test sees which value each answer came with.
APP = """\
import os
import socket


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok"
    else:
        body = f"greeting {os.environ.get('GREETING', 'unset')} from {socket.gethostname()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@dataclass
class KeepAliveLoad:
    """One client on one keep-alive session sending GETs (or ``method`` requests, a POST with a
    4 KB body) through the edge back to back; every answer's body is kept (with its time),
    every failure too (status >= 500 or an error)."""

    caddy: Caddy
    env: Environment
    method: str = "GET"
    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            session.trust_env = False
            deadline = time.monotonic() + 600  # bounded, whatever the test does
            while not self.stop.is_set() and time.monotonic() < deadline:
                at = time.monotonic()
                try:
                    r = session.request(
                        self.method,
                        f"{self.caddy.edge_url}/",
                        headers={"Host": self.env.hostname},
                        data=b"x" * 4096 if self.method == "POST" else None,
                        timeout=10,
                    )
                    if r.status_code >= 500 or not r.text.startswith("greeting "):
                        self.failures.append((at, f"{r.status_code} {r.text[:120]}"))
                    else:
                        self.answers.append((at, r.text))
                except requests.RequestException as exc:
                    self.failures.append((at, f"{type(exc).__name__}: {exc}"[:200]))

    def __enter__(self) -> KeepAliveLoad:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2)
        self.stop.set()
        self.thread.join(30)


def test_a_variable_change_is_applied_to_two_replicas_under_load_without_a_failed_request(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    env = deploy(team, cleanup, name="Greeter", components=PYTHON)
    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="hello")
    run(
        lifecycle.deploy_content(
            environment=env, actor=team.developer, archive=zip_archive({"app.py": APP}), filename="app.zip"
        )
    )
    assert get(stackport, env).text.startswith("greeting hello from ")
    assert not lifecycle.pending_variables(env)

    lifecycle.set_variable(environment=env, actor=team.developer, name="GREETING", value="bonjour")
    assert lifecycle.pending_variables(env)  # the page offers "Redeploy to apply"
    with KeepAliveLoad(stackport, env) as load:
        started = time.monotonic()
        op = run(lifecycle.redeploy(environment=env, actor=team.developer))
        finished = time.monotonic()

    assert load.failures == [], (len(load.answers), load.failures[:10], op.log[-3000:])
    before = [text for at, text in load.answers if at < started]
    after = [text for at, text in load.answers if at > finished]
    assert before and all(text.startswith("greeting hello ") for text in before), before[:5]
    assert after and all(text.startswith("greeting bonjour ") for text in after), after[:5]
    assert len(load.answers) > 50, len(load.answers)
    # Both new replicas answer the new value.
    replicas = {text.rsplit(" ", 1)[1] for text in after}
    assert len(replicas) == 2, replicas
    print(
        f"\n{len(load.answers)} GETs in {finished - started:.1f}s of redeploy (+ 3 s around it), "
        f"0 failed; after: replicas {sorted(replicas)}"
    )
    assert not lifecycle.pending_variables(env)
    for _ in range(20):
        assert get(stackport, env).text.startswith("greeting bonjour from ")
