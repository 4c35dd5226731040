"""Operations on the real engine: content uploads and git deploys, customer domains on the
edge, a worker killed mid-deploy, and what the reconciler repairs.

Like test_lifecycle: services -> operations -> the Docker backend and a real Caddy, fetched
through the edge, everything made destroyed at the end (also when a test fails).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from django.conf import settings

from projects.models import Environment, EnvironmentStatus
from projects.services import ServiceError
from stacks.backends.base import HostRecord
from stacks.backends.edge import NOT_FOUND_BODY
from stacks.models import Domain, Operation, OperationStatus, Release
from stacks.runtime import lifecycle
from stacks.runtime.operations import edge, run_operation, sync_routes_for
from stacks.runtime.reconcile import reconcile
from tests.conftest import verified
from tests.portal.test_celery import _database_url
from tests.stacks import test_lifecycle
from tests.stacks.conftest import CADDY_ROUTER, REPO_ROOT, Caddy, fetch, unused_loopback_port, wait_until
from tests.stacks.gitserver import GitServer
from tests.stacks.test_content import commit, git
from tests.stacks.test_lifecycle import STATIC, containers, deploy, get, run

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]

# The real-engine fixtures of test_lifecycle (a Caddy-backed Stackport, an engine client, cleanup).


@pytest.fixture
def stackport(settings: Any, caddy: Caddy, catalog: None) -> Caddy:
    """These tests run workers of their own against the Caddy edge, or take its admin API away."""
    return test_lifecycle.on_caddy(settings, caddy)


engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup

SAMPLE_PAGE = "Your static site is live"


def zip_archive(files: dict[str, str]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    buffer.seek(0)
    return buffer


def fetch_host(caddy: Caddy, host: str, path: str = "/") -> requests.Response:
    return fetch("GET", f"{caddy.edge_url}{path}", headers={"Host": host})


def marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


# --- content ----------------------------------------------------------------------------------------
def test_an_uploaded_zip_is_served_refused_when_unsafe_and_rolled_back(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    env = deploy(team, cleanup, template="static-site")
    assert SAMPLE_PAGE in get(stackport, env).text
    mark = marker()
    archive = zip_archive({"site-main/index.html": f"<h1>{mark}</h1>\n", "site-main/css/a.css": "p{}"})
    op = lifecycle.deploy_content(
        environment=env, actor=team.developer, archive=archive, filename="site-main.zip"
    )
    run(op)
    response = get(stackport, env)
    assert response.status_code == 200 and mark in response.text, response.text[:300]
    assert get(stackport, env, "/css/a.css").text == "p{}"  # the top folder was stripped
    env.refresh_from_db()
    release = env.current_release
    assert release.number == 2 and release.source == Release.Source.UPLOAD == "upload"
    assert release.source_detail == "site-main.zip" and release.content_files == 2
    assert op.release_id == release.pk

    releases, operations = env.releases.count(), env.operations.count()
    evil = zip_archive({"index.html": "fine", "../evil": "escaped"})
    with pytest.raises(ServiceError, match="outside") as err:
        lifecycle.deploy_content(environment=env, actor=team.developer, archive=evil, filename="evil.zip")
    assert err.value.field == "archive"
    assert (env.releases.count(), env.operations.count()) == (releases, operations)
    assert mark in get(stackport, env).text

    run(lifecycle.rollback(environment=env, actor=team.developer, release_number=1))
    response = get(stackport, env)
    assert response.status_code == 200 and SAMPLE_PAGE in response.text and mark not in response.text
    env.refresh_from_db()
    assert env.current_release.number == 1 and env.status == EnvironmentStatus.RUNNING


def test_a_git_branch_is_deployed_and_an_unknown_branch_keeps_the_old_content(
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    tmp_path: Path,
    git_server: GitServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    main_mark, next_mark = marker(), marker()
    commit(repo, {"index.html": f"<p>{main_mark}</p>\n".encode()}, "main")
    git(repo, "checkout", "-q", "-b", "next")
    sha = commit(repo, {"index.html": f"<p>{next_mark}</p>\n".encode()}, "next")
    git(repo, "checkout", "-q", "main")
    monkeypatch.setattr(settings, "STACKPORT_GIT_TRUSTED_HOSTS", [git_server.host])

    env = deploy(team, cleanup, template="static-site")
    for inward in (f"file://{repo}", str(repo), "http://127.0.0.1:2019/config/"):
        with pytest.raises(ServiceError, match=r"^(Refused|Repositories on this server's disk)"):
            lifecycle.deploy_content(environment=env, actor=team.developer, git_url=inward, branch="next")
    url = git_server.url("repo")
    op = run(lifecycle.deploy_content(environment=env, actor=team.developer, git_url=url, branch="next"))
    assert "Fetch the repository" in [s["name"] for s in op.steps]
    response = get(stackport, env)
    assert response.status_code == 200 and next_mark in response.text and main_mark not in response.text
    env.refresh_from_db()
    release = env.current_release
    assert release.number == 2 and release.source == Release.Source.GIT
    assert release.commit == sha and len(sha) == 40
    assert release.source_detail == f"{url} next" and release.content_sha256

    op = lifecycle.deploy_content(environment=env, actor=team.developer, git_url=url, branch="no-such-branch")
    run_operation(op.pk)
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED, op.log
    assert "no-such-branch" in op.error and "does not exist" in op.error, op.error
    response = get(stackport, env)
    assert response.status_code == 200 and next_mark in response.text
    env.refresh_from_db()
    assert env.current_release.number == 2
    # The environment still runs release 2: it must not stay "deploying" for ever.
    assert env.status == EnvironmentStatus.RUNNING, (env.status, env.status_detail)


# --- domains ----------------------------------------------------------------------------------------
def test_customer_domains_and_path_prefixes_reach_the_site_and_are_checked(
    team: Any, stackport: Caddy, cleanup: list[Environment]
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    home, shop = marker(), marker()
    archive = zip_archive({"site/index.html": home, "site/shop/index.html": shop})
    run(lifecycle.deploy_content(environment=env, actor=team.developer, archive=archive, filename="s.zip"))

    plain = lifecycle.add_domain(environment=env, actor=team.developer, hostname="Shop.Example.TEST")
    assert plain.hostname == "shop.example.test"
    prefixed = lifecycle.add_domain(
        environment=env, actor=team.developer, hostname="example.test", path_prefix="/shop/"
    )
    assert prefixed.path_prefix == "/shop"
    sync_routes_for(env.pk)  # pending domains are not routed (docs/domains.md)
    assert fetch_host(stackport, "shop.example.test").status_code == 404
    verified(plain)
    verified(prefixed)
    assert sync_routes_for(env.pk) is True
    assert sync_routes_for(env.pk) is False  # nothing changed: nothing written

    response = fetch_host(stackport, "shop.example.test")
    assert response.status_code == 200 and home in response.text
    assert home in get(stackport, env).text  # the default name still works
    response = fetch_host(stackport, "example.test", "/shop/")
    assert response.status_code == 200 and shop in response.text  # the path reaches nginx unchanged
    for path in ("/other", "/", "/shopping"):
        response = fetch_host(stackport, "example.test", path)
        assert response.status_code == 404 and response.text == NOT_FOUND_BODY, path
    assert fetch_host(stackport, "unknown.example.test").status_code == 404

    other = test_lifecycle.create(
        organization=team.outsider_org,
        actor=team.outsider,
        name="Other",
        region="eu-central",
        components=STATIC,
    )
    # A host name belongs to one organization: another cannot take it, nor any path under it.
    for hostname, prefix in (
        ("shop.example.test", ""),
        ("SHOP.example.test", ""),
        ("example.test", "/shop"),
        ("example.test", "/blog"),
    ):
        with pytest.raises(ServiceError, match="belongs to another organization") as err:
            lifecycle.add_domain(
                environment=other, actor=team.outsider, hostname=hostname, path_prefix=prefix
            )
        assert err.value.status == 409
    assert not other.domains.exists()

    for bad in ("*.example.test", "exa mple.test", "example.test:8080", "192.0.2.10", "example.test.", ""):
        with pytest.raises(ServiceError) as err:
            lifecycle.add_domain(environment=env, actor=team.developer, hostname=bad)
        assert err.value.field == "hostname", bad
    with pytest.raises(ServiceError):
        lifecycle.add_domain(environment=env, actor=team.developer, hostname="x.test", path_prefix="/a/../b")
    for reserved in (f"x.{settings.STACKPORT_APPS_DOMAIN}", settings.STACKPORT_APPS_DOMAIN, env.hostname):
        with pytest.raises(ServiceError, match="apps domain"):
            lifecycle.add_domain(environment=env, actor=team.developer, hostname=reserved)
    with pytest.raises(ServiceError, match="role") as err:
        lifecycle.add_domain(environment=env, actor=team.viewer, hostname="viewer.example.test")
    assert err.value.status == 403
    assert set(Domain.objects.filter(environment=env).values_list("hostname", "path_prefix")) == {
        ("shop.example.test", ""),
        ("example.test", "/shop"),
    }

    lifecycle.remove_domain(domain=plain, actor=team.developer)
    lifecycle.remove_domain(domain=prefixed, actor=team.developer)
    assert sync_routes_for(env.pk) is True
    assert fetch_host(stackport, "shop.example.test").status_code == 404
    assert fetch_host(stackport, "example.test", "/shop/").status_code == 404
    assert home in get(stackport, env).text
    with edge() as router:
        assert [r for r in router.routes() if r.startswith(env.key)] == [env.key]


# --- the reconciler ----------------------------------------------------------------------------------
def test_a_route_sync_against_a_stopped_router_is_retried_and_converges(
    team: Any, stackport: Caddy, cleanup: list[Environment], settings: Any
) -> None:
    """A domain added while the router does not answer: the task is retried (not failed)
    with backoff, and the domain serves once the router answers again."""
    from celery.exceptions import Retry

    from stacks.tasks import sync_routes_task

    env = deploy(team, cleanup, template="static-site")
    settings.STACKPORT_EDGE_ADMIN_URL = f"http://127.0.0.1:{unused_loopback_port()}"  # nothing listens
    verified(lifecycle.add_domain(environment=env, actor=team.developer, hostname="late.example.test"))
    with pytest.raises(Retry) as retried:
        sync_routes_task.apply(args=(env.pk,), throw=True)
    assert retried.value.when == 5
    assert fetch_host(stackport, "late.example.test").status_code == 404

    settings.STACKPORT_EDGE_ADMIN_URL = stackport.admin_url  # the router is back
    assert sync_routes_task.apply(args=(env.pk,), throw=True).get() is True
    assert fetch_host(stackport, "late.example.test").status_code == 200


def test_reconcile_puts_back_a_removed_container_and_a_lost_route(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    (container,) = containers(engine_client, env)
    container.remove(force=True)
    assert containers(engine_client, env) == []
    report = reconcile()
    assert report["repaired"] == 1, report
    repair = env.operations.order_by("-pk").first()  # queued, run by a worker (here: by hand)
    assert repair.params == {"reason": "reconcile"} and repair.status == OperationStatus.QUEUED
    run_operation(repair.pk)
    repair.refresh_from_db()
    (again,) = containers(engine_client, env)
    assert again.status == "running" and again.name == container.name and again.id != container.id
    assert get(stackport, env).status_code == 200
    assert repair.status == OperationStatus.SUCCEEDED
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING

    assert reconcile()["repaired"] == 0  # converged: nothing to do
    with edge() as router:
        router.remove_route(env.key)
    assert get(stackport, env).status_code == 404
    assert reconcile()["routes_fixed"] == 1
    assert get(stackport, env).status_code == 200


def test_reconcile_starts_a_stopped_container_again(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    """The container is still there, only stopped (by hand, or an engine that restarted):
    the repair has nothing to create, only to start, and must still route."""
    env = deploy(team, cleanup, components=STATIC)
    (container,) = containers(engine_client, env)
    container.stop(timeout=5)
    assert reconcile()["repaired"] == 1
    repair = env.operations.order_by("-pk").first()
    run_operation(repair.pk)
    repair.refresh_from_db()
    assert repair.status == OperationStatus.SUCCEEDED, f"{repair.error}\n{repair.log}"
    (again,) = containers(engine_client, env)
    assert again.id == container.id and again.status == "running"
    assert get(stackport, env).status_code == 200
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and env.backend_state.get("subnet")


def test_reconcile_removes_containers_of_unknown_stacks_and_leaves_other_prefixes_alone(
    team: Any, stackport: Caddy, cleanup: list[Environment], engine_client: docker.DockerClient
) -> None:
    from stacks.backends.docker import LABEL, DockerBackend

    prefix = settings.STACKPORT_STACK_PREFIX
    ours, foreign, similar = f"{prefix}-999999", f"o{prefix}-999999", f"{prefix}9-999999"
    env = deploy(team, cleanup, components=STATIC)
    image = containers(engine_client, env)[0].attrs["Config"]["Image"]
    made = []
    try:
        for key in (ours, foreign, similar):
            volume = engine_client.volumes.create(f"sp-{key}-data", labels={LABEL: key})
            made.append(volume)
            container = engine_client.containers.create(
                image,
                name=f"sp-{key}-web-a0",
                labels={LABEL: key, "org.stackport.component": "web", "org.stackport.index": "0"},
                volumes={volume.name: {"bind": "/srv/data", "mode": "rw"}},
            )
            made.append(container)
            container.start()
        report = reconcile()
        assert report["orphans_removed"] == 1, report
        assert engine_client.containers.list(all=True, filters={"label": f"{LABEL}={ours}"}) == []
        assert engine_client.volumes.list(filters={"label": f"{LABEL}={ours}"}) == []
        for key in (foreign, similar):
            (left,) = engine_client.containers.list(all=True, filters={"label": f"{LABEL}={key}"})
            assert left.status == "running", key
            assert engine_client.volumes.list(filters={"label": f"{LABEL}={key}"}), key
        # The customer's own stack is untouched.
        (mine,) = containers(engine_client, env)
        assert mine.status == "running" and get(stackport, env).status_code == 200
    finally:
        backend = DockerBackend(hosts=[HostRecord("local", "unix:///var/run/docker.sock")])
        for key in (ours, foreign, similar):
            backend.destroy(key, {})


# --- a worker killed mid-deploy ---------------------------------------------------------------------
STALE_SECONDS = 8
WORKER = [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO"]
WORKER += ["--without-gossip", "--without-mingle", "--without-heartbeat"]


@pytest.fixture
def workers(
    transactional_db: None, stackport: Caddy, settings: Any, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts real `celery worker` processes (each in a process group of its own) on the test
    database, the test's stack prefix and Caddy; stops those still running at the end."""
    if settings.CELERY_BROKER_URL.startswith("filesystem://") or not settings.CELERY_RESULT_BACKEND:
        pytest.skip("needs CELERY_BROKER_URL and CELERY_RESULT_BACKEND on a real server")
    settings.STACKPORT_OPERATION_STALE_SECONDS = STALE_SECONDS
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "STACKPORT_STACK_PREFIX": settings.STACKPORT_STACK_PREFIX,
        "STACKPORT_EDGE_ROUTER": CADDY_ROUTER,
        "STACKPORT_EDGE_ADMIN_URL": stackport.admin_url,
        "STACKPORT_EDGE_LISTEN": stackport.edge_addr,
        "STACKPORT_OPERATION_STALE_SECONDS": str(STALE_SECONDS),
        "STACKPORT_VAR_DIR": str(settings.VAR_DIR),
    }
    assert settings.DATABASES["default"]["NAME"] in env["DATABASE_URL"]
    from stacks.tasks import run_operation_task

    run_operation_task.app.control.purge()
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start() -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{len(started)}.log"
        proc = subprocess.Popen(
            [*WORKER, "-n", f"ops{len(started)}@%h"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((proc, log))
        return proc

    try:
        yield start
    finally:
        for proc, log in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            print(f"--- {log.name}\n{log.read_text()}")  # shown by pytest when a test fails


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_deploy_is_resumed_with_one_set_of_containers(
    workers: Callable[[], subprocess.Popen[bytes]],
    team: Any,
    stackport: Caddy,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
) -> None:
    first = workers()
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Killed", region="eu-central", template="python-web"
    )
    cleanup.append(env)
    op = env.operations.get()

    def running_with_a_container() -> bool:
        assert first.poll() is None, "the worker exited by itself"
        started = [c for c in containers(engine_client, env) if "org.stackport.helper" not in c.labels]
        return Operation.objects.get(pk=op.pk).status == OperationStatus.RUNNING and bool(started)

    wait_until(running_with_a_container, 180, "the deploy to start a component's container")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    op.refresh_from_db()
    assert op.status == OperationStatus.RUNNING and op.attempts == 1
    killed_at = [s["name"] for s in op.steps if s["status"] != "done"]

    workers()
    deadline = time.monotonic() + 600
    while Operation.objects.get(pk=op.pk).status in (OperationStatus.QUEUED, OperationStatus.RUNNING):
        assert time.monotonic() < deadline, Operation.objects.get(pk=op.pk).log
        reconcile()
        time.sleep(2)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert op.attempts >= 2 and "resuming (attempt 2)" in op.log, (killed_at, op.log)
    assert Operation.objects.filter(environment=env).count() == 1  # resumed, not repeated

    found = containers(engine_client, env)
    labels = sorted(
        (c.labels.get("org.stackport.component"), c.labels.get("org.stackport.index")) for c in found
    )
    assert labels == [("app", "0"), ("cache", "0"), ("db", "0"), ("web", "0")], [c.name for c in found]
    assert all(c.status == "running" for c in found), [(c.name, c.status) for c in found]
    assert not [c.name for c in found if "org.stackport.helper" in c.labels]
    assert [
        n.name for n in engine_client.networks.list(filters={"label": f"org.stackport.stack={env.key}"})
    ] == [f"sp-{env.key}"]
    env.refresh_from_db()
    assert env.status == EnvironmentStatus.RUNNING and env.current_release.number == 1
    response = get(stackport, env)
    assert response.status_code == 200 and "Hello from Python on Stackport" in response.text, response.text[
        :300
    ]
    # A later pass finds nothing to repair: the set of containers is the one wanted.
    assert reconcile()["repaired"] == 0
    assert sorted(c.id for c in containers(engine_client, env)) == sorted(c.id for c in found)


def test_content_left_half_written_by_a_killed_worker_is_written_again(
    engine_client: docker.DockerClient,
) -> None:
    """What a worker killed inside put_content leaves (seen with a real worker killed while
    "Prepare the content" ran): the content volume without its completion marker, still
    mounted by the never-started helper container. The resumed operation writes it again."""
    from stacks.backends.docker import HELPER, LABEL, DockerBackend, content_volume, tar_directory

    key, release = f"{settings.STACKPORT_STACK_PREFIX}-888888", "0123456789abcdef01234567"
    backend = DockerBackend(hosts=[HostRecord("local", "unix:///var/run/docker.sock")])
    volume = content_volume(key, release)
    try:
        engine_client.volumes.create(volume, labels={LABEL: key})
        image = backend._helper_image(engine_client)
        engine_client.containers.create(
            image,
            command=["true"],
            volumes={volume: {"bind": "/content", "mode": "rw"}},
            network_disabled=True,
            labels={HELPER: "content", LABEL: key},
            user="0",
        )
        backend.put_content(key, {}, release, io.BytesIO(tar_directory({"index.html": b"whole"})))
        assert engine_client.containers.list(all=True, filters={"label": f"{LABEL}={key}"}) == []
        assert {v.name for v in engine_client.volumes.list(filters={"label": f"{LABEL}={key}"})} == {
            volume,
            f"{volume}-ok",
        }
    finally:
        backend.destroy(key, {})
