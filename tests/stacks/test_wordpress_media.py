"""WordPress media on the real engine: an image uploaded through wp-admin is written by
PHP-FPM into the stack's "uploads" volume and served by nginx through the edge (one volume
mounted by both), survives a redeploy that replaces both containers, is backed up once as a
file volume, and comes back byte for byte from that backup after it was deleted."""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

import docker
import pytest
import requests
from django.conf import settings

from projects.models import Environment
from stacks.models import Backup, Operation, OperationStatus
from stacks.runtime import backups, lifecycle
from tests.stacks import test_backups, test_lifecycle
from tests.stacks.conftest import Caddy

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(1800)]

PASSWORD = "a-long-Passw0rd-for-tests"


def png(width: int = 3, height: int = 2) -> bytes:
    """A real (tiny) PNG: WordPress checks the file's type by its content."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([200, 30, 90] * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Site:
    """A browser session on the environment's address through the edge."""

    def __init__(self, caddy: Caddy, env: Environment) -> None:
        self.caddy = caddy
        self.host = f"{env.hostname}:{settings.STACKPORT_EDGE_PUBLIC_PORT}"
        self.session = requests.Session()
        self.session.trust_env = False

    def visit(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(
            method,
            f"{self.caddy.edge_url}{path}",
            headers={"Host": self.host},
            allow_redirects=False,
            # Generous for a loaded machine: the sample's wp-config blocks WordPress's calls home
            # (WP_HTTP_BLOCK_EXTERNAL), so no admin page waits on api.wordpress.org.
            timeout=300,
            **kwargs,
        )

    def fetch(self, url: str) -> requests.Response:
        """A URL WordPress gave (on the site's own address), fetched anonymously."""
        path = url.split(self.host, 1)[1]
        with requests.Session() as anonymous:
            anonymous.trust_env = False
            return anonymous.get(
                f"{self.caddy.edge_url}{path}", headers={"Host": self.host}, allow_redirects=False, timeout=30
            )


def install_and_upload(site: Site, image: bytes) -> str:
    """Install WordPress, log in, upload ``image`` the way wp-admin's uploader does; its URL."""
    form = {
        "weblog_title": "Media blog",
        "user_name": "editor",
        "admin_password": PASSWORD,
        "admin_password2": PASSWORD,
        "pw_weak": "1",
        "admin_email": "editor@example.test",
        "blog_public": "0",
    }
    installed = site.visit("POST", "/wp-admin/install.php?step=2", data=form)
    assert installed.status_code == 200 and "Success!" in installed.text, installed.text[:500]
    site.session.cookies.set("wordpress_test_cookie", "WP Cookie check")
    login = site.visit("POST", "/wp-login.php", data={"log": "editor", "pwd": PASSWORD, "testcookie": "1"})
    assert login.status_code == 302, login.text[:500]
    page = site.visit("GET", "/wp-admin/media-new.php")
    assert page.status_code == 200, page.status_code
    nonce = re.search(r'"_wpnonce":"([0-9a-f]+)"', page.text)
    assert nonce, "no upload nonce on wp-admin/media-new.php"
    uploaded = site.visit(
        "POST",
        "/wp-admin/async-upload.php",
        data={"name": "pixel.png", "action": "upload-attachment", "_wpnonce": nonce.group(1)},
        files={"async-upload": ("pixel.png", image, "image/png")},
    )
    assert uploaded.status_code == 200, uploaded.text[:500]
    answer = uploaded.json()
    assert answer.get("success"), answer
    return str(answer["data"]["url"])


def test_wordpress_media_live_in_a_shared_volume_that_survives_redeploys_and_is_backed_up(
    team: Any,
    stackport: Caddy,
    s3: test_backups.S3Server,
    cleanup: list[Environment],
    engine_client: docker.DockerClient,
) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.developer, name="Media", region="eu-central", template="wordpress"
    )
    cleanup.append(env)
    env.refresh_from_db()
    assert env.status == "running", env.status_detail

    # One volume of the stack, mounted by nginx and PHP-FPM at the uploads folder.
    volume = f"sp-{env.key}--uploads"
    for component in ("web", "php"):
        mounts = {m["Name"]: m for m in test_backups.running(engine_client, env, component).attrs["Mounts"]}
        assert mounts[volume]["Destination"] == "/srv/app/wp-content/uploads" and mounts[volume]["RW"]

    site = Site(stackport, env)
    image = png()
    url = install_and_upload(site, image)
    assert "/wp-content/uploads/" in url and url.endswith(".png"), url
    served = site.fetch(url)
    assert served.status_code == 200 and served.content == image
    assert served.headers["Content-Type"] == "image/png"

    # A redeploy with a changed variable replaces both containers; the media stay.
    before = {test_backups.running(engine_client, env, c).name for c in ("web", "php")}
    lifecycle.set_variable(environment=env, actor=team.developer, name="MEDIA_CHECK", value="1")
    op = lifecycle.redeploy(environment=env, actor=team.developer)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    assert {test_backups.running(engine_client, env, c).name for c in ("web", "php")}.isdisjoint(before)
    assert site.fetch(url).content == image

    # Backed up once (a file volume), with the database.
    rows = backups.request_backup(environment=env, actor=team.developer)
    assert sorted((r.component, r.kind, r.volume) for r in rows) == [
        ("db", "mariadb", ""),
        ("web", "files", "uploads"),
    ]
    for row in rows:
        row.refresh_from_db()
        assert row.status == Backup.Status.SUCCEEDED, row.error
    files = next(r for r in rows if r.kind == "files")

    # The file is lost, then restored in place from the backup, byte for byte.
    relative = url.split("/wp-content/uploads/", 1)[1]
    php = test_backups.running(engine_client, env, "php")
    assert php.exec_run(["rm", f"/srv/app/wp-content/uploads/{relative}"]).exit_code == 0
    assert site.fetch(url).status_code != 200  # gone (WordPress redirects to a guess)
    op = backups.request_restore(backup=files, actor=team.admin, confirmation="web")
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    backups.settle_restore(operation=Operation.objects.get(pk=op.pk), actor=team.admin, undo=False)
    assert site.fetch(url).content == image
    # PHP-FPM can still write there after the restore (the folder keeps its owner).
    php = test_backups.running(engine_client, env, "php")
    assert php.exec_run(["touch", "/srv/app/wp-content/uploads/after-restore"]).exit_code == 0

    # A staging copy of the backup run (database and media) in a new environment: its own
    # uploads volume, writable, independent of the original.
    op = backups.request_restore(backup=files, actor=team.admin, new_environment="staging")
    staging = op.environment
    cleanup.append(staging)
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED, f"{op.error}\n{op.log}"
    staging.refresh_from_db()
    assert staging.status == "running", staging.status_detail
    copy = Site(stackport, staging)
    copied = url.replace(site.host, copy.host)
    assert copy.fetch(copied).content == image
    staging_php = test_backups.running(engine_client, staging, "php")
    assert staging_php.exec_run(["rm", f"/srv/app/wp-content/uploads/{relative}"]).exit_code == 0
    assert copy.fetch(copied).status_code != 200
    assert site.fetch(url).content == image


# Fixtures of the engine tests this one builds on.
engine_client = test_lifecycle.engine_client
cleanup = test_lifecycle.cleanup
stackport = test_backups.stackport
s3 = test_backups.s3
