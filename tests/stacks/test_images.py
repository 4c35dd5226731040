"""Every curated image in the shipped catalog: built (or reused), verified hardened, published.

One pipeline run per test session (module fixture); its results are checked per version
against the real registry and `docker inspect`.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from stacks.catalog import pipeline
from stacks.catalog.loader import parse_catalog
from stacks.catalog.registry import RegistryClient
from stacks.models import VersionStatus

# The first run builds every image (minutes); later runs reuse them by recipe hash.
# django_db: the session fixture needs the test database set up (pytest-django sets up only
# the databases that collected tests ask for).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600), pytest.mark.django_db]

VERSIONS = [(c["code"], str(v["version"])) for c in parse_catalog().components for v in c["versions"]]


@pytest.fixture
def published(
    published_catalog: dict[tuple[str, str], dict[str, Any]],
) -> dict[tuple[str, str], dict[str, Any]]:
    return published_catalog


@pytest.mark.parametrize(("code", "version"), VERSIONS, ids=[f"{c}-{v}" for c, v in VERSIONS])
def test_version_is_verified_and_published_with_the_recorded_digest(
    published, code: str, version: str
) -> None:
    result = published[(code, version)]
    assert result["status"] in (VersionStatus.CURRENT, VersionStatus.DEPRECATED, VersionStatus.VERIFIED), (
        f"{code} {version} not verified: {result['reason']}\n{result['log'][-3000:]}"
    )
    registry = RegistryClient(f"http://{settings.STACKPORT_REGISTRY}")
    assert result["digest"] and registry.digest(result["repository"], version) == result["digest"]


@pytest.mark.parametrize(("code", "version"), VERSIONS, ids=[f"{c}-{v}" for c, v in VERSIONS])
def test_image_is_hardened(published, code: str, version: str) -> None:
    result = published[(code, version)]
    image = pipeline.docker_client().images.get(result["image_ref"])
    config = image.attrs["Config"]
    assert config.get("Healthcheck", {}).get("Test"), "no HEALTHCHECK in the image"
    if result["user"] != "root":
        assert config.get("User") not in ("", "0", "root", None), "the image would run as root"
    assert f"runs as '{result['user']}'" in result["log"]
    caps_line = next(line for line in result["log"].splitlines() if "effective capabilities of PID 1" in line)
    assert int(caps_line.rsplit(":", 1)[1]) <= len(result["caps"])
