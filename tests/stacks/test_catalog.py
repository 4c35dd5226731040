"""The catalog loader: idempotent, and invalid files refused with the file and line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacks.catalog.loader import CatalogError, catalog_files, load_catalog, parse_catalog
from stacks.models import Component, ComponentVersion, Region, StackTemplate, VersionStatus

pytestmark = pytest.mark.django_db

CATALOG = """\
sizes:
  - {code: small, name: Small, cpus: 0.25, memory_mb: 256}
  - {code: medium, name: Medium, cpus: 0.5, memory_mb: 512}
kernels:
  - {line: "6.1", name: Linux 6.1 LTS, eol: 2027-12-31}
regions:
  - {code: eu, name: Europe, backend: docker, kernel_lines: ["6.1"]}
  - {code: us, name: America, backend: kubernetes, kernel_lines: ["6.1"]}
frameworks:
  - {code: php, name: PHP, runtime: php}
compatibility:
  - {component: php, kind: requires, others: [web]}
templates:
  - code: site
    name: Site
    framework: php
    sample_app: hello
    components:
      - {name: web, component: web, public: true}
      - {name: php, component: php, size: medium}
"""

WEB = """\
code: web
name: Web
kind: web
recipe: web
user: www-data
sizes: [small, medium]
default_size: small
health: {command: [true]}
versions:
  - {version: "1.22", track: "1.x", debian: bookworm, status: deprecated, eol: 2026-06-30}
  - {version: "1.26", track: "1.x", debian: trixie}
"""

PHP = """\
code: php
name: PHP
kind: runtime
recipe: php
user: www-data
sizes: [small, medium]
default_size: small
health: {command: [true]}
versions:
  - {version: "8.2", track: "8.x", debian: bookworm}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "catalog" / "components").mkdir(parents=True)
    (tmp_path / "catalog" / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "catalog" / "components" / "web.yaml").write_text(WEB)
    (tmp_path / "catalog" / "components" / "php.yaml").write_text(PHP)
    for recipe in ("web", "php"):
        (tmp_path / "images" / recipe).mkdir(parents=True)
        (tmp_path / "images" / recipe / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "samples" / "hello").mkdir(parents=True)
    return tmp_path


def _load(tree: Path):
    return load_catalog(
        catalog_files(tree / "catalog"), images_dir=tree / "images", samples_dir=tree / "samples"
    )


def _counts() -> tuple[int, ...]:
    return (
        Region.objects.count(),
        Component.objects.count(),
        ComponentVersion.objects.count(),
        StackTemplate.objects.count(),
    )


def test_load_creates_the_catalog(tree: Path) -> None:
    report = _load(tree)
    assert report.created > 0
    assert _counts() == (2, 2, 3, 1)
    template = StackTemplate.objects.get(code="site")
    assert [c.name for c in template.components.all()] == ["web", "php"]
    assert template.components.get(name="php").size.code == "medium"
    assert Region.objects.get(code="us").backend == "kubernetes"
    # New versions wait for the image pipeline: nothing is offered unverified.
    assert set(ComponentVersion.objects.values_list("status", flat=True)) == {VersionStatus.CANDIDATE}


def test_loading_twice_changes_nothing(tree: Path) -> None:
    _load(tree)
    before = list(ComponentVersion.objects.values())
    report = _load(tree)
    assert (report.created, report.updated) == (0, 0)
    assert list(ComponentVersion.objects.values()) == before


def test_a_changed_file_updates_in_place(tree: Path) -> None:
    _load(tree)
    (tree / "catalog" / "components" / "php.yaml").write_text(PHP.replace("name: PHP", "name: PHP (FPM)"))
    report = _load(tree)
    assert report.updated == 1
    assert Component.objects.get(code="php").name == "PHP (FPM)"


def test_a_verified_version_follows_the_status_the_file_asks_for(tree: Path) -> None:
    _load(tree)
    ComponentVersion.objects.filter(version="1.26").update(status=VersionStatus.CURRENT)
    (tree / "catalog" / "components" / "web.yaml").write_text(
        WEB.replace(
            '{version: "1.26", track: "1.x", debian: trixie}',
            '{version: "1.26", track: "1.x", debian: trixie, status: deprecated}',
        )
    )
    _load(tree)
    assert ComponentVersion.objects.get(version="1.26").status == VersionStatus.DEPRECATED


def _refused(tree: Path, relpath: str, old: str, new: str) -> str:
    path = tree / relpath
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises(CatalogError) as info:
        _load(tree)
    assert _counts() == (0, 0, 0, 0), "an invalid catalog must write nothing"
    return str(info.value)


def test_unknown_component_in_a_template_names_the_line(tree: Path) -> None:
    message = _refused(tree, "catalog/catalog.yaml", "component: php, size", "component: pyhton, size")
    assert "catalog.yaml line 20:" in message
    assert "unknown component 'pyhton'" in message


def test_bad_version_names_the_line(tree: Path) -> None:
    message = _refused(tree, "catalog/components/php.yaml", 'version: "8.2"', 'version: "eight; rm -rf /"')
    assert "php.yaml line 10" in message
    assert "bad version" in message


def test_cyclic_requirement_is_refused(tree: Path) -> None:
    message = _refused(
        tree,
        "catalog/catalog.yaml",
        "  - {component: php, kind: requires, others: [web]}\n",
        "  - {component: php, kind: requires, others: [web]}\n  - {component: web, kind: requires, others: [php]}\n",
    )
    assert "cyclic requirement" in message
    assert "catalog.yaml line" in message


def test_yaml_syntax_error_names_the_line(tree: Path) -> None:
    message = _refused(tree, "catalog/components/web.yaml", "kind: web\n", "kind: [web\n")
    assert "web.yaml line" in message


def test_unknown_key_and_missing_recipe_are_refused(tree: Path) -> None:
    assert "unknown key 'colour'" in _refused(
        tree, "catalog/components/web.yaml", "kind: web\n", "kind: web\ncolour: red\n"
    )
    (tree / "catalog/components/web.yaml").write_text(WEB)
    assert "no recipe stacks/catalog/images/nginx" in _refused(
        tree, "catalog/components/web.yaml", "recipe: web", "recipe: nginx"
    )


def test_unknown_size_and_kernel_are_refused(tree: Path) -> None:
    assert "unknown size 'huge'" in _refused(
        tree, "catalog/components/php.yaml", "sizes: [small, medium]", "sizes: [small, huge]"
    )
    (tree / "catalog/components/php.yaml").write_text(PHP)
    assert "unknown kernel line '5.4'" in _refused(
        tree,
        "catalog/catalog.yaml",
        'backend: docker, kernel_lines: ["6.1"]',
        'backend: docker, kernel_lines: ["5.4"]',
    )


def test_the_shipped_catalog_is_valid() -> None:
    catalog = parse_catalog()
    codes = {c["code"] for c in catalog.components}
    assert {
        "nginx",
        "apache",
        "php-fpm",
        "python",
        "nodejs",
        "postgresql",
        "mariadb",
        "redis",
        "memcached",
        "rabbitmq",
    } <= codes
    assert {t["code"] for t in catalog.templates} >= {
        "wordpress",
        "lamp",
        "python-web",
        "nodejs",
        "static-site",
        "python-queue",
    }
    assert len(catalog.regions) >= 2
