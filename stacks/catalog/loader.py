"""Load the curated catalog from its versioned YAML files, idempotently.

``stacks/catalog/catalog.yaml`` holds sizes, kernel lines, regions, frameworks,
compatibility rules and templates; ``stacks/catalog/components/*.yaml`` one component
each. Everything is validated before anything is written; an error names the file and
line. Loading the same files twice changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction

from stacks.models import (
    RUNNABLE_STATUSES,
    CompatibilityRule,
    Component,
    ComponentKind,
    ComponentVersion,
    Framework,
    KernelVersion,
    Region,
    Size,
    StackTemplate,
    StackTemplateComponent,
    VersionStatus,
)

CATALOG_DIR = Path(__file__).resolve().parent  # catalog.yaml and components/*.yaml beside this module
IMAGES_DIR = CATALOG_DIR / "images"
SAMPLES_DIR = CATALOG_DIR / "samples"
CODE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,29}$")
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+~-]{0,31}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VOLUME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")  # as stacks.runtime.spec, which checks again
MOUNT_PATH_RE = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,8}$")
DEBIAN_RELEASES = {"bookworm", "trixie"}
BACKENDS = {"docker", "kubernetes"}
PROBE_KINDS = {"exec", "http", "tcp"}


class CatalogError(Exception):
    """An invalid catalog file; the message names the file and line."""


class _Map(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys stand."""

    where: str = "?"
    key_where: dict[str, str]


class _Loader(yaml.SafeLoader):
    filename = "?"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.where = f"{loader.filename} line {node.start_mark.line + 1}"
    result.key_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise CatalogError(
                f"{loader.filename} line {key_node.start_mark.line + 1}: duplicate key {key!r}"
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_where[key] = f"{loader.filename} line {key_node.start_mark.line + 1}"
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]


def _read(path: Path) -> Any:
    loader = _Loader(path.read_text(encoding="utf-8"))
    loader.filename = str(
        path.relative_to(settings.BASE_DIR) if path.is_relative_to(settings.BASE_DIR) else path
    )
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise CatalogError(f"{loader.filename}{line}: {exc.problem or exc}") from None
    finally:
        loader.dispose()


# --- validation --------------------------------------------------------------------------------
def _at(m: _Map, key: str | None = None) -> str:
    if key is not None and isinstance(m, _Map) and key in m.key_where:
        return m.key_where[key]
    return getattr(m, "where", "?")


def _require(m: Any, keys: Iterable[str], optional: Iterable[str], what: str, where: str) -> _Map:
    if not isinstance(m, _Map):
        raise CatalogError(f"{where}: {what} must be a mapping")
    allowed = set(keys) | set(optional)
    for key in m:
        if key not in allowed:
            raise CatalogError(f"{_at(m, key)}: unknown key {key!r} in {what}")
    for key in keys:
        if key not in m:
            raise CatalogError(f"{_at(m)}: {what} is missing {key!r}")
    return m


def _list(m: _Map, key: str, what: str) -> list[Any]:
    value = m.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise CatalogError(f"{_at(m, key)}: {what}.{key} must be a list")
    return value


def _code(m: _Map, key: str, what: str, pattern: re.Pattern[str] = CODE_RE) -> str:
    value = m.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise CatalogError(f"{_at(m, key)}: {what} has an invalid {key} {value!r}")
    return value


def _date(m: _Map, key: str, what: str) -> date | None:
    value = m.get(key)
    if value is None:
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CatalogError(
            f"{_at(m, key)}: {what}.{key} must be a date (YYYY-MM-DD), not {value!r}"
        ) from None


@dataclass
class Catalog:
    sizes: list[_Map] = field(default_factory=list)
    kernels: list[_Map] = field(default_factory=list)
    regions: list[_Map] = field(default_factory=list)
    frameworks: list[_Map] = field(default_factory=list)
    compatibility: list[_Map] = field(default_factory=list)
    templates: list[_Map] = field(default_factory=list)
    components: list[_Map] = field(default_factory=list)


def catalog_files(directory: Path = CATALOG_DIR) -> list[Path]:
    return [directory / "catalog.yaml", *sorted((directory / "components").glob("*.yaml"))]


def parse_catalog(
    paths: list[Path] | None = None, *, images_dir: Path = IMAGES_DIR, samples_dir: Path = SAMPLES_DIR
) -> Catalog:
    """Read and validate the catalog files (all of ``stacks/catalog`` by default)."""
    if paths is None:
        paths = catalog_files()
    catalog = Catalog()
    for path in paths:
        if not path.is_file():
            raise CatalogError(f"{path}: no such file")
        data = _read(path)
        if data is None:
            continue
        where = f"{path.name} line 1"
        if "code" in (data if isinstance(data, dict) else {}):
            catalog.components.append(data)  # a component file holds one component
            continue
        _require(
            data,
            [],
            ["sizes", "kernels", "regions", "frameworks", "compatibility", "templates", "components"],
            "catalog file",
            where,
        )
        for key in ("sizes", "kernels", "regions", "frameworks", "compatibility", "templates", "components"):
            getattr(catalog, key).extend(_list(data, key, "catalog"))
    _validate(catalog, images_dir, samples_dir)
    return catalog


def _unique(items: list[_Map], key: str, what: str) -> dict[str, _Map]:
    seen: dict[str, _Map] = {}
    for item in items:
        value = str(item.get(key))
        if value in seen:
            raise CatalogError(
                f"{_at(item, key)}: {what} {value!r} is defined twice (also {_at(seen[value])})"
            )
        seen[value] = item
    return seen


def _validate(c: Catalog, images_dir: Path, samples_dir: Path) -> None:
    for s in c.sizes:
        _require(s, ["code", "name", "cpus", "memory_mb"], ["pids"], "size", "?")
        _code(s, "code", "size")
        if not isinstance(s["memory_mb"], int) or s["memory_mb"] < 16:
            raise CatalogError(f"{_at(s, 'memory_mb')}: size memory_mb must be a whole number ≥ 16")
    sizes = _unique(c.sizes, "code", "size")
    for k in c.kernels:
        _require(k, ["line", "name"], ["eol", "default"], "kernel", "?")
        _date(k, "eol", "kernel")
    kernels = _unique(c.kernels, "line", "kernel line")
    for r in c.regions:
        _require(r, ["code", "name", "backend"], ["kernel_lines", "active"], "region", "?")
        _code(r, "code", "region")
        if r["backend"] not in BACKENDS:
            raise CatalogError(
                f"{_at(r, 'backend')}: unknown backend {r['backend']!r} (one of {sorted(BACKENDS)})"
            )
        for line in _list(r, "kernel_lines", "region"):
            if str(line) not in kernels:
                raise CatalogError(f"{_at(r, 'kernel_lines')}: unknown kernel line {line!r}")
    _unique(c.regions, "code", "region")

    components = _unique(c.components, "code", "component")
    for comp in c.components:
        _validate_component(comp, sizes, images_dir)
    for f in c.frameworks:
        _require(f, ["code", "name"], ["description", "runtime"], "framework", "?")
        _code(f, "code", "framework")
        if f.get("runtime") is not None and f["runtime"] not in components:
            raise CatalogError(f"{_at(f, 'runtime')}: unknown component {f['runtime']!r}")
    frameworks = _unique(c.frameworks, "code", "framework")

    requires: dict[str, list[str]] = {}
    for rule in c.compatibility:
        _require(rule, ["component", "kind", "others"], ["note"], "compatibility rule", "?")
        if rule["component"] not in components:
            raise CatalogError(f"{_at(rule, 'component')}: unknown component {rule['component']!r}")
        if rule["kind"] not in CompatibilityRule.Kind.values:
            raise CatalogError(f"{_at(rule, 'kind')}: unknown rule kind {rule['kind']!r}")
        for other in _list(rule, "others", "compatibility rule"):
            if other not in components:
                raise CatalogError(f"{_at(rule, 'others')}: unknown component {other!r}")
        if rule["kind"] == CompatibilityRule.Kind.REQUIRES:
            requires.setdefault(rule["component"], []).extend(rule["others"])
    _check_acyclic(requires, {r["component"]: r for r in c.compatibility})

    for t in c.templates:
        _validate_template(t, components, sizes, frameworks, samples_dir)
    _unique(c.templates, "code", "template")


def _validate_component(comp: _Map, sizes: dict[str, _Map], images_dir: Path) -> None:
    _require(
        comp,
        ["code", "name", "kind", "recipe", "user", "sizes", "default_size", "versions", "health"],
        [
            "description",
            "read_only_root",
            "tmpfs",
            "capabilities",
            "stateful",
            "ports",
            "volumes",
            "env",
            "provides",
            "verify",
        ],
        "component",
        "?",
    )
    code = _code(comp, "code", "component")
    if comp["kind"] not in ComponentKind.values:
        raise CatalogError(f"{_at(comp, 'kind')}: component {code} has unknown kind {comp['kind']!r}")
    if not (images_dir / str(comp["recipe"]) / "Dockerfile").is_file():
        raise CatalogError(
            f"{_at(comp, 'recipe')}: component {code}: "
            f"no recipe stacks/catalog/images/{comp['recipe']}/Dockerfile"
        )
    for size in _list(comp, "sizes", "component"):
        if size not in sizes:
            raise CatalogError(f"{_at(comp, 'sizes')}: component {code} names unknown size {size!r}")
    if comp["default_size"] not in comp["sizes"]:
        raise CatalogError(
            f"{_at(comp, 'default_size')}: component {code}: default_size is not one of its sizes"
        )
    for cap in _list(comp, "capabilities", "component"):
        if not isinstance(cap, str) or not re.match(r"^[A-Z_]+$", cap):
            raise CatalogError(f"{_at(comp, 'capabilities')}: component {code}: bad capability {cap!r}")
    for name in comp.get("env") or {}:
        if not ENV_RE.match(str(name)):
            raise CatalogError(f"{_at(comp, 'env')}: component {code}: bad environment name {name!r}")
    for probe in _list(comp.get("verify") or _Map(), "probes", "verify"):
        kinds = PROBE_KINDS & set(probe)
        if len(kinds) != 1:
            raise CatalogError(
                f"{_at(probe)}: component {code}: a probe needs exactly one of {sorted(PROBE_KINDS)}"
            )
    versions = _list(comp, "versions", "component")
    if not versions:
        raise CatalogError(f"{_at(comp, 'versions')}: component {code} has no versions")
    seen: set[str] = set()
    for v in versions:
        _require(
            v,
            ["version", "track", "debian"],
            ["build_args", "status", "released", "deprecated", "eol", "migration"],
            "version",
            "?",
        )
        version = str(v["version"])
        if not VERSION_RE.match(version):
            raise CatalogError(f"{_at(v, 'version')}: component {code} has a bad version {version!r}")
        if version in seen:
            raise CatalogError(f"{_at(v, 'version')}: component {code} lists version {version} twice")
        seen.add(version)
        if v["debian"] not in DEBIAN_RELEASES:
            raise CatalogError(f"{_at(v, 'debian')}: unknown Debian release {v['debian']!r}")
        status = v.get("status", VersionStatus.CURRENT)
        if status not in {
            VersionStatus.CURRENT,
            VersionStatus.DEPRECATED,
            VersionStatus.END_OF_LIFE,
            VersionStatus.VERIFIED,
        }:
            raise CatalogError(f"{_at(v, 'status')}: status must be current, verified, deprecated or eol")
        for key in ("released", "deprecated", "eol"):
            _date(v, key, f"{code} {version}")
        migration = v.get("migration") or {}
        if migration:
            _check_migration(migration, f"{code} {version}")
        for source in migration.get("from", []) if isinstance(migration, dict) else []:
            if str(source) not in {str(x["version"]) for x in versions}:
                raise CatalogError(
                    f"{_at(v, 'migration')}: {code} {version} migrates from unknown version {source!r}"
                )


MIGRATION_METHODS = ("dump-restore", "in-place")


def _check_migration(migration: Any, what: str) -> None:
    """A version's ``migration``: which versions its data comes from and how. dump-restore
    names its procedure: ``restore`` (a command run in a temporary container of this version
    on fresh volumes) and optionally ``export`` (run in the old version's container, its
    output handed to ``restore``); ``notice`` is what the customer reads before upgrading."""
    m = _require(migration, ["from", "method"], ["export", "restore", "notice"], "migration", what)
    if not isinstance(m["from"], list) or not m["from"]:
        raise CatalogError(f"{_at(m, 'from')}: {what}: migration.from must be a list of versions")
    if m["method"] not in MIGRATION_METHODS:
        raise CatalogError(f"{_at(m, 'method')}: {what}: migration.method must be one of {MIGRATION_METHODS}")
    for key in ("export", "restore"):
        command = m.get(key)
        if command is not None and (
            not isinstance(command, list) or not command or not all(isinstance(x, str) and x for x in command)
        ):
            raise CatalogError(
                f"{_at(m, key)}: {what}: migration.{key} must be a command (a list of strings)"
            )
    if m["method"] == "dump-restore" and not m.get("restore"):
        raise CatalogError(f"{_at(m)}: {what}: a dump-restore migration needs its restore command")
    if m["method"] != "dump-restore" and (m.get("export") or m.get("restore")):
        raise CatalogError(f"{_at(m)}: {what}: export and restore belong to a dump-restore migration")
    if not isinstance(m.get("notice", ""), str):
        raise CatalogError(f"{_at(m, 'notice')}: {what}: migration.notice must be text")


def _check_acyclic(requires: dict[str, list[str]], rules: dict[str, _Map]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in requires.get(node, []):
            if state.get(nxt) == 1:
                cycle = " -> ".join([*path[path.index(nxt) :], nxt]) if nxt in path else f"{node} -> {nxt}"
                raise CatalogError(f"{_at(rules[node])}: cyclic requirement {cycle}")
            if state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in requires:
        if state.get(start) is None:
            visit(start, [start])


def _validate_template(
    t: _Map,
    components: dict[str, _Map],
    sizes: dict[str, _Map],
    frameworks: dict[str, _Map],
    samples_dir: Path,
) -> None:
    _require(
        t,
        ["code", "name", "components"],
        ["description", "framework", "sample_app", "active"],
        "template",
        "?",
    )
    code = _code(t, "code", "template")
    if t.get("framework") is not None and t["framework"] not in frameworks:
        raise CatalogError(f"{_at(t, 'framework')}: template {code}: unknown framework {t['framework']!r}")
    if t.get("sample_app") and not (samples_dir / t["sample_app"]).is_dir():
        raise CatalogError(
            f"{_at(t, 'sample_app')}: template {code}: no sample app stacks/catalog/samples/{t['sample_app']}"
        )
    names: set[str] = set()
    for item in _list(t, "components", "template"):
        _require(
            item,
            ["name", "component"],
            ["track", "size", "replicas", "env", "public", "mounts"],
            "template component",
            "?",
        )
        name = _code(item, "name", f"template {code} component", NAME_RE)
        if name in names:
            raise CatalogError(f"{_at(item, 'name')}: template {code} uses the name {name!r} twice")
        names.add(name)
        comp = components.get(item["component"])
        if comp is None:
            raise CatalogError(
                f"{_at(item, 'component')}: template {code}: unknown component {item['component']!r}"
            )
        if item.get("track") and item["track"] not in {str(v["track"]) for v in comp["versions"]}:
            raise CatalogError(
                f"{_at(item, 'track')}: template {code}: {comp['code']} has no track {item['track']!r}"
            )
        size = item.get("size", comp["default_size"])
        if size not in comp["sizes"]:
            raise CatalogError(
                f"{_at(item, 'size')}: template {code}: {comp['code']} does not come in size {size!r}"
            )
        replicas = item.get("replicas", 1)
        if not isinstance(replicas, int) or not 1 <= replicas <= 20:
            raise CatalogError(f"{_at(item, 'replicas')}: template {code}: replicas must be 1 to 20")
        for env_name in item.get("env") or {}:
            if not ENV_RE.match(str(env_name)):
                raise CatalogError(f"{_at(item, 'env')}: template {code}: bad environment name {env_name!r}")
        _validate_mounts(item, code, comp)
    if not names:
        raise CatalogError(f"{_at(t)}: template {code} has no components")


def _validate_mounts(item: _Map, code: str, comp: _Map) -> None:
    """A template component's stack volumes: ``[{volume: uploads, path: /srv/...}]``."""
    mounts = item.get("mounts") or []
    if not isinstance(mounts, list):
        raise CatalogError(f"{_at(item, 'mounts')}: template {code}: mounts must be a list")
    own = {str(v.get("name")) for v in comp.get("volumes") or [] if isinstance(v, dict)}
    for mount in mounts:
        if not isinstance(mount, dict) or set(mount) != {"volume", "path"}:
            raise CatalogError(f"{_at(item, 'mounts')}: template {code}: a mount is {{volume, path}}")
        if not VOLUME_RE.fullmatch(str(mount["volume"])) or mount["volume"] in own:
            raise CatalogError(f"{_at(item, 'mounts')}: template {code}: bad volume name {mount['volume']!r}")
        if not MOUNT_PATH_RE.fullmatch(str(mount["path"])) or ".." in str(mount["path"]).split("/"):
            raise CatalogError(f"{_at(item, 'mounts')}: template {code}: bad mount path {mount['path']!r}")


# --- applying ------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"


def _upsert(report: LoadReport, model: type[Any], lookup: dict[str, Any], values: dict[str, Any]) -> Any:
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        report.created += 1
        return model.objects.create(**lookup, **values)
    changed = [k for k, v in values.items() if getattr(obj, k) != v]
    if changed:
        for k in changed:
            setattr(obj, k, values[k])
        obj.save(update_fields=changed)
        report.updated += 1
    else:
        report.unchanged += 1
    return obj


def _set_m2m(report: LoadReport, manager: Any, objs: list[Any]) -> None:
    if {o.pk for o in manager.all()} != {o.pk for o in objs}:
        manager.set(objs)
        report.updated += 1


@transaction.atomic
def load_catalog(paths: list[Path] | None = None, **dirs: Path) -> LoadReport:
    """Validate, then write the catalog in one transaction. Returns what changed."""
    c = parse_catalog(paths, **dirs)
    report = LoadReport()
    sizes = {}
    for i, s in enumerate(c.sizes):
        sizes[s["code"]] = _upsert(
            report,
            Size,
            {"code": s["code"]},
            {
                "name": s["name"],
                "cpus": _decimal(s["cpus"]),
                "memory_mb": s["memory_mb"],
                "pids": s.get("pids", 256),
                "position": i,
            },
        )
    kernels = {}
    for k in c.kernels:
        kernels[str(k["line"])] = _upsert(
            report,
            KernelVersion,
            {"line": str(k["line"])},
            {
                "name": k["name"],
                "eol": _date(k, "eol", "kernel"),
                "is_default": bool(k.get("default", False)),
            },
        )
    for i, r in enumerate(c.regions):
        region = _upsert(
            report,
            Region,
            {"code": r["code"]},
            {
                "name": r["name"],
                "backend": r["backend"],
                "is_active": bool(r.get("active", True)),
                "position": i,
            },
        )
        _set_m2m(report, region.kernel_lines, [kernels[str(x)] for x in r.get("kernel_lines") or []])
    components = {}
    for i, comp in enumerate(c.components):
        components[comp["code"]] = _apply_component(report, comp, sizes, i)
    for i, f in enumerate(c.frameworks):
        _upsert(
            report,
            Framework,
            {"code": f["code"]},
            {
                "name": f["name"],
                "description": f.get("description", ""),
                "runtime": components.get(f.get("runtime")) if f.get("runtime") else None,
                "position": i,
            },
        )
    for rule in c.compatibility:
        obj = _upsert(
            report,
            CompatibilityRule,
            {"component": components[rule["component"]], "kind": rule["kind"]},
            {"note": rule.get("note", "")},
        )
        _set_m2m(report, obj.others, [components[o] for o in rule["others"]])
    for i, t in enumerate(c.templates):
        _apply_template(report, t, components, sizes, i)
    return report


def _decimal(value: Any) -> Any:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _apply_component(report: LoadReport, comp: _Map, sizes: dict[str, Size], position: int) -> Component:
    obj = _upsert(
        report,
        Component,
        {"code": comp["code"]},
        {
            "name": comp["name"],
            "kind": comp["kind"],
            "description": (comp.get("description") or "").strip(),
            "recipe": comp["recipe"],
            "user": comp["user"],
            "read_only_root": bool(comp.get("read_only_root", True)),
            "tmpfs": list(comp.get("tmpfs") or []),
            "capabilities": list(comp.get("capabilities") or []),
            "stateful": bool(comp.get("stateful", False)),
            "ports": _plain(comp.get("ports") or []),
            "volumes": _plain(comp.get("volumes") or []),
            "env": _plain(comp.get("env") or {}),
            "provides": _plain(comp.get("provides") or {}),
            "health": _plain(comp["health"]),
            "verify": _plain(comp.get("verify") or {}),
            "default_size": sizes[comp["default_size"]],
            "position": position,
        },
    )
    _set_m2m(report, obj.sizes, [sizes[s] for s in comp["sizes"]])
    for i, v in enumerate(comp["versions"]):
        target = v.get("status", VersionStatus.CURRENT)
        cv = _upsert(
            report,
            ComponentVersion,
            {"component": obj, "version": str(v["version"])},
            {
                "track": str(v["track"]),
                "debian": v["debian"],
                "build_args": _plain(v.get("build_args") or {}),
                "target_status": target,
                "released": _date(v, "released", ""),
                "deprecated_on": _date(v, "deprecated", ""),
                "eol": _date(v, "eol", ""),
                "migration": _plain(v.get("migration") or {}),
                "position": i,
            },
        )
        # A verified image follows the status the hoster asks for; candidates wait for the pipeline.
        if cv.status in RUNNABLE_STATUSES and cv.status != target and target != VersionStatus.VERIFIED:
            ComponentVersion.objects.filter(pk=cv.pk).update(status=target)
        elif target == VersionStatus.END_OF_LIFE and cv.status != VersionStatus.END_OF_LIFE:
            ComponentVersion.objects.filter(pk=cv.pk).update(status=VersionStatus.END_OF_LIFE)
    return obj


def _apply_template(
    report: LoadReport, t: _Map, components: dict[str, Component], sizes: dict[str, Size], position: int
) -> None:
    framework = Framework.objects.filter(code=t["framework"]).first() if t.get("framework") else None
    template = _upsert(
        report,
        StackTemplate,
        {"code": t["code"]},
        {
            "name": t["name"],
            "description": (t.get("description") or "").strip(),
            "framework": framework,
            "sample_app": t.get("sample_app", ""),
            "is_active": bool(t.get("active", True)),
            "position": position,
        },
    )
    wanted = []
    for i, item in enumerate(t["components"]):
        comp = components[item["component"]]
        wanted.append(
            {
                "name": item["name"],
                "component_id": comp.pk,
                "track": str(item.get("track", "")),
                "size_id": sizes[item.get("size") or comp.default_size.code].pk,
                "replicas": item.get("replicas", 1),
                "env": _plain(item.get("env") or {}),
                "public": bool(item.get("public", False)),
                "mounts": _plain(item.get("mounts") or []),
                "position": i,
            }
        )
    have = list(
        template.components.values(
            "name", "component_id", "track", "size_id", "replicas", "env", "public", "mounts", "position"
        )
    )
    if have != wanted:
        template.components.all().delete()
        StackTemplateComponent.objects.bulk_create(
            StackTemplateComponent(template=template, **w) for w in wanted
        )
        report.updated += 1


def _plain(value: Any) -> Any:
    """YAML structures as plain JSON-able values (dates as ISO strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    return value
