"""Sample applications of the pre-built stack templates, as content archives.

``sample_archive(name)`` returns the uncompressed tar that becomes a stack's content volume
(mounted read-only at /srv/app in the web server and the runtime). An ordinary sample is
the folder stacks/catalog/samples/<name>/ (its README.md stays out). The ``wordpress`` sample is
WordPress from Debian's ``wordpress`` package plus a wp-config.php of ours that reads
everything from the environment: the package tree is produced by the Docker engine, in an
image cached by a hash of its inputs (like the catalog images), and the finished archive is
cached on disk under VAR_DIR/samples/.

Only the worker calls ``sample_archive``: a new stack's release merely names its sample, and
the deploy operation's step "Make the sample application" (``stacks.runtime.operations``)
produces and stores it, so no web request ever waits for (or talks to) the engine.

Every archive holds regular files and directories only (owner 0:0, files 0644, dirs 0755),
in sorted order with fixed timestamps, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

import docker
from django.conf import settings
from docker.errors import APIError, BuildError, DockerException, ImageNotFound

from stacks.catalog.loader import SAMPLES_DIR
from stacks.catalog.pipeline import PipelineError, docker_client

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,59}$")
# 2024-01-01 00:00 UTC, for folders and our own files (package files: see _repack).
SAMPLE_MTIME = 1_704_067_200
SKIPPED = {"README.md"}
SKIPPED_DIRS = {"__pycache__", ".git"}

WORDPRESS = "wordpress"
# WordPress 6.8 from trixie: it supports PHP 7.2.24 to 8.4, so it runs on both php-fpm
# images of the catalog (8.2 on bookworm, 8.4 on trixie). Bookworm's 6.1 predates PHP 8.4.
WORDPRESS_DEBIAN = "trixie"
WORDPRESS_IMAGE = "stackport/sample-wordpress"
SAMPLE_HASH_LABEL = "org.stackport.sample-hash"
# Bumped when the way the archive is packed changes (the cached files must not be reused).
ARCHIVE_FORMAT = "2"

# Debian's package symlinks bundled libraries to other packages (/usr/share/javascript,
# /usr/share/php, /etc/ssl/certs): they are installed (with their own dependencies) so the
# links resolve, and the tree is copied with cp -L so the volume holds real files. The
# wordpress package itself is only unpacked (dpkg-deb -x): installing it would pull Apache,
# PHP and a MySQL client (116 packages) that the content never uses. Its Debian wp-config.php
# (which reads /etc/wordpress) and the Apache .htaccess (a link into /etc) are dropped; the
# wp-content skeleton (index.php, plugins/, languages/, uploads/) comes from /var/lib/wordpress.
WORDPRESS_DOCKERFILE = """\
FROM stackport/debian:{debian}
RUN set -eu; \\
    printf 'deb http://deb.debian.org/debian {debian}-updates main\\n\
deb http://deb.debian.org/debian-security {debian}-security main\\n' \\
        > /etc/apt/sources.list.d/stackport-updates.list; \\
    apt-get update; \\
    apt-get install -y --no-install-recommends ca-certificates libjs-cropper libjs-lodash \\
        libjs-underscore php-getid3; \\
    mkdir -p /tmp/debs; cd /tmp/debs; \\
    apt-get download wordpress wordpress-theme-twentytwentyfive; \\
    for deb in ./*.deb; do dpkg-deb -x "$deb" /; done; \\
    mkdir -p /out; \\
    cp -R -L --preserve=timestamps /usr/share/wordpress /out/wordpress; \\
    cp -R -L --preserve=timestamps /var/lib/wordpress/wp-content/. /out/wordpress/wp-content/; \\
    rm -f /out/wordpress/wp-config.php /out/wordpress/.htaccess; \\
    test -z "$(find /out -type l)"; \\
    test -f /out/wordpress/wp-login.php; \\
    apt-get clean; rm -rf /var/lib/apt/lists/* /tmp/debs
"""

# Our wp-config.php. Everything comes from the container's environment (php-fpm keeps it:
# clear_env = no); nothing secret has a default, and a missing setting stops every request
# with a message naming the variable (never its value).
#
# The WordPress template must give php-fpm:
#   DATABASE_URL      mysql://USER:PASSWORD@HOST:3306/NAME, what the mariadb component
#                     provides (user and password percent-encoded); or the parts
#                     DB_HOST (default db:3306), DB_NAME (default app), DB_USER (default app)
#                     and DB_PASSWORD (required), which override the URL's parts.
#   AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT
#   LOGGED_IN_SALT NONCE_SALT
#                     required, each a random secret of at least 32 characters, generated
#                     per stack and kept like a password.
#   optional: WP_HOME (fixed site URL; default: scheme, host and port of the request),
#             WP_HTTP_EXTERNAL=allow (let WordPress call other sites; blocked by default),
#             WP_TABLE_PREFIX (default wp_), WP_UPLOADS_DIR (uploads folder relative to
#             /srv/app, default wp-content/uploads: mount a writable volume there in both
#             nginx and php-fpm, the code volume itself is read-only).
WP_CONFIG = r"""<?php
/**
 * WordPress settings for Stackport, all read from the environment (see the wordpress
 * sample's README.md). Written by stacks/catalog/samples.py: changes here are lost on the next
 * release of the content.
 */

function stackport_refuse(int $status, string $message): void
{
    if (PHP_SAPI === 'cli') {
        fwrite(STDERR, $message . "\n");
        exit(1);
    }
    error_log('stackport wp-config: ' . $message);
    http_response_code($status);
    header('Content-Type: text/plain; charset=utf-8');
    header('Cache-Control: no-store');
    echo $message, "\n";
    exit;
}

function stackport_env(string $name): ?string
{
    $value = getenv($name);
    return ($value === false || $value === '') ? null : $value;
}

// Database: DATABASE_URL (what the mariadb component provides), parts overridable one by one.
$stackport_db = ['host' => 'db:3306', 'name' => 'app', 'user' => 'app', 'password' => null];
$stackport_url = stackport_env('DATABASE_URL');
if ($stackport_url !== null) {
    $parts = parse_url($stackport_url);
    if (!is_array($parts) || !in_array($parts['scheme'] ?? '', ['mysql', 'mariadb'], true)
        || empty($parts['host'])) {
        stackport_refuse(503, 'DATABASE_URL must look like mysql://USER:PASSWORD@HOST:3306/NAME.');
    }
    $stackport_db['host'] = $parts['host'] . (isset($parts['port']) ? ':' . $parts['port'] : '');
    foreach (['name' => 'path', 'user' => 'user', 'password' => 'pass'] as $key => $part) {
        $value = rawurldecode(ltrim($parts[$part] ?? '', '/'));
        if ($value !== '') {
            $stackport_db[$key] = $value;
        }
    }
}
$stackport_names = ['host' => 'DB_HOST', 'name' => 'DB_NAME', 'user' => 'DB_USER',
                    'password' => 'DB_PASSWORD'];
foreach ($stackport_names as $key => $name) {
    $stackport_db[$key] = stackport_env($name) ?? $stackport_db[$key];
}
if ($stackport_db['password'] === null) {
    stackport_refuse(503, 'WordPress is not configured: set DATABASE_URL (with a password) or DB_PASSWORD.');
}
define('DB_NAME', $stackport_db['name']);
define('DB_USER', $stackport_db['user']);
define('DB_PASSWORD', $stackport_db['password']);
define('DB_HOST', $stackport_db['host']);
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
unset($stackport_db, $stackport_url, $stackport_names, $parts);

// Keys and salts: one random secret each, never a default.
$stackport_missing = [];
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY',
          'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $name) {
    $value = stackport_env($name);
    if ($value === null || strlen($value) < 32) {
        $stackport_missing[] = $name;
    } else {
        define($name, $value);
    }
}
if ($stackport_missing) {
    stackport_refuse(503, 'WordPress is not configured: set ' . implode(', ', $stackport_missing)
        . ' (random secrets of at least 32 characters each).');
}

$table_prefix = stackport_env('WP_TABLE_PREFIX') ?? 'wp_';
if (!preg_match('/^[A-Za-z0-9_]{1,20}$/', $table_prefix)) {
    stackport_refuse(503, 'WP_TABLE_PREFIX may hold only letters, digits and underscores.');
}

// Site address: WP_HOME if set, else the scheme, host and port of the request (nginx passes
// HTTPS=on when the edge router says the client used https, and the Host with its port).
$stackport_home = stackport_env('WP_HOME');
if ($stackport_home === null) {
    $host = strtolower($_SERVER['HTTP_HOST'] ?? 'localhost');
    $label = '[a-z0-9]([a-z0-9-]*[a-z0-9])?';
    if (!preg_match("/^$label(\\.$label)*(:[0-9]{1,5})?$/", $host)) {
        stackport_refuse(400, 'Bad Host header.');
    }
    $https = strtolower((string) ($_SERVER['HTTPS'] ?? ''));
    $stackport_home = ($https !== '' && $https !== 'off' ? 'https' : 'http') . '://' . $host;
} elseif (!preg_match('#^https?://[^/\s]+(/\S*)?$#', $stackport_home)) {
    stackport_refuse(503, 'WP_HOME must be an http:// or https:// URL.');
}
define('WP_HOME', rtrim($stackport_home, '/'));
define('WP_SITEURL', WP_HOME);
unset($stackport_home, $host, $https, $label);

// The code volume is read-only and WordPress comes from Debian's package: no editing,
// no installing or updating of plugins, themes or core from the admin pages (so WordPress
// never needs a filesystem method: FS_METHOD stays unset, "direct" is never used).
define('DISALLOW_FILE_EDIT', true);
define('DISALLOW_FILE_MODS', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
define('WP_TEMP_DIR', sys_get_temp_dir());
// No calls home: update checks, news feeds and plugin directories would each wait for their
// time-out where the plan gives no internet egress, and make every admin page slow. Set
// WP_HTTP_EXTERNAL=allow to let WordPress reach other sites (WP_ACCESSIBLE_HOSTS still applies).
if (stackport_env('WP_HTTP_EXTERNAL') !== 'allow') {
    define('WP_HTTP_BLOCK_EXTERNAL', true);
}

// Uploads: relative to the site root; a writable volume must be mounted there.
$stackport_uploads = stackport_env('WP_UPLOADS_DIR');
if ($stackport_uploads !== null) {
    $stackport_uploads = trim($stackport_uploads, '/');
    if (!preg_match('#^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$#', $stackport_uploads)) {
        stackport_refuse(503, 'WP_UPLOADS_DIR must be a folder below the site root (wp-content/uploads).');
    }
    define('UPLOADS', $stackport_uploads);
}
unset($stackport_uploads, $stackport_missing, $name, $value, $key, $part);
// Debian's install.php (bug #430781) copies these globals into the upload_path and
// upload_url_path options, pasted into SQL as they are: keep them empty (WordPress's
// defaults, which follow UPLOADS) and never take them from the environment.
$upload_path = '';
$upload_url_path = '';

define('WP_DEBUG', false);

if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
"""


class SampleError(Exception):
    """A sample could not be produced (unknown name, unusable files, failed build)."""


def sample_archive(name: str) -> bytes:
    """The content archive of a template's sample app (see the module docstring)."""
    if not NAME_RE.match(name):
        raise SampleError(f"invalid sample name {name!r}")
    if name == WORDPRESS:
        try:
            return _wordpress_archive()
        except (PipelineError, DockerException) as exc:  # the engine does not answer, or refuses
            raise SampleError(f"the WordPress tree could not be made: {exc}") from exc
    folder = SAMPLES_DIR / name
    if not folder.is_dir():
        raise SampleError(f"no sample app stacks/catalog/samples/{name}")
    return _pack(_folder_entries(folder))


# --- packing -------------------------------------------------------------------------------------
# An entry: (path, data or None for a directory, mtime).
Entry = tuple[str, bytes | None, int]


def _folder_entries(folder: Path) -> list[Entry]:
    entries: list[Entry] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.as_posix() in SKIPPED or SKIPPED_DIRS.intersection(rel.parts):
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise SampleError(
                f"stacks/catalog/samples/{folder.name}/{rel}: only files and folders are allowed"
            )
        entries.append((rel.as_posix(), path.read_bytes() if path.is_file() else None, SAMPLE_MTIME))
    return entries


def _pack(entries: Iterable[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mtime in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _repack(stream: Iterable[bytes], prefix: str) -> list[Entry]:
    """Entries of a ``get_archive`` tar under ``prefix/``; anything but files and dirs is refused.

    File times are clamped to the release's own (wp-includes/version.php, as reproducible
    builds clamp to SOURCE_DATE_EPOCH): files generated while the image was built, such as
    the CA bundle, would otherwise carry the build's time. Folders get the fixed time.
    """
    entries: list[Entry] = []
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream)), mode="r:") as tar:
        members = tar.getmembers()
        release = next((m for m in members if m.name == f"{prefix}/wp-includes/version.php"), None)
        clamp = int(release.mtime) if release else SAMPLE_MTIME
        for member in members:
            if member.name == prefix:
                continue
            if not member.name.startswith(prefix + "/"):
                raise SampleError(f"unexpected path {member.name!r} in the WordPress tree")
            path = member.name[len(prefix) + 1 :]
            if member.isdir():
                entries.append((path, None, SAMPLE_MTIME))
            elif member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                entries.append((path, data.read(), min(int(member.mtime), clamp)))
            else:
                raise SampleError(f"{path}: not a regular file or folder in the WordPress tree")
    return entries


# --- WordPress -----------------------------------------------------------------------------------
def _wordpress_archive() -> bytes:
    client = docker_client()
    image_hash = _wordpress_image_hash(client)
    key = hashlib.sha256(
        json.dumps({"image": image_hash, "config": WP_CONFIG, "format": ARCHIVE_FORMAT}).encode()
    ).hexdigest()
    cached = Path(settings.VAR_DIR) / "samples" / f"{WORDPRESS}-{key[:32]}.tar"
    if cached.is_file():
        return cached.read_bytes()
    image = _wordpress_image(client, image_hash)
    container = client.containers.create(image, command=["true"], network_disabled=True)
    try:
        stream, _ = container.get_archive("/out/wordpress")
        entries = _repack(stream, "wordpress")
    except (APIError, DockerException) as exc:
        raise SampleError(f"could not copy the WordPress tree out of {image}: {exc}") from exc
    finally:
        container.remove(force=True)
    if not any(path == "wp-login.php" for path, _, _ in entries):
        raise SampleError("the WordPress tree has no wp-login.php")
    entries.append(("wp-config.php", WP_CONFIG.encode(), SAMPLE_MTIME))
    archive = _pack(entries)
    _write_atomically(cached, archive)
    for stale in cached.parent.glob(f"{WORDPRESS}-*.tar"):
        if stale != cached:
            stale.unlink(missing_ok=True)
    return archive


def _wordpress_image_hash(client: docker.DockerClient) -> str:
    try:
        base_id = client.images.get(f"stackport/debian:{WORDPRESS_DEBIAN}").id
    except ImageNotFound:
        raise SampleError(
            f"base image stackport/debian:{WORDPRESS_DEBIAN} is missing: run scripts/base-images.sh"
        ) from None
    dockerfile = WORDPRESS_DOCKERFILE.format(debian=WORDPRESS_DEBIAN)
    return hashlib.sha256(json.dumps({"dockerfile": dockerfile, "base": base_id}).encode()).hexdigest()


def _wordpress_image(client: docker.DockerClient, wanted: str) -> str:
    """The image holding the WordPress tree in /out, built unless one with ``wanted`` exists."""
    tag = f"{WORDPRESS_IMAGE}:{wanted[:16]}"
    try:
        if client.images.get(tag).labels.get(SAMPLE_HASH_LABEL) == wanted:
            return tag
    except ImageNotFound:
        pass
    dockerfile = WORDPRESS_DOCKERFILE.format(debian=WORDPRESS_DEBIAN)
    try:
        client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            labels={SAMPLE_HASH_LABEL: wanted, "org.stackport.sample": WORDPRESS},
        )
    except BuildError as exc:
        tail = "".join(str(c.get("stream") or c.get("error") or "") for c in exc.build_log)[-2000:]
        raise SampleError(f"building the WordPress tree failed: {exc.msg}\n{tail}") from exc
    except APIError as exc:
        raise SampleError(f"building the WordPress tree failed: {exc.explanation or exc}") from exc
    for image in client.images.list(name=WORDPRESS_IMAGE):  # earlier builds, now unused
        if tag not in image.tags:
            try:
                client.images.remove(image.id, noprune=False)
            except APIError:
                pass  # in use or already gone: harmless
    return tag


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
