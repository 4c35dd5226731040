"""Sample apps as content archives; WordPress from Debian's package, served for real."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from django.conf import settings
from docker.errors import APIError, ImageNotFound, NotFound

from stacks.catalog import pipeline, samples
from stacks.catalog.loader import CATALOG_DIR, SAMPLES_DIR
from stacks.models import Component, ComponentVersion

ORDINARY = sorted(p.name for p in SAMPLES_DIR.iterdir() if p.is_dir() and p.name != samples.WORDPRESS)
LABELS = {"org.stackport.test": "samples"}
SALTS = ["AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY"]
SALTS += [name.replace("KEY", "SALT") for name in SALTS]


def members(archive: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        return tar.getmembers()


def read(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        data = tar.extractfile(name)
        assert data is not None
        return data.read()


def assert_normalised(archive: bytes) -> None:
    infos = members(archive)
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    for info in infos:
        assert info.isfile() or info.isdir(), f"{info.name} is neither a file nor a folder"
        assert (info.uid, info.gid) == (0, 0)
        assert info.mode == (0o755 if info.isdir() else 0o644), info.name
        assert not info.name.startswith(("/", "./")) and ".." not in info.name.split("/")


# --- ordinary samples ----------------------------------------------------------------------------
def test_static_site_archive_holds_its_files() -> None:
    archive = samples.sample_archive("static-site")

    assert [i.name for i in members(archive)] == ["index.html", "style.css"]
    assert read(archive, "index.html") == (SAMPLES_DIR / "static-site" / "index.html").read_bytes()
    assert_normalised(archive)
    assert {i.mtime for i in members(archive)} == {samples.SAMPLE_MTIME}


@pytest.mark.parametrize("name", ORDINARY)
def test_every_ordinary_sample_packs_the_same_bytes_twice(name: str) -> None:
    first = samples.sample_archive(name)

    assert first == samples.sample_archive(name)
    assert_normalised(first)
    files = sorted(p.relative_to(SAMPLES_DIR / name).as_posix() for p in (SAMPLES_DIR / name).rglob("*"))
    assert [i.name for i in members(first)] == [
        f for f in files if f != "README.md" and "__pycache__" not in f
    ]


def test_archive_ignores_file_times_and_leaves_out_readme_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "demo"
    (app / "lib" / "__pycache__").mkdir(parents=True)
    (app / "README.md").write_text("for the hoster\n")
    (app / "index.php").write_text("<?php echo 42;\n")
    (app / "lib" / "util.php").write_text("<?php\n")
    (app / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path)
    first = samples.sample_archive("demo")

    os.utime(app / "index.php", (1, 1))
    assert samples.sample_archive("demo") == first
    assert [i.name for i in members(first)] == ["index.php", "lib", "lib/util.php"]
    assert_normalised(first)


def test_symlink_in_a_sample_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "passwd").symlink_to("/etc/passwd")
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path)

    with pytest.raises(samples.SampleError, match="only files and folders"):
        samples.sample_archive("demo")


@pytest.mark.parametrize("name", ["../portal", "no-such-sample", "", "Static-Site"])
def test_unknown_or_invalid_sample_name_is_refused(name: str) -> None:
    with pytest.raises(samples.SampleError):
        samples.sample_archive(name)


# --- WordPress on the real engine ----------------------------------------------------------------
# Core, the bundled theme, the uploads mount point, and files Debian links in from other packages.
WORDPRESS_PATHS = [
    "wp-login.php",
    "wp-includes/version.php",
    "wp-admin/install.php",
    "wp-content/themes/twentytwentyfive/style.css",
    "wp-content/uploads",
    "wp-includes/js/underscore.min.js",
    "wp-includes/ID3/getid3.php",
    "wp-includes/certificates/ca-bundle.crt",
]


@pytest.fixture(scope="module")
def wordpress(engine: None) -> bytes:
    return samples.sample_archive(samples.WORDPRESS)


@pytest.mark.slow
def test_wordpress_archive_is_self_contained_with_our_config(wordpress: bytes) -> None:
    names = {i.name for i in members(wordpress)}

    for path in WORDPRESS_PATHS:
        assert path in names, path
    assert_normalised(wordpress)  # no symlinks: Debian's links to other packages are dereferenced
    assert b"$wp_version = '6.8" in read(wordpress, "wp-includes/version.php")
    assert read(wordpress, "wp-config.php") == samples.WP_CONFIG.encode()
    assert b"/etc/wordpress" not in read(wordpress, "wp-config.php")


@pytest.mark.slow
def test_wordpress_archive_comes_from_the_disk_cache_the_second_time(wordpress: bytes) -> None:
    started = time.monotonic()

    assert samples.sample_archive(samples.WORDPRESS) == wordpress
    assert time.monotonic() - started < 5
    assert list((Path(settings.VAR_DIR) / "samples").glob("wordpress-*.tar"))


def catalog_version(code: str, version: str) -> ComponentVersion:
    """An unsaved ComponentVersion straight from the catalog file: no database needed."""
    data = yaml.safe_load((CATALOG_DIR / "components" / f"{code}.yaml").read_text())
    entry = next(v for v in data["versions"] if str(v["version"]) == version)
    component = Component(
        code=code,
        recipe=data["recipe"],
        user=data["user"],
        read_only_root=data.get("read_only_root", True),
        tmpfs=data.get("tmpfs") or [],
        capabilities=data.get("capabilities") or [],
        volumes=data.get("volumes") or [],
    )
    return ComponentVersion(
        component=component, version=version, debian=entry["debian"], build_args=entry.get("build_args") or {}
    )


class Resources:
    """What a test created on the engine, removed at the end whatever happened."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.prefix = f"sp-test-samples-{secrets.token_hex(3)}"
        self.objects: list[Any] = []

    def network(self) -> Any:
        network = self.client.networks.create(self.prefix, driver="bridge", labels=LABELS)
        self.objects.append(network)
        return network

    def volume(self, name: str) -> str:
        volume = self.client.volumes.create(f"{self.prefix}-{name}", labels=LABELS)
        self.objects.append(volume)
        return str(volume.name)

    def run(self, cv: ComponentVersion, name: str, **options: Any) -> Any:
        image = pipeline.image_tag(cv)
        try:
            self.client.images.get(image)
        except ImageNotFound:
            pytest.skip(f"{image} is not built: run manage.py build_images")
        container = self.client.containers.run(
            image,
            name=f"{self.prefix}-{name}",
            detach=True,
            network=self.prefix,
            labels=LABELS,
            **pipeline.hardened_run_options(cv),
            **options,
        )
        self.objects.insert(0, container)  # containers go before their volumes and network
        return container

    def fill(self, volume: str, archive: bytes, image: str) -> None:
        # The way the Docker backend writes content: put_archive into a never started helper.
        helper = self.client.containers.create(
            image,
            command=["true"],
            volumes={volume: {"bind": "/content", "mode": "rw"}},
            network_disabled=True,
            labels=LABELS,
            user="0",
        )
        try:
            helper.put_archive("/content", archive)
        finally:
            helper.remove(force=True)

    def remove(self) -> None:
        for obj in self.objects:
            try:
                obj.remove(force=True, v=True) if hasattr(obj, "exec_run") else obj.remove()
            except (NotFound, APIError):
                pass


@pytest.fixture
def resources(engine: None) -> Iterator[Resources]:
    created = Resources(pipeline.docker_client())
    yield created
    created.remove()


def wait_healthy(*containers: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for container in containers:
        while True:
            container.reload()
            state = container.attrs["State"]
            if state["Health"]["Status"] == "healthy":
                break
            if state["Status"] == "exited" or time.monotonic() > deadline:
                logs = container.logs(tail=30).decode(errors="replace")
                pytest.fail(f"{container.name} is not healthy ({state['Status']}):\n{logs}")
            time.sleep(0.5)


# php-fpm 8.2 comes with bookworm's nginx and MariaDB, 8.4 with trixie's.
STACKS = [("8.2", "1.22", "10.11"), ("8.4", "1.26", "11.8")]


@pytest.mark.slow
@pytest.mark.parametrize(("php", "nginx", "mariadb"), STACKS, ids=[f"php-{s[0]}" for s in STACKS])
def test_wordpress_installs_and_serves_its_site(
    wordpress: bytes, resources: Resources, php: str, nginx: str, mariadb: str
) -> None:
    web_cv, php_cv, db_cv = (
        catalog_version("nginx", nginx),
        catalog_version("php-fpm", php),
        catalog_version("mariadb", mariadb),
    )
    password = "p@ss/w:rd#" + secrets.token_hex(8)  # percent-encoded in DATABASE_URL
    resources.network()
    content = resources.volume("content")
    resources.fill(content, wordpress, pipeline.image_tag(php_cv))
    app = {content: {"bind": "/srv/app", "mode": "ro"}}
    db = resources.run(
        db_cv,
        "db",
        volumes={resources.volume("data"): {"bind": "/var/lib/mysql", "mode": "rw"}},
        environment={
            "STACKPORT_DB_NAME": "wordpress",
            "STACKPORT_DB_USER": "wp",
            "STACKPORT_DB_PASSWORD": password,
        },
    )
    php_env = {
        "DATABASE_URL": f"mysql://wp:{quote(password, safe='')}@{resources.prefix}-db:3306/wordpress",
        **{name: secrets.token_urlsafe(48) for name in SALTS},
    }
    fpm = resources.run(php_cv, "php", volumes=app, environment=php_env)
    web = resources.run(
        web_cv, "web", volumes=app, environment={"STACKPORT_FASTCGI_UPSTREAM": f"{resources.prefix}-php:9000"}
    )
    wait_healthy(db, fpm, web)
    base = f"http://{web.attrs['NetworkSettings']['Networks'][resources.prefix]['IPAddress']}:8080"
    http = requests.Session()
    http.trust_env = False  # straight to the container, never through a proxy

    # As behind the edge router: the site's address comes from Host and X-Forwarded-Proto.
    http.headers["Host"] = "blog.stackport.test"
    first = http.get(f"{base}/", timeout=30, allow_redirects=False)
    assert first.headers.get("Location") == "http://blog.stackport.test/wp-admin/install.php", first.text
    secure = http.get(f"{base}/", headers={"X-Forwarded-Proto": "https"}, timeout=30, allow_redirects=False)
    assert secure.headers.get("Location") == "https://blog.stackport.test/wp-admin/install.php"
    installer = http.get(f"{base}/wp-admin/install.php", timeout=30)
    assert installer.status_code == 200, installer.text[:500]
    assert "<title>WordPress &rsaquo; Installation</title>" in installer.text

    installed = http.post(
        f"{base}/wp-admin/install.php?step=2",
        data={
            "weblog_title": "Stackport sample blog",
            "user_name": "admin",
            "admin_password": password,
            "admin_password2": password,
            "admin_email": "admin@example.test",
            "blog_public": "0",
        },
        timeout=120,
    )
    assert installed.status_code == 200 and "Success!" in installed.text, installed.text[-1500:]
    site = http.get(f"{base}/", timeout=30)
    assert site.status_code == 200 and "Stackport sample blog" in site.text, site.text[:500]
    assert http.get(f"{base}/wp-config.php", timeout=30).text == ""  # runs, never shown
    for container in (fpm, web):
        log = container.logs().decode(errors="replace")
        assert "Fatal error" not in log and "PHP Warning" not in log, log[-3000:]

    # Without its secrets the configuration refuses to run and says what is missing.
    code, out = fpm.exec_run(["php", "/srv/app/wp-config.php"], environment={"NONCE_SALT": ""})
    assert code == 1 and b"set NONCE_SALT" in out
