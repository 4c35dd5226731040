"""A small client for the image registry's HTTP API v2 (Debian's docker-registry,
distribution 2.8, started by ``scripts/registry.sh``).

No auth and no models: it lists repositories and tags, resolves tags to manifest digests
and deletes manifests. Every failure is a ``RegistryError`` whose ``permanent`` flag tells
a caller (a Celery task) whether a retry can help.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import requests

# From the distribution spec ("Pulling manifests"): path components of lowercase
# alphanumerics joined by separators, components joined by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
REPOSITORY_MAX_LENGTH = 255  # distribution's reference.NameTotalLengthMax
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

MANIFEST_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
PAGE_SIZE = 100
MAX_PAGES = 10_000  # a registry whose Link headers loop must not keep us busy forever
# Statuses that say "later" even though they are 4xx.
TRANSIENT_CLIENT_STATUSES = frozenset({408, 429})


class RegistryError(Exception):
    """The registry could not do what was asked.

    ``permanent`` is False when the same call may succeed later (the registry is down or
    restarting, a 5xx, a garbled answer) and True when it will not (a bad name, a refused
    request).
    """

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"RegistryError({self.message!r}, permanent={self.permanent})"


def validate_repository(repository: str) -> None:
    """Raise a permanent ``RegistryError`` unless ``repository`` is a valid repository name."""
    if len(repository) > REPOSITORY_MAX_LENGTH or not REPOSITORY_RE.fullmatch(repository):
        raise RegistryError(f"invalid repository name {repository!r}", permanent=True)


def validate_digest(digest: str) -> None:
    """Raise a permanent ``RegistryError`` unless ``digest`` looks like ``algorithm:hex``."""
    if not DIGEST_RE.fullmatch(digest):
        raise RegistryError(f"invalid digest {digest!r}", permanent=True)


def validate_reference(reference: str) -> None:
    """Raise a permanent ``RegistryError`` unless ``reference`` is a valid tag or digest."""
    if not (TAG_RE.fullmatch(reference) or DIGEST_RE.fullmatch(reference)):
        raise RegistryError(f"invalid tag or digest {reference!r}", permanent=True)


class RegistryClient:
    """Talks to one registry, e.g. ``RegistryClient("http://127.0.0.1:5000")``.

    Holds a ``requests`` session (one connection pool); use it as a context manager or
    call ``close()``. ``timeout`` (seconds) applies to connecting and to each read.
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"invalid registry URL {base_url!r}", permanent=True)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # The registry is ours and close by: no proxy or .netrc from the environment.
        self.session.trust_env = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def ping(self) -> bool:
        """True when the registry answers ``GET /v2/`` with 200; never raises."""
        try:
            response = self._send("GET", "/v2/")
        except RegistryError:
            return False
        return response.status_code == 200

    def repositories(self) -> list[str]:
        """Every repository in the registry's catalog, following its pagination.

        Distribution keeps a repository in the catalog after its last tag is deleted.
        """
        names: list[str] = []
        for page in self._pages(f"/v2/_catalog?n={PAGE_SIZE}", missing_ok=False):
            names.extend(self._string_list(page, "repositories"))
        return names

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository``, following pagination; [] when it does not exist."""
        validate_repository(repository)
        found: list[str] = []
        for page in self._pages(f"/v2/{repository}/tags/list?n={PAGE_SIZE}", missing_ok=True):
            found.extend(self._string_list(page, "tags"))
        return found

    def digest(self, repository: str, reference: str) -> str | None:
        """The manifest digest that ``reference`` (a tag or digest) points at, or None.

        Asks with ``HEAD`` for every manifest type we push (Docker v2, OCI, manifest
        lists and indexes), so the registry answers with the stored manifest's digest
        rather than a converted one: the same digest the engine reports after a push.
        """
        validate_repository(repository)
        validate_reference(reference)
        response = self._send(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        )
        if response.status_code == 404:
            return None
        self._raise_for_status(response)
        digest = response.headers.get("Docker-Content-Digest", "")
        if not DIGEST_RE.fullmatch(digest):
            raise RegistryError(
                f"{response.request.method} {response.url} answered without a valid "
                f"Docker-Content-Digest header ({digest!r})",
                permanent=True,
            )
        return digest

    def tags_with_digests(self, repository: str) -> dict[str, str]:
        """Each tag of ``repository`` with its manifest digest; {} when it does not exist.

        A tag deleted between listing and lookup is left out.
        """
        result: dict[str, str] = {}
        for tag in self.tags(repository):
            digest = self.digest(repository, tag)
            if digest is not None:
                result[tag] = digest
        return result

    def delete(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` and with it every tag pointing at it.

        A manifest (or repository) that is already gone counts as deleted. Blobs stay on
        disk until the registry's garbage collection runs.
        """
        validate_repository(repository)
        validate_digest(digest)
        response = self._send("DELETE", f"/v2/{repository}/manifests/{digest}")
        if response.status_code != 404:
            self._raise_for_status(response)

    # --- plumbing -----------------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """One request; a ``url`` starting with "/" is taken relative to the base URL."""
        if url.startswith("/"):
            url = self.base_url + url
        try:
            return self.session.request(method, url, headers=headers, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RegistryError(f"{method} {url}: registry unreachable: {exc}", permanent=False) from exc
        except requests.RequestException as exc:
            raise RegistryError(f"{method} {url}: {exc}", permanent=False) from exc

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in TRANSIENT_CLIENT_STATUSES
        raise RegistryError(
            f"{response.request.method} {response.url} answered {status}: {_error_detail(response)}",
            permanent=permanent,
        )

    def _pages(self, path: str, *, missing_ok: bool) -> Iterator[dict[str, Any]]:
        """The JSON bodies of a paginated list, following ``Link: <...>; rel="next"``."""
        url: str | None = self.base_url + path
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(f"GET {url}: pagination does not end", permanent=True)
            seen.add(url)
            response = self._send("GET", url)
            if response.status_code == 404 and missing_ok:
                return
            self._raise_for_status(response)
            yield self._json(response)
            url = self._next_url(response)

    def _next_url(self, response: requests.Response) -> str | None:
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        url = urljoin(response.url, link)
        # Only ever follow links to the registry we were given.
        if urlsplit(url).netloc != urlsplit(self.base_url).netloc:
            raise RegistryError(f"GET {response.url}: Link header leads elsewhere ({link})", permanent=True)
        return url

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as exc:
            raise RegistryError(f"GET {response.url}: answer is not JSON: {exc}", permanent=False) from exc
        if not isinstance(body, dict):
            raise RegistryError(f"GET {response.url}: answer is not a JSON object", permanent=False)
        return body

    @staticmethod
    def _string_list(body: dict[str, Any], key: str) -> list[str]:
        # Distribution answers "tags": null for a repository whose tags were all deleted.
        values = body.get(key) or []
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise RegistryError(f"registry answer has a malformed {key!r} list", permanent=False)
        return values


def _error_detail(response: requests.Response) -> str:
    """The registry's own words from an error body (``{"errors": [{"code", "message"}]}``)."""
    try:
        errors = response.json().get("errors") or []
        detail = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors)
    except (ValueError, AttributeError, TypeError):
        detail = ""
    return detail or response.reason or "no detail"
