"""The image pipeline on the real engine and registry: only verified images are published."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.catalog import pipeline
from stacks.catalog.loader import catalog_files, load_catalog
from stacks.catalog.registry import RegistryClient
from stacks.models import ComponentVersion, VersionStatus

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

CATALOG = """\
sizes:
  - {code: small, name: Small, cpus: 0.25, memory_mb: 256}
"""

COMPONENT = """\
code: {code}
name: {code}
kind: web
recipe: {code}
user: nobody
read_only_root: true
tmpfs: [/tmp]
sizes: [small]
default_size: small
health: {{command: [true]}}
verify:
  env: {{ANSWER: "42"}}
  probes:
    - exec: [sh, -c, 'echo "answer=$ANSWER"']
      expect: "answer={expect}"
versions:
  - {{version: "1.0", track: "1.x", debian: bookworm, status: current}}
"""

GOOD = """\
ARG DEBIAN=bookworm
FROM stackport/debian:${DEBIAN}
USER nobody
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD ["true"]
CMD ["sleep", "infinity"]
"""


@pytest.fixture
def client(engine: None):
    return pipeline.docker_client()


@pytest.fixture
def tree(tmp_path: Path, settings) -> Path:
    settings.STACKPORT_IMAGE_NAMESPACE = "stackport-test"
    recipes = {
        "sp-good": (GOOD, "42"),
        "sp-broken": (GOOD.replace("USER nobody", "RUN false\nUSER nobody"), "42"),
        "sp-wrong-answer": (GOOD, "43"),
        "sp-root": (GOOD.replace("USER nobody\n", ""), "42"),
    }
    (tmp_path / "catalog" / "components").mkdir(parents=True)
    (tmp_path / "catalog" / "catalog.yaml").write_text(CATALOG)
    for code, (dockerfile, expect) in recipes.items():
        (tmp_path / "catalog" / "components" / f"{code}.yaml").write_text(
            COMPONENT.format(code=code, expect=expect)
        )
        (tmp_path / "images" / code).mkdir(parents=True)
        (tmp_path / "images" / code / "Dockerfile").write_text(dockerfile)
    load_catalog(catalog_files(tmp_path / "catalog"), images_dir=tmp_path / "images", samples_dir=tmp_path)
    return tmp_path


def _run_all(cv: ComponentVersion, client, tree: Path) -> bool:
    ok = pipeline.build_version(cv, client=client, images_dir=tree / "images", log=lambda _: None)
    ok = ok and pipeline.verify_version(cv, client=client, log=lambda _: None)
    ok = ok and pipeline.publish_version(cv, client=client, log=lambda _: None)
    cv.refresh_from_db()
    return ok


def test_a_good_image_is_verified_published_and_pinned_by_digest(tree: Path, client) -> None:
    cv = ComponentVersion.objects.get(component__code="sp-good")
    assert _run_all(cv, client, tree)
    assert cv.status == VersionStatus.CURRENT
    assert cv.verified_at and cv.published_at
    assert "probe exec" in cv.verification_log and "effective capabilities of PID 1: 0" in cv.verification_log
    registry = RegistryClient(f"http://{pipeline.settings.STACKPORT_REGISTRY}")
    assert registry.digest("stackport-test/sp-good", "1.0") == cv.digest
    assert cv.pinned_reference.endswith(f"stackport-test/sp-good@{cv.digest}")


def test_running_the_pipeline_twice_builds_and_pushes_once(tree: Path, client) -> None:
    cv = ComponentVersion.objects.get(component__code="sp-good")
    assert _run_all(cv, client, tree)
    first = (cv.recipe_hash, cv.built_at, cv.digest, cv.published_at, cv.verified_at)
    lines: list[str] = []
    assert pipeline.build_version(cv, client=client, images_dir=tree / "images", log=lines.append)
    assert pipeline.verify_version(cv, client=client, log=lines.append)
    assert pipeline.publish_version(cv, client=client, log=lines.append)
    cv.refresh_from_db()
    assert (cv.recipe_hash, cv.built_at, cv.digest, cv.published_at, cv.verified_at) == first
    assert "image up to date" in lines[0] and "already verified" in lines[1]


def test_a_changed_recipe_must_be_verified_again(tree: Path, client) -> None:
    cv = ComponentVersion.objects.get(component__code="sp-good")
    assert _run_all(cv, client, tree)
    (tree / "images" / "sp-good" / "Dockerfile").write_text(GOOD + "LABEL changed=yes\n")
    assert pipeline.build_version(cv, client=client, images_dir=tree / "images", log=lambda _: None)
    cv.refresh_from_db()
    assert cv.status == VersionStatus.CANDIDATE and cv.verified_at is None
    assert not pipeline.publish_version(cv, client=client, log=lambda _: None)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("sp-broken", "build failed"),
        ("sp-wrong-answer", "expected 'answer=43'"),
        ("sp-root", "runs as 'root'"),
    ],
)
def test_a_bad_image_is_never_verified_or_published(tree: Path, client, code: str, reason: str) -> None:
    cv = ComponentVersion.objects.get(component__code=code)
    # This version's verification runs only (tests on other workers verify other images).
    verify = {"label": "org.stackport.verify=1", "name": f"sp-verify-cv{cv.pk}-"}

    def leftovers() -> tuple[set[str], set[str]]:
        return (
            {
                c.id
                for c in client.containers.list(all=True, filters=verify)
                if code in c.attrs["Config"]["Image"]
            },
            {n.id for n in client.networks.list(filters=verify)},
        )

    before = leftovers()
    assert not _run_all(cv, client, tree)
    assert cv.status == VersionStatus.CANDIDATE
    assert cv.verified_at is None and cv.published_at is None and cv.digest == ""
    assert reason in cv.failure_reason
    assert not pipeline.publish_version(cv, client=client, log=lambda _: None)
    # Nothing of the verification run is left behind (whatever an earlier, killed run left).
    after = leftovers()
    assert after[0] <= before[0] and after[1] <= before[1]


def test_the_public_catalog_page_says_why_a_version_is_not_offered(tree: Path, client) -> None:
    from django.test import Client

    cv = ComponentVersion.objects.get(component__code="sp-wrong-answer")
    _run_all(cv, client, tree)
    page = Client().get("/catalog/").content.decode()
    assert "candidate" in page and "expected &#x27;answer=43&#x27;" in page
