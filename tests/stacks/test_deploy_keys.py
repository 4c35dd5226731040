"""Per-project ssh deploy keys: git over ssh only with the project's own key and known hosts.

The real part runs Debian's OpenSSH server on loopback, in a folder of its own, as the git
server: its authorized_keys holds the project's public key and nothing else, so a fetch that
got in used that key (the worker's own identity, agent and known hosts are never offered).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.urls import reverse

from projects.crypto import decrypt, generate_ssh_key
from projects.models import AuditEvent, Environment, Project
from projects.services import (
    ServiceError,
    create_api_token,
    deploy_key_of,
    forget_ssh_host_keys,
    record_ssh_host_keys,
    rotate_deploy_key,
)
from stacks import tasks
from stacks.backends.memory import MemoryBackend
from stacks.models import OperationStatus
from stacks.runtime import lifecycle, operations
from stacks.runtime.content import ContentError, fetch_git
from tests.conftest import Team, add_memory_host, client_for
from tests.stacks.conftest import unused_loopback_port, wait_until
from tests.stacks.test_content import commit, git

SSHD = Path("/usr/sbin/sshd")


# --- the key and the services --------------------------------------------------------------------
def test_a_generated_key_is_an_ed25519_pair_in_openssh_format() -> None:
    private, public = generate_ssh_key("stackport-project-7")
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey) and private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    kind, blob, comment = public.split(" ")
    assert (kind, comment) == ("ssh-ed25519", "stackport-project-7")
    loaded = serialization.load_ssh_public_key(f"{kind} {blob}".encode())
    assert isinstance(loaded, Ed25519PublicKey)
    assert loaded.public_bytes_raw() == key.public_key().public_bytes_raw()
    assert generate_ssh_key("x")[1] != generate_ssh_key("x")[1]


@pytest.mark.django_db
def test_a_new_project_has_its_own_key_stored_encrypted(team: Team, offered_catalog: None) -> None:
    env = _project(team, "Shop")
    other = _project(team, "Blog")
    project = env.project
    assert project.deploy_key_public.startswith("ssh-ed25519 ")
    assert project.deploy_key_public.endswith(f" stackport-project-{project.pk}")
    stored = bytes(project.deploy_key_private)
    assert b"PRIVATE KEY" not in stored  # encrypted at rest
    assert decrypt(stored) == deploy_key_of(project)
    assert other.project.deploy_key_public != project.deploy_key_public


@pytest.mark.django_db
def test_rotating_replaces_the_key_for_admins_only_and_is_audited(team: Team, offered_catalog: None) -> None:
    project = _project(team, "Shop").project
    old = project.deploy_key_public
    with pytest.raises(ServiceError) as refused:
        rotate_deploy_key(project=project, actor=team.developer)
    assert refused.value.status == 403
    new = rotate_deploy_key(project=project, actor=team.admin)
    project.refresh_from_db()
    assert new == project.deploy_key_public != old
    event = AuditEvent.objects.get(action="project.deploy_key_rotate")
    assert event.actor == team.admin and event.data == {"public_key": new}


@pytest.mark.django_db
def test_recorded_host_keys_are_merged_and_can_be_forgotten(team: Team, offered_catalog: None) -> None:
    project = _project(team, "Shop").project
    record_ssh_host_keys(project_id=project.pk, known_hosts="a ssh-ed25519 AAAA1\n")
    record_ssh_host_keys(project_id=project.pk, known_hosts="a ssh-ed25519 AAAA1\nb ssh-ed25519 AAAA2\n")
    project.refresh_from_db()
    assert project.ssh_known_hosts == "a ssh-ed25519 AAAA1\nb ssh-ed25519 AAAA2\n"
    assert AuditEvent.objects.filter(action="project.ssh_host_key_record").count() == 2
    with pytest.raises(ServiceError):
        forget_ssh_host_keys(project=project, actor=team.developer)
    forget_ssh_host_keys(project=project, actor=team.admin)
    project.refresh_from_db()
    assert project.ssh_known_hosts == ""


@pytest.mark.django_db
def test_an_ssh_address_needs_the_projects_deploy_key(team: Team, offered_catalog: None) -> None:
    env = _project(team, "Shop")
    Project.objects.filter(pk=env.project_id).update(deploy_key_public="", deploy_key_private=b"")
    env.refresh_from_db()
    with pytest.raises(ServiceError) as refused:
        lifecycle.deploy_content(
            environment=env, actor=team.developer, git_url="git@git.example.test:acme/app.git", branch="main"
        )
    assert refused.value.field == "git_url" and "deploy key" in refused.value.message
    with pytest.raises(ContentError, match="deploy key"):
        fetch_git("ssh://git@git.example.test/acme/app.git", "main")


# --- pages and API -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_page_shows_the_public_key_with_a_copy_button(team: Team, offered_catalog: None) -> None:
    env = _project(team, "Shop")
    html = client_for(team.viewer).get(reverse("stacks:environment", args=[env.pk])).content.decode()
    assert env.project.deploy_key_public in html and 'data-copy="deploy-key-public"' in html
    assert "js/copy.js" in html and "Replace the key" not in html  # viewers see, admins act
    html = client_for(team.admin).get(reverse("stacks:environment", args=[env.pk])).content.decode()
    assert "Replace the key" in html


@pytest.mark.django_db
def test_replacing_the_key_on_the_page_asks_first(team: Team, offered_catalog: None) -> None:
    env = _project(team, "Shop")
    old = env.project.deploy_key_public
    url = reverse("stacks:deploy_key_rotate", args=[env.pk])
    assert client_for(team.developer).post(url).status_code == 403
    client = client_for(team.admin)
    asked = client.post(url)
    assert asked.status_code == 200 and "Replace the deploy key?" in asked.content.decode()
    assert Project.objects.get(pk=env.project_id).deploy_key_public == old
    done = client.post(url, {"confirmed": "yes"})
    assert done.status_code == 302
    assert Project.objects.get(pk=env.project_id).deploy_key_public != old
    assert client.get(url).status_code == 405
    assert client_for(team.outsider).post(url, {"confirmed": "yes"}).status_code == 404


@pytest.mark.django_db
def test_the_api_shows_and_replaces_the_key(team: Team, offered_catalog: None) -> None:
    env = _project(team, "Shop")
    project = env.project
    _, admin_secret = create_api_token(user=team.admin, name="ci")
    _, dev_secret = create_api_token(user=team.developer, name="ci")
    _, outsider_secret = create_api_token(user=team.outsider, name="ci")
    client = client_for(team.viewer)
    path = f"/api/projects/{project.pk}/deploy-key"

    def call(method: str, secret: str, body: str = "{}") -> Any:
        auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
        if method == "get":
            return client.get(path, **auth)
        return client.post(path, body, content_type="application/json", **auth)

    shown = call("get", dev_secret)
    assert shown.status_code == 200 and shown.json()["public_key"] == project.deploy_key_public
    assert call("get", outsider_secret).status_code == 404
    assert call("post", dev_secret, '{"replace": true}').status_code == 403
    assert call("post", admin_secret).status_code == 409
    replaced = call("post", admin_secret, '{"replace": true}')
    assert replaced.status_code == 200
    project.refresh_from_db()
    assert replaced.json()["public_key"] == project.deploy_key_public != shown.json()["public_key"]
    listed = client.get(f"/api/projects/{project.pk}", HTTP_AUTHORIZATION=f"Bearer {dev_secret}")
    assert listed.json()["deploy_key"] == project.deploy_key_public


# --- a real ssh git server -----------------------------------------------------------------------
@dataclass
class SshGitServer:
    root: Path
    port: int
    authorized_keys: Path
    host_key: str  # the server's public host key line

    @property
    def trusted(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, repo: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{repo}"


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[SshGitServer]:
    """Debian's sshd on a free loopback port with a config, host key and authorized_keys of
    its own (no PAM, nothing of the machine's ssh setup); only this process is stopped."""
    if not SSHD.exists() or os.geteuid() != 0:
        pytest.skip("needs Debian's openssh-server (make system-deps-test) and root")
    root = tmp_path / "sshd"
    root.mkdir()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True)
    authorized = root / "authorized_keys"
    authorized.write_text("")
    port = unused_loopback_port()
    config = root / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowUsers root\n"
        "AllowAgentForwarding no\nAllowTcpForwarding no\nX11Forwarding no\nPermitTTY no\n"
        "LogLevel VERBOSE\n"
    )
    log = (root / "sshd.log").open("w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, 20, "sshd to listen")
        assert proc.poll() is None, (root / "sshd.log").read_text()
        host_key = (root / "host_key.pub").read_text().strip()
        yield SshGitServer(root, port, authorized, host_key)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def bare_repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    commit(work, {"index.html": b"<p>over ssh</p>\n"}, "one")
    bare = tmp_path / "served" / "site.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def test_git_over_ssh_uses_only_the_projects_key_and_records_the_host_key(
    ssh_server: SshGitServer, bare_repo: Path, tmp_path: Path
) -> None:
    private, public = generate_ssh_key("stackport-project-1")
    url, trusted = ssh_server.url(bare_repo), [ssh_server.trusted]
    workdir = tmp_path / "workdir"
    workdir.mkdir()

    # The server knows no key yet: whatever the worker has of its own is not offered.
    with pytest.raises(ContentError, match="refused the project's deploy key"):
        fetch_git(url, "main", trusted_hosts=trusted, ssh_key=private, timeout=30, workdir=str(workdir))

    ssh_server.authorized_keys.write_text(public + "\n")
    with fetch_git(
        url, "main", trusted_hosts=trusted, ssh_key=private, timeout=30, workdir=str(workdir)
    ) as got:
        assert got.files == 1 and got.commit
        first_seen = got.known_hosts
    host_key_blob = ssh_server.host_key.split()[1]
    assert host_key_blob in first_seen  # recorded on first use, under the checked host name
    assert os.listdir(workdir) == []  # the key file and the clone are gone

    # Known: fetched again with the recorded key.
    with fetch_git(
        url, "main", trusted_hosts=trusted, ssh_key=private, known_hosts=first_seen, timeout=30
    ) as again:
        assert again.sha256 == got.sha256 and again.known_hosts.strip() == first_seen.strip()

    # A server that shows another host key than the recorded one is refused.
    impostor = serialization.load_ssh_public_key(generate_ssh_key("x")[1].rsplit(" ", 1)[0].encode())
    forged = first_seen.replace(
        host_key_blob,
        impostor.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        .split()[1],
    )
    with pytest.raises(ContentError, match=r"host key of 127\.0\.0\.1 is not the one recorded"):
        fetch_git(url, "main", trusted_hosts=trusted, ssh_key=private, known_hosts=forged, timeout=30)

    # Another project's key gets nowhere.
    with pytest.raises(ContentError, match="refused the project's deploy key"):
        fetch_git(url, "main", trusted_hosts=trusted, ssh_key=generate_ssh_key("y")[0], timeout=30)


@pytest.mark.django_db
def test_a_deploy_over_ssh_fetches_with_the_project_key(
    ssh_server: SshGitServer,
    bare_repo: Path,
    team: Team,
    offered_catalog: None,
    memory_backend: type[MemoryBackend],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    settings.STACKPORT_GIT_TRUSTED_HOSTS = [ssh_server.trusted]
    monkeypatch.setattr(tasks.run_operation_task, "delay", lambda *args: None)
    monkeypatch.setattr(operations, "sync_routes", lambda *args: False)
    monkeypatch.setattr(operations, "_check_site", lambda *args: None)
    env = _project(team, "Shop")
    add_memory_host(env)
    assert operations.run_operation(env.operations.get().pk) == OperationStatus.SUCCEEDED
    ssh_server.authorized_keys.write_text(env.project.deploy_key_public + "\n")

    op = lifecycle.deploy_content(
        environment=env, actor=team.developer, git_url=ssh_server.url(bare_repo), branch="main"
    )
    assert operations.run_operation(op.pk) == OperationStatus.SUCCEEDED, op.error
    op.release.refresh_from_db()
    assert op.release.content_files == 1 and op.release.commit
    project = Project.objects.get(pk=env.project_id)
    assert ssh_server.host_key.split()[1] in project.ssh_known_hosts
    assert AuditEvent.objects.filter(action="project.ssh_host_key_record").count() == 1

    # A replaced key stops working at once, with a message that says what to do.
    rotate_deploy_key(project=project, actor=team.admin)
    op = lifecycle.deploy_content(
        environment=env, actor=team.developer, git_url=ssh_server.url(bare_repo), branch="main"
    )
    assert operations.run_operation(op.pk) == OperationStatus.FAILED
    op.refresh_from_db()
    assert "refused the project's deploy key" in op.error


def _project(team: Team, name: str) -> Environment:
    return lifecycle.create_project(
        organization=team.org, actor=team.owner, name=name, region="eu-central", template="static-site"
    )
