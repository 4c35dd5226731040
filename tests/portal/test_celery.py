"""A real Celery worker runs real tasks through the real broker (Redis in `make test`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from portal.tasks import ping_task
from projects import services
from projects.models import Role

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if "postgresql" not in db["ENGINE"]:
        pytest.skip("the worker shares the test database only on PostgreSQL")
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def worker(transactional_db: None, tmp_path: Path) -> Iterator[Path]:
    """A `celery worker` process on the test database; yields the folder it writes e-mail to."""
    if settings.CELERY_BROKER_URL.startswith("filesystem://") or not settings.CELERY_RESULT_BACKEND:
        pytest.skip("needs CELERY_BROKER_URL and CELERY_RESULT_BACKEND on a real server")
    mail_dir = tmp_path / "mail"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "EMAIL_URL": f"filemail://{mail_dir}",
        "STACKPORT_BASE_URL": "http://portal.test",
    }
    ping_task.app.control.purge()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield mail_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(log.read_text())  # shown by pytest when a test fails


def test_worker_runs_a_task_through_the_broker(worker: Path) -> None:
    result = ping_task.delay()
    answer = result.get(timeout=60)
    assert set(answer) == {"pong", "at"}


def test_invitation_email_is_sent_by_the_worker_after_commit(worker: Path, team) -> None:
    invitation = services.invite_member(
        organization=team.org, email="new.person@example.test", role=Role.VIEWER, actor=team.owner
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (worker.exists() and any(worker.iterdir())):
        time.sleep(0.2)
    messages = [p.read_text() for p in worker.iterdir()] if worker.exists() else []
    assert len(messages) == 1, "the worker sent no invitation e-mail"
    body = messages[0]
    assert "new.person@example.test" in body
    # The signed link carries a timestamp: compare what it opens, not its bytes.
    link = re.search(r"http://portal\.test/invitations/([^/\s]+)/", body.replace("=\n", ""))
    assert link, body
    assert services.invitation_from_token(link.group(1)) == invitation
