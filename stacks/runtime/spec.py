"""From what the customer chose to what the backend runs: one validator for every path.

``build_spec`` turns an environment and one of its releases into a ``StackSpec``. Every
value comes from the curated catalog (image by digest, user, capabilities, volumes, health
check) or from validated customer input (replicas, size, variables); nothing else can
reach a container. Create, update, scale, upgrade and rollback all go through here.

Service wiring: each component gets the catalog's defaults, the template's settings, its
generated credentials, and what the other components *provide* (``DATABASE_URL`` from the
database, ``STACKPORT_HTTP_UPSTREAM`` from an app runtime, ...), formatted with their
service name as host. Customer variables come last, byte-for-byte.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, NotRequired, TypedDict

from django.conf import settings

from projects.crypto import decrypt, encrypt
from stacks.backends.base import ComponentSpec, EgressPolicy, StackSpec, VolumeSpec
from stacks.models import (
    Component,
    ComponentKind,
    ComponentVersion,
    Size,
    StackComponent,
    Variable,
)
from stacks.runtime.policy import stack_policy

if TYPE_CHECKING:
    from projects.models import Environment
    from stacks.models import Release

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
SERVICE_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,29}")
RESERVED_PREFIX = "STACKPORT_"
CONTENT_VOLUME = "app"  # a stateless component's volume of this name holds the release content
APP_KINDS = (ComponentKind.WEB, ComponentKind.RUNTIME)
GENERATE = "@generate"  # a template setting whose value is a random secret, made once per stack
PUBLIC_URL = "{public_url}"  # replaced in template settings by the environment's address


class Mount(TypedDict):
    """A stack volume a component mounts (a template's ``mounts``), shared by name."""

    volume: str
    path: str


class ComponentRow(TypedDict):
    """One component of a stack as the customer asked for it: an entry of
    ``Release.spec["components"]``, a request's target and the source of a ``StackComponent``.
    Rows from a request are checked by ``validate_component_row`` before anything is stored."""

    name: str  # the service name, unique in the stack
    component: str  # Component.code
    version: str  # ComponentVersion.version
    size: str  # Size.code
    replicas: int
    public: NotRequired[bool]  # receives the public route (at most one)
    env: NotRequired[dict[str, str]]
    position: NotRequired[int]
    mounts: NotRequired[list[Mount]]  # stack volumes (WordPress's uploads)
    data_generation: NotRequired[int]  # bumped by a dump-and-restore upgrade: fresh volumes


class SpecError(Exception):
    """The desired stack is not runnable; ``message`` is fit for the customer."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def validate_env_name(name: str) -> None:
    if not ENV_NAME_RE.fullmatch(name):
        raise SpecError(
            f"{name[:40]!r} is not a valid variable name: "
            "use letters, digits and _, not starting with a digit.",
            "name",
        )
    if name.upper().startswith(RESERVED_PREFIX):
        raise SpecError(f"Names starting with {RESERVED_PREFIX} are reserved for Stackport.", "name")


def validate_env_value(value: str) -> None:
    if "\x00" in value:
        raise SpecError("Values cannot contain the NUL character.", "value")
    if len(value.encode()) > 32 * 1024:
        raise SpecError("Values are limited to 32 KiB.", "value")


# --- what a catalog entry may ask of the engine -----------------------------------------------
# Fixed here, whatever the catalog rows in the database say (staff edit those in admin): a
# capability, user, volume or tmpfs path outside these lists never reaches a container.
ALLOWED_CAPABILITIES = frozenset(
    {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"}
)
ALLOWED_USERS = frozenset({"www-data", "mysql", "memcache", "postgres", "rabbitmq", "redis", "nobody", "app"})
MOUNT_PATH_RE = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,8}")
VOLUME_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
FORBIDDEN_MOUNTS = (
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/boot",
    "/root",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/var/lib/docker",
)


def _allowed_user_part(part: str) -> bool:
    if part.isdigit():
        return int(part) > 0
    return part in ALLOWED_USERS


def check_component_allowlist(component: Component) -> None:
    """Refuse a component whose capabilities, user, volumes or tmpfs paths leave the fixed
    allowlist above (a hostile or mistaken admin edit): the operation fails with this message."""

    def refuse(what: str) -> SpecError:
        return SpecError(
            f"The catalog entry of {component.name} asks for {what}, which Stackport never "
            "gives a container; the hoster has to correct the catalog.",
            "component",
        )

    capabilities = component.capabilities
    if not isinstance(capabilities, list):
        raise refuse("malformed capabilities")
    for cap in capabilities:
        name = cap.upper().removeprefix("CAP_") if isinstance(cap, str) else ""
        if name not in ALLOWED_CAPABILITIES:
            raise refuse(f"the capability {str(cap)[:40]!r}")
    user = str(component.user or "")
    if not user or not all(_allowed_user_part(part) for part in user.split(":", 1)):
        raise refuse(f"the user {user[:40]!r}" if user else "no user (the image's default, maybe root)")
    tmpfs = component.tmpfs
    if not isinstance(tmpfs, list):
        raise refuse("malformed tmpfs mounts")
    paths = [str(p) if isinstance(p, str) else "" for p in tmpfs]
    volumes = component.volumes
    if not isinstance(volumes, list):
        raise refuse("malformed volumes")
    for volume in volumes:
        if not isinstance(volume, dict) or not VOLUME_NAME_RE.fullmatch(str(volume.get("name", ""))):
            raise refuse(f"the volume {str(volume)[:60]!r}")
        paths.append(str(volume.get("path", "")) if isinstance(volume.get("path"), str) else "")
    for path in paths:
        forbidden = any(path == p or path.startswith(p + "/") for p in FORBIDDEN_MOUNTS)
        if not MOUNT_PATH_RE.fullmatch(path) or forbidden or ".." in path.split("/"):
            raise refuse(f"a mount at {path[:60]!r}" if path else "a mount without a path")


def validate_component_row(
    row: ComponentRow, *, pinned: str = ""
) -> tuple[Component, ComponentVersion, Size]:
    """Check one component entry of a release spec against the catalog; the single gate for
    images, sizes and replica counts. ``pinned``: the image a release already ran it with."""
    name = str(row.get("name", ""))
    if not SERVICE_NAME_RE.fullmatch(name):
        raise SpecError(f"Invalid component name {name[:40]!r}.", "name")
    component = Component.objects.filter(code=row.get("component")).first()
    if component is None:
        raise SpecError(f"Unknown component {str(row.get('component'))[:40]!r}.", "component")
    version = ComponentVersion.objects.filter(component=component, version=row.get("version")).first()
    if version is None:
        raise SpecError(f"{component.name} has no version {str(row.get('version'))[:20]!r}.", "version")
    # Whatever the catalog says of the version today (candidate after a rebuild, deprecated,
    # end of life), a stack that runs it keeps running it: new stacks and upgrades are refused
    # elsewhere (``offers``). Only a version that never had an image cannot run.
    if not version.digest and not pinned:
        raise SpecError(f"{component.name} {version.version} has no published image.", "version")
    size = component.sizes.filter(code=row.get("size")).first()
    if size is None:
        raise SpecError(f"{component.name} cannot run at size {str(row.get('size'))[:20]!r}.", "size")
    replicas = row.get("replicas")
    limit = settings.STACKPORT_MAX_REPLICAS
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= limit:
        raise SpecError(f"Replicas must be a whole number from 0 to {limit}.", "replicas")
    if component.stateful and replicas > 1:
        raise SpecError(f"{component.name} keeps data and runs as a single replica.", "replicas")
    for key, value in (row.get("env") or {}).items():
        if not ENV_NAME_RE.fullmatch(str(key)) or not isinstance(value, str):
            raise SpecError(f"Invalid setting {str(key)[:40]!r} for {name}.", "env")
        validate_env_value(value)
    return component, version, size


def set_component_rows(environment: Environment, rows: list[ComponentRow]) -> None:
    """Make the StackComponent rows (the desired state the customer edits and sees) match
    ``rows``: a request's target, or the applied release's rows again after a change failed."""

    keep = []
    for row in rows:
        component = Component.objects.get(code=row["component"])
        StackComponent.objects.update_or_create(
            environment=environment,
            name=row["name"],
            defaults={
                "component": component,
                "version": ComponentVersion.objects.get(component=component, version=row["version"]),
                "size": Size.objects.get(code=row["size"]),
                "replicas": row["replicas"],
                "public": bool(row.get("public")),
                "env": row.get("env") or {},
                "position": row.get("position", 0),
            },
        )
        keep.append(row["name"])
    StackComponent.objects.filter(environment=environment).exclude(name__in=keep).delete()


# --- credentials ---------------------------------------------------------------------------------
def ensure_generated_credentials(environment: Environment, rows: list[ComponentRow]) -> None:
    """Every empty ``*_PASSWORD`` setting of a component gets a random value, stored
    encrypted once and kept across releases (a database keeps its password)."""
    existing = set(
        Variable.objects.filter(environment=environment, generated=True).values_list("component", "name")
    )
    for row in rows:
        component = Component.objects.get(code=row["component"])
        wanted = [k for k, v in component.env.items() if k.endswith("_PASSWORD") and not v]
        wanted += [k for k, v in (row.get("env") or {}).items() if v == GENERATE]
        for key in wanted:
            if (row["name"], key) not in existing:
                Variable.objects.create(
                    environment=environment,
                    component=row["name"],
                    name=key,
                    encrypted_value=encrypt(secrets.token_hex(16)),
                    is_secret=True,
                    generated=True,
                )


def variables_fingerprint(environment: Environment) -> str:
    """Names what the customer's variables are now (not their values: a hash), to tell
    whether what runs was deployed with them."""
    digest = hashlib.sha256()
    for row in (
        Variable.objects.filter(environment=environment, generated=False)
        .order_by("component", "name")
        .values_list("component", "name", "value", "encrypted_value")
    ):
        for part in row:
            digest.update(bytes(part) if isinstance(part, (bytes, memoryview)) else str(part).encode())
            digest.update(b"\0")
    return digest.hexdigest()[:32]


def _variables(environment: Environment) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(generated per component, customer per component; "" = every app component)."""
    generated: dict[str, dict[str, str]] = {}
    customer: dict[str, dict[str, str]] = {}
    for var in Variable.objects.filter(environment=environment):
        value = decrypt(var.encrypted_value) if var.is_secret else var.value
        target = generated if var.generated else customer
        target.setdefault(var.component, {})[var.name] = value
    return generated, customer


def _provided(template: str, name: str, values: dict[str, str]) -> str:
    """What a component provides to the others (``postgres://app:{POSTGRES_PASSWORD}@{host}``):
    ``host`` is always its service name, whatever its variables are called; a placeholder
    it has no value for is a clear error, never a crash of the operation."""
    try:
        return template.format_map({**values, "host": name})
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(
            f"The {name} component cannot provide its address: {exc!s} is missing.", "env"
        ) from exc


# --- the spec --------------------------------------------------------------------------------------
def build_spec(environment: Environment, release: Release, *, running: bool | None = None) -> StackSpec:
    rows: list[ComponentRow] = sorted(release.spec.get("components", []), key=lambda r: r.get("position", 0))
    if not rows:
        raise SpecError("The stack has no components.")
    names = [r.get("name") for r in rows]
    if len(set(names)) != len(names):
        raise SpecError("Component names must be unique.", "name")
    images = release.images or {}
    checked = [(row, *validate_component_row(row, pinned=images.get(row["name"], ""))) for row in rows]
    if sum(1 for row, *_ in checked if row.get("public")) > 1:
        raise SpecError("Only one component can receive the public route.", "public")
    generated, customer = _variables(environment)

    own_env: dict[str, dict[str, str]] = {}
    for row, component, _version, _size in checked:
        env = {str(k): str(v) for k, v in component.env.items()}
        url = environment.public_url
        env.update({str(k): str(v).replace(PUBLIC_URL, url) for k, v in (row.get("env") or {}).items()})
        env.update(generated.get(row["name"], {}))
        own_env[row["name"]] = env

    specs = []
    for row, component, version, size in checked:
        env = dict(own_env[row["name"]])
        for other, other_component, _v, _s in checked:
            if other["name"] == row["name"]:
                continue
            for key, template in other_component.provides.items():
                if not env.get(key):
                    env[key] = _provided(str(template), other["name"], own_env[other["name"]])
        if component.kind in APP_KINDS:
            env.update(customer.get("", {}))
        env.update(customer.get(row["name"], {}))
        spec = _component_spec(row, component, version, size, env)
        # A release that ran keeps the bytes it ran (rollback and repair are byte-exact).
        if images.get(row["name"]):
            spec = replace(spec, image=images[row["name"]])
        specs.append(_with_volume_sizes(spec, component, environment))
    return StackSpec(
        key=environment.key,
        number=environment.pk,
        region=environment.project.region.code,
        kernel_line=environment.kernel.line,
        components=tuple(specs),
        content_release=release.content_id or None,
        running=environment.desired_running if running is None else running,
        egress=_egress(environment),
    )


def _egress(environment: Environment) -> EgressPolicy:
    return stack_policy().egress_policy(organization=environment.project.organization)


def _with_volume_sizes(spec: ComponentSpec, component: Component, environment: Environment) -> ComponentSpec:
    """Each volume gets the size the policy (the plan) gives it; None: no limit."""
    if not spec.volumes:
        return spec

    policy, organization = stack_policy(), environment.project.organization
    entries = {str(v.get("name")): v for v in component.volumes if isinstance(v, dict)}
    sized = tuple(
        replace(v, size_gb=policy.volume_size_gb(organization=organization, volume=entries.get(v.name, {})))
        for v in spec.volumes
    )
    return replace(spec, volumes=sized)


def _stack_volumes(row: ComponentRow, component: Component, taken: list[str]) -> list[VolumeSpec]:
    """The stack volumes a component row mounts (``mounts``: the template's
    ``[{"volume": "uploads", "path": "/srv/app/wp-content/uploads"}]``), each shared by every
    component that names it. Names and paths pass the same allowlist as the catalog's."""
    mounts = row.get("mounts") or []
    if not isinstance(mounts, list):
        raise SpecError(f"Invalid volume mounts for {row['name']}.", "mounts")
    own = {str(v.get("name")) for v in component.volumes if isinstance(v, dict)}
    found: list[VolumeSpec] = []
    for mount in mounts:
        name = str(mount.get("volume", "")) if isinstance(mount, dict) else ""
        path = str(mount.get("path", "")) if isinstance(mount, dict) else ""
        forbidden = any(path == p or path.startswith(p + "/") for p in FORBIDDEN_MOUNTS)
        if not VOLUME_NAME_RE.fullmatch(name) or name in own or any(v.name == name for v in found):
            raise SpecError(f"Invalid volume name {name[:40]!r} for {row['name']}.", "mounts")
        if not MOUNT_PATH_RE.fullmatch(path) or forbidden or ".." in path.split("/") or path in taken:
            raise SpecError(f"{row['name']} cannot mount a volume at {path[:60]!r}.", "mounts")
        taken = [*taken, path]
        found.append(VolumeSpec(name, path, shared=True))
    return found


def _component_spec(
    row: ComponentRow, component: Component, version: ComponentVersion, size: Size, env: dict[str, str]
) -> ComponentSpec:
    check_component_allowlist(component)
    content_path = None
    volumes = []
    for volume in component.volumes:
        if volume["name"] == CONTENT_VOLUME and not component.stateful:
            content_path = volume["path"]
        else:
            volumes.append(VolumeSpec(volume["name"], volume["path"]))
    volumes += _stack_volumes(row, component, [v.path for v in volumes] + [content_path or ""])
    ports = tuple(int(p["port"]) for p in component.ports)
    move = version.migration if (version.migration or {}).get("method") == "dump-restore" else {}
    return ComponentSpec(
        name=row["name"],
        image=version.pinned_reference,
        replicas=row["replicas"],
        cpus=float(size.cpus),
        memory_mb=size.memory_mb,
        pids=size.pids,
        user=component.user,
        read_only=component.read_only_root,
        capabilities=tuple(component.capabilities),
        tmpfs=tuple(component.tmpfs),
        ports=ports,
        volumes=tuple(volumes),
        env=tuple(sorted(env.items())),
        health=tuple(component.health.get("command") or ()),
        content_path=content_path,
        public_port=ports[0] if row.get("public") and ports else None,
        stateful=component.stateful,
        data_generation=int(row.get("data_generation", 0)),
        version=version.version,
        data_export=tuple(str(x) for x in move.get("export") or ()),
        data_restore=tuple(str(x) for x in move.get("restore") or ()),
    )
