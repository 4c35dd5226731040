"""Stackport settings: one module, read from the environment.

Every value comes from an environment variable through a strict helper; a bad value stops
the process at start with a message naming the variable. ``DJANGO_ENV`` selects the
defaults: ``development`` (embedded SQLite, filesystem broker, console e-mail), ``test``
and ``production`` (no embedded defaults for secrets; refuses weak keys).
See docs/configuration.md for the full list.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import environ
import structlog
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# An optional .env file next to manage.py, for operators who prefer one.
if (BASE_DIR / ".env").is_file():
    env.read_env(str(BASE_DIR / ".env"))

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV must be one of development, test, production; got {DJANGO_ENV!r}."
    )
PRODUCTION = DJANGO_ENV == "production"
VAR_DIR = Path(env.str("STACKPORT_VAR_DIR", default=str(BASE_DIR / "var")))

# --- keys ---------------------------------------------------------------------------------
# Development keys are public (they are in this file): production refuses them.
_DEV_SECRET_KEY = "stackport-development-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
_DEV_ENCRYPTION_KEY = "c3RhY2twb3J0LWRldmVsb3BtZW50LW9ubHkta2V5ISE="


def _require_strong_secret_key(value: str) -> str:
    if not value:
        raise ImproperlyConfigured("SECRET_KEY must be set in production.")
    if (
        value == _DEV_SECRET_KEY
        or value.startswith("django-insecure")
        or len(value) < 50
        or len(set(value)) < 5
    ):
        raise ImproperlyConfigured(
            "SECRET_KEY is too weak for production: use at least 50 random characters "
            "(for example: python -c 'import secrets; print(secrets.token_urlsafe(64))')."
        )
    return value


def _parse_encryption_keys(raw: str, secret_key: str) -> list[str]:
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ImproperlyConfigured("STACKPORT_ENCRYPTION_KEYS must be set in production.")
    for key in keys:
        try:
            decoded = base64.urlsafe_b64decode(key.encode())
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 32:
            raise ImproperlyConfigured(
                "STACKPORT_ENCRYPTION_KEYS holds a value that is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')."
            )
        if PRODUCTION and (key == _DEV_ENCRYPTION_KEY or key == secret_key):
            raise ImproperlyConfigured(
                "STACKPORT_ENCRYPTION_KEYS must not be the development key or the SECRET_KEY."
            )
    return keys


if PRODUCTION:
    SECRET_KEY = _require_strong_secret_key(env.str("SECRET_KEY", default=""))
    ENCRYPTION_KEYS = _parse_encryption_keys(env.str("STACKPORT_ENCRYPTION_KEYS", default=""), SECRET_KEY)
else:
    SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY)
    ENCRYPTION_KEYS = _parse_encryption_keys(
        env.str("STACKPORT_ENCRYPTION_KEYS", default=_DEV_ENCRYPTION_KEY), SECRET_KEY
    )

DEBUG = env.bool("DJANGO_DEBUG", default=DJANGO_ENV == "development")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off in production.")

ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the portal's host names in production.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Absolute URL of the portal, for links in e-mails sent by the worker (no request there).
STACKPORT_BASE_URL = env.url("STACKPORT_BASE_URL", default="http://127.0.0.1:8000").geturl().rstrip("/")
# The portal's name in e-mails and pages ("Hello from Stackport", "[Stackport] ...").
STACKPORT_SITE_NAME = env.str("STACKPORT_SITE_NAME", default="Stackport")

# --- applications --------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "django_htmx",
    "template_partials",
    "django_prometheus",
    "django_structlog",
    "csp",
    "ninja",
    "portal",
    "projects",
    "stacks",
    "billing",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "portal.middleware.BodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
    "portal.support_views.ViewAsMiddleware",
    "portal.staff.StaffMFAMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
AUTH_USER_MODEL = "projects.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "projects.context_processors.organizations",
                "projects.context_processors.site",
            ],
        },
    },
]

# --- data ----------------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'stackport.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process and the worker share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A real, shared cache: login throttling counts failures in it across processes.
CACHES = {
    "default": env.cache_url(
        "CACHE_URL",
        default=f"filecache://{VAR_DIR / 'cache'}",
        backend=None,
    )
}
if DJANGO_ENV == "test" and os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test workers share one Redis database but each has a database of its own, so
    # their row ids overlap: keys (per-environment figures, the reconcile lock) get the
    # worker's name in front. Processes a test starts (Celery workers) inherit it.
    CACHES["default"]["KEY_PREFIX"] = os.environ["PYTEST_XDIST_WORKER"]
if CACHES["default"]["BACKEND"].endswith("LocMemCache") and not DEBUG:
    raise ImproperlyConfigured(
        "CACHE_URL points at a per-process memory cache; login throttling needs a shared one "
        "(redis://... or filecache://...)."
    )

# --- accounts (django-allauth) --------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_ADAPTER = "projects.adapters.AccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
# Messages ("Successfully signed in as ...") name the address people sign in with, never
# the internal user name (a generated one for demos).
ACCOUNT_USER_DISPLAY = "projects.adapters.user_display"
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
# No account enumeration: sign-up with a taken address answers like any other (the owner
# gets a mail), login and password reset answer alike for known and unknown addresses.
ACCOUNT_PREVENT_ENUMERATION = env.bool("ACCOUNT_PREVENT_ENUMERATION", default=True)
ACCOUNT_RATE_LIMITS = {
    "login_failed": env.str("LOGIN_FAILED_RATE_LIMIT", default="10/m/ip,5/5m/key"),
    "signup": "20/m/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
}
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Stackport] "
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "portal:dashboard"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"

MFA_SUPPORTED_TYPES = ["totp", "recovery_codes", "webauthn"]
# Staff need an authenticator app or a security key before the admin, the support pages and
# "view as customer" (portal.staff); view-as, suspend, resume, drain, move and secret changes
# on the pages ask for a re-authentication older than this many seconds (projects.sensitive).
STACKPORT_STAFF_MFA_REQUIRED = env.bool("STACKPORT_STAFF_MFA_REQUIRED", default=True)
ACCOUNT_REAUTHENTICATION_TIMEOUT = env.int("ACCOUNT_REAUTHENTICATION_TIMEOUT", default=300)
MFA_TOTP_ISSUER = env.str("MFA_TOTP_ISSUER", default="Stackport")
MFA_PASSKEY_LOGIN_ENABLED = False
# WebAuthn needs a secure origin; plain http on loopback is allowed outside production.
MFA_WEBAUTHN_ALLOW_INSECURE_ORIGIN = not PRODUCTION
USERSESSIONS_TRACK_ACTIVITY = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- tenancy -------------------------------------------------------------------------------
INVITATION_TTL_DAYS = env.int("INVITATION_TTL_DAYS", default=7)


def _rate_limit(name: str, default: str) -> str:
    value = env.str(name, default=default).strip()
    if not re.fullmatch(r"off|[1-9]\d*/\d*[smhd]", value):
        raise ImproperlyConfigured(f'{name} must look like "600/m", "100/5m" or "off", not {value!r}.')
    return value


# The JSON API's rate limits per token ("N/s|m|h|d", "N/5m"; "off"): every request, and
# unsafe methods (stricter). Over them: 429 with Retry-After (portal.api).
STACKPORT_API_RATE_LIMIT = _rate_limit("STACKPORT_API_RATE_LIMIT", "600/m")
STACKPORT_API_WRITE_RATE_LIMIT = _rate_limit("STACKPORT_API_WRITE_RATE_LIMIT", "120/m")
# The same per user, across all of the user's tokens (more tokens never mean more requests).
STACKPORT_API_USER_RATE_LIMIT = _rate_limit("STACKPORT_API_USER_RATE_LIMIT", "1200/m")
STACKPORT_API_USER_WRITE_RATE_LIMIT = _rate_limit("STACKPORT_API_USER_WRITE_RATE_LIMIT", "240/m")
# The counters need an atomic increment (Redis INCR, memcached incr; the memory cache holds a
# lock); the file and database caches read then write, so parallel requests would slip past.
# On those: refused in production, switched off with a warning elsewhere (portal.apps).
_ATOMIC_INCR_CACHES = {
    "django.core.cache.backends.redis.RedisCache",
    "django_redis.cache.RedisCache",
    "django.core.cache.backends.memcached.PyMemcacheCache",
    "django.core.cache.backends.memcached.PyLibMCCache",
    "django.core.cache.backends.locmem.LocMemCache",
}
STACKPORT_API_THROTTLE_ENABLED = CACHES["default"]["BACKEND"] in _ATOMIC_INCR_CACHES
_api_limits = (
    STACKPORT_API_RATE_LIMIT,
    STACKPORT_API_WRITE_RATE_LIMIT,
    STACKPORT_API_USER_RATE_LIMIT,
    STACKPORT_API_USER_WRITE_RATE_LIMIT,
)
if PRODUCTION and not STACKPORT_API_THROTTLE_ENABLED and any(rate != "off" for rate in _api_limits):
    raise ImproperlyConfigured(
        f"The API rate limits need a cache with an atomic increment (redis:// or memcached), not "
        f"{CACHES['default']['BACKEND']}; or set every STACKPORT_API_*RATE_LIMIT to off."
    )
# Client address for the audit log: how many reverse proxies in front of the portal.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
# One notion of the client's address everywhere: allauth's login and sign-up rate limits
# count per real client behind the proxies too (the audit log and /metrics use the same).
ALLAUTH_TRUSTED_PROXY_COUNT = TRUSTED_PROXY_COUNT

# --- e-mail --------------------------------------------------------------------------------
_email = env.email_url("EMAIL_URL", default="smtp://localhost:25" if PRODUCTION else "consolemail://")
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
for _key in (
    "EMAIL_HOST",
    "EMAIL_PORT",
    "EMAIL_HOST_USER",
    "EMAIL_HOST_PASSWORD",
    "EMAIL_USE_TLS",
    "EMAIL_USE_SSL",
    "EMAIL_FILE_PATH",
):
    if _key in _email:
        globals()[_key] = _email[_key]
if "EMAIL_FILE_PATH" in _email and not str(_email["EMAIL_FILE_PATH"]).startswith("/"):
    # django-environ drops the leading slash of filemail:///abs/path; the path is absolute.
    EMAIL_FILE_PATH = "/" + str(_email["EMAIL_FILE_PATH"])
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Stackport <noreply@stackport.localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- catalog images ------------------------------------------------------------------------
# Where curated images are built (a Docker engine) and published (a registry, API v2).
STACKPORT_BUILD_DOCKER_URL = env.str("STACKPORT_BUILD_DOCKER_URL", default="unix:///var/run/docker.sock")
STACKPORT_REGISTRY = env.str("STACKPORT_REGISTRY", default="127.0.0.1:5000")
STACKPORT_IMAGE_NAMESPACE = env.str("STACKPORT_IMAGE_NAMESPACE", default="stackport")
# Where Docker hosts pull those images from (docs/install.md, "The image registry"): a TLS
# address of the same registry with credentials, e.g. "10.199.0.1:5443". Empty: the hosts
# pull STACKPORT_REGISTRY's references as they are (each must reach that address).
STACKPORT_REGISTRY_PULL_URL = env.str("STACKPORT_REGISTRY_PULL_URL", default="")
STACKPORT_REGISTRY_USERNAME = env.str("STACKPORT_REGISTRY_USERNAME", default="")
STACKPORT_REGISTRY_PASSWORD = env.str("STACKPORT_REGISTRY_PASSWORD", default="")

# --- running stacks -------------------------------------------------------------------------
# Backends by region backend key (dotted paths, resolved lazily by stacks.backends.get_backend).
STACKPORT_BACKENDS = {
    "docker": env.str("STACKPORT_DOCKER_BACKEND", default="stacks.backends.docker.DockerBackend"),
}
# The edge router (stacks.runtime.edges): the dotted path of the function that makes its
# client. HAProxy ("stacks.runtime.edges.haproxy", the default: run by scripts/haproxy.sh in
# STACKPORT_HAPROXY_DIR, on this machine) or Caddy ("stacks.runtime.edges.caddy", its admin
# API at STACKPORT_EDGE_ADMIN_URL). Then its listen address and the apps domain under which
# every environment gets a default host name (env-<id>.<domain>).
STACKPORT_EDGE_ROUTER = env.str("STACKPORT_EDGE_ROUTER", default="stacks.runtime.edges.haproxy")
STACKPORT_HAPROXY_DIR = env.str("STACKPORT_HAPROXY_DIR", default="/var/lib/stackport/haproxy")
STACKPORT_EDGE_ADMIN_URL = env.str("STACKPORT_EDGE_ADMIN_URL", default="http://127.0.0.1:2019")
STACKPORT_EDGE_LISTEN = env.str("STACKPORT_EDGE_LISTEN", default="127.0.0.1:8080")
STACKPORT_APPS_DOMAIN = env.str("STACKPORT_APPS_DOMAIN", default="apps.localhost")
# Custom domains (docs/domains.md): proof of control by a DNS TXT record, checked through these
# resolvers ("ip" or "ip:port", comma-separated; empty: the system's), on by default. Off only
# for a trusted single-tenant install. Names under these domains (and the apps domain and the
# portal's own host) cannot be claimed by customers.
STACKPORT_DOMAIN_VERIFICATION = env.bool("STACKPORT_DOMAIN_VERIFICATION", default=True)
STACKPORT_DNS_RESOLVERS = env.list("STACKPORT_DNS_RESOLVERS", default=[])
STACKPORT_DNS_TIMEOUT_SECONDS = env.float("STACKPORT_DNS_TIMEOUT_SECONDS", default=5.0)
STACKPORT_RESERVED_DOMAINS = env.list("STACKPORT_RESERVED_DOMAINS", default=[])
# The port customers reach the edge on (in front of it a load balancer may listen on 80/443).
STACKPORT_EDGE_PUBLIC_PORT = env.int(
    "STACKPORT_EDGE_PUBLIC_PORT", default=int(STACKPORT_EDGE_LISTEN.rsplit(":", 1)[1])
)
# HTTPS on the edge (docs/domains.md): Caddy gets and renews a certificate for every routed
# name from this ACME directory (production: Let's Encrypt's; tests and `make run`: Pebble on
# loopback). Empty: the edge serves plain HTTP only. A PEM file of roots to trust for the
# directory's own TLS (a test CA's), the ACME account's e-mail, the edge's HTTPS listen address
# and the HTTPS port customers reach (in redirects; 443 behind a load balancer).
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
STACKPORT_ACME_DIRECTORY = env.str(
    "STACKPORT_ACME_DIRECTORY", default=LETS_ENCRYPT_DIRECTORY if PRODUCTION else ""
)
STACKPORT_ACME_CA_ROOT = env.str("STACKPORT_ACME_CA_ROOT", default="")
STACKPORT_ACME_EMAIL = env.str("STACKPORT_ACME_EMAIL", default="")
# Plain HTTP to a name with a certificate is redirected to HTTPS. Names under ``localhost``
# can only get the edge's own local CA, which no browser trusts: `make run` turns their
# redirect off so demo links open without a warning (HTTPS still answers for them).
STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES = env.bool("STACKPORT_EDGE_REDIRECT_LOCALHOST_NAMES", default=True)
STACKPORT_EDGE_HTTPS_LISTEN = env.str("STACKPORT_EDGE_HTTPS_LISTEN", default="127.0.0.1:8443")
if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]*):[0-9]{1,5}", STACKPORT_EDGE_HTTPS_LISTEN):
    raise ImproperlyConfigured("STACKPORT_EDGE_HTTPS_LISTEN: host:port, e.g. 0.0.0.0:443.")
STACKPORT_EDGE_HTTPS_PUBLIC_PORT = env.int(
    "STACKPORT_EDGE_HTTPS_PUBLIC_PORT", default=int(STACKPORT_EDGE_HTTPS_LISTEN.rsplit(":", 1)[1])
)
# The edge's public IP addresses: a name that resolves elsewhere gets "DNS does not point here"
# when its certificate does not come. Caddy's (JSON) log, read for the CA's reason otherwise.
STACKPORT_EDGE_PUBLIC_ADDRESSES = env.list("STACKPORT_EDGE_PUBLIC_ADDRESSES", default=[])
STACKPORT_EDGE_LOG = env.str("STACKPORT_EDGE_LOG", default="/var/log/stackport-caddy.log")
# The HTTP proof of control fetches http://<name>:<port>/.well-known/stackport-challenge/<token>
# from public addresses only; loopback is allowed for tests (never in production).
STACKPORT_DOMAIN_HTTP_PORT = env.int("STACKPORT_DOMAIN_HTTP_PORT", default=80)
STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK = env.bool("STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK", default=False)
if PRODUCTION and STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK:
    raise ImproperlyConfigured("STACKPORT_DOMAIN_HTTP_ALLOW_LOOPBACK is for tests: off in production.")
# Docker hosts created on first use when the inventory of a Docker region is empty (make run).
STACKPORT_DEFAULT_DOCKER_URL = env.str("STACKPORT_DEFAULT_DOCKER_URL", default="unix:///var/run/docker.sock")
# Customer content limits.
STACKPORT_UPLOAD_MAX_BYTES = env.int("STACKPORT_UPLOAD_MAX_BYTES", default=50 * 1024 * 1024)
STACKPORT_CONTENT_MAX_BYTES = env.int("STACKPORT_CONTENT_MAX_BYTES", default=200 * 1024 * 1024)
STACKPORT_CONTENT_MAX_FILES = env.int("STACKPORT_CONTENT_MAX_FILES", default=20_000)
# A git fetch: bytes git may write (pack and checkout) and seconds it may take.
STACKPORT_GIT_MAX_DOWNLOAD_BYTES = env.int(
    "STACKPORT_GIT_MAX_DOWNLOAD_BYTES", default=STACKPORT_CONTENT_MAX_BYTES
)
STACKPORT_GIT_TIMEOUT_SECONDS = env.float("STACKPORT_GIT_TIMEOUT_SECONDS", default=300.0)
# Stored content is pruned daily: each live environment keeps that of its current release and
# of the releases that ran among its last N (rollback targets); older releases lose theirs.
STACKPORT_CONTENT_KEEP_RELEASES = env.int("STACKPORT_CONTENT_KEEP_RELEASES", default=10)
# An uploaded file goes to a temporary file above this size; a request body larger than
# STACKPORT_UPLOAD_MAX_BYTES (plus the form's fields) is refused unread (portal.middleware).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2**20
STACKPORT_MAX_REPLICAS = 10
# Every object on the hosts is named <prefix>-<environment id>-...: installations (and test
# runs) sharing an engine keep apart, and the reconciler touches only its own prefix.
STACKPORT_STACK_PREFIX = env.str(
    "STACKPORT_STACK_PREFIX", default=f"t{os.getpid()}" if DJANGO_ENV == "test" else "env"
)
if not re.fullmatch(r"[a-z][a-z0-9]{0,15}", STACKPORT_STACK_PREFIX):
    raise ImproperlyConfigured("STACKPORT_STACK_PREFIX: 1-16 lower-case letters and digits, a letter first.")
# git sources are fetched from public addresses only; these "host" or "host:port" entries are
# the operator's own servers that may be private (an internal git mirror). Never the worker's disk.
STACKPORT_GIT_TRUSTED_HOSTS = [h.lower() for h in env.list("STACKPORT_GIT_TRUSTED_HOSTS", default=[])]
# Dependency builds (docs/builds.md): a container of the runtime image on a network of its own
# installs requirements.txt / package-lock.json / composer.lock. Registry mirrors ("" = the
# public registry), an optional CA bundle file for TLS to them (a proxy's CA), and limits.
STACKPORT_PIP_INDEX_URL = env.str("STACKPORT_PIP_INDEX_URL", default="")
STACKPORT_NPM_REGISTRY = env.str("STACKPORT_NPM_REGISTRY", default="")
STACKPORT_COMPOSER_REPO_URL = env.str("STACKPORT_COMPOSER_REPO_URL", default="")
STACKPORT_BUILD_CA_BUNDLE = env.str("STACKPORT_BUILD_CA_BUNDLE", default="")
STACKPORT_BUILD_NETWORK = env.str("STACKPORT_BUILD_NETWORK", default="stackport-build")
# Hosts a build may reach through its egress proxy besides its registry's ("name" for port
# 443 or "name:port": a mirror's file host, say).
STACKPORT_BUILD_HOSTS = env.list("STACKPORT_BUILD_HOSTS", default=[])
STACKPORT_BUILD_TIMEOUT_SECONDS = env.float("STACKPORT_BUILD_TIMEOUT_SECONDS", default=900.0)
STACKPORT_BUILD_MEMORY_MB = env.int("STACKPORT_BUILD_MEMORY_MB", default=1024)
STACKPORT_BUILD_CPUS = env.float("STACKPORT_BUILD_CPUS", default=1.0)
# The largest artifact a build may produce (bytes copied out of the build container).
STACKPORT_BUILD_MAX_BYTES = env.int("STACKPORT_BUILD_MAX_BYTES", default=2**30)
# An operation that fails for a transient reason (an engine or the router not answering) is
# tried again with backoff (5 s, 10 s, 20 s, ...), at most this many attempts in all.
STACKPORT_OPERATION_MAX_ATTEMPTS = env.int("STACKPORT_OPERATION_MAX_ATTEMPTS", default=5)
# Operations an organization may have queued or running at once (customers' requests; the
# reconciler's repairs and support's actions are not counted against it).
STACKPORT_ORG_MAX_ACTIVE_OPERATIONS = env.int("STACKPORT_ORG_MAX_ACTIVE_OPERATIONS", default=20)
# A running operation whose worker sent no heartbeat for this long is run again.
STACKPORT_OPERATION_STALE_SECONDS = env.int("STACKPORT_OPERATION_STALE_SECONDS", default=60)
# Host health (docs/backends.md, "Host health"): every host that is not draining is probed
# this often (an engine ping and its info, each within the timeout); one miss makes it
# suspect, this many in a row make it down (its stacks move, docs/backends.md).
STACKPORT_HOST_PROBE_SECONDS = env.int("STACKPORT_HOST_PROBE_SECONDS", default=15)
STACKPORT_HOST_PROBE_TIMEOUT = env.float("STACKPORT_HOST_PROBE_TIMEOUT", default=5.0)
STACKPORT_HOST_DOWN_AFTER_MISSES = env.int("STACKPORT_HOST_DOWN_AFTER_MISSES", default=3)
# The reconciler's repair of an environment that failed (or whose automatic repair failed)
# is tried again after this long, doubling with each failure (at most 16 times as long).
STACKPORT_RECONCILE_RETRY_SECONDS = env.int("STACKPORT_RECONCILE_RETRY_SECONDS", default=600)
# A stateful stack whose host has been down this long is restored from its latest backup onto
# another host (data written after that backup is lost); 0: never, it waits for its host.
STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS = env.int("STACKPORT_RESTORE_AFTER_HOST_DOWN_SECONDS", default=600)
# Sales demos (projects/demos.py): removed this long after they start, the salesperson warned before.
STACKPORT_DEMO_LIFETIME_HOURS = env.int("STACKPORT_DEMO_LIFETIME_HOURS", default=4)
STACKPORT_DEMO_WARN_MINUTES = env.int("STACKPORT_DEMO_WARN_MINUTES", default=30)

# --- billing (docs/billing.md) --------------------------------------------------------------
STACKPORT_CURRENCY = env.str("STACKPORT_CURRENCY", default="EUR")
# What a stack may use and what it costs (stacks.runtime.policy): billing's plans, quotas and prices.
STACKPORT_STACK_POLICY = env.str("STACKPORT_STACK_POLICY", default="billing.policy.BillingPolicy")
STACKPORT_PAYMENT_BACKEND = env.str(
    "STACKPORT_PAYMENT_BACKEND", default="billing.payments.PayByInvoiceBackend"
)
# Bank details printed on invoices by the "pay by invoice" backend.
STACKPORT_PAYMENT_INSTRUCTIONS = env.str(
    "STACKPORT_PAYMENT_INSTRUCTIONS",
    default="Please transfer the total to our bank account, quoting the invoice number.",
)
STACKPORT_INVOICE_DUE_DAYS = env.int("STACKPORT_INVOICE_DUE_DAYS", default=14)
# Who issues the invoices (name and address lines, "|" separated), printed at their top.
STACKPORT_INVOICE_ISSUER = env.str("STACKPORT_INVOICE_ISSUER", default="Stackport Hosting")
# Usage is metered in intervals of this many minutes (a divisor of 1440).
STACKPORT_METERING_INTERVAL_MINUTES = env.int("STACKPORT_METERING_INTERVAL_MINUTES", default=60)
if STACKPORT_METERING_INTERVAL_MINUTES <= 0 or 1440 % STACKPORT_METERING_INTERVAL_MINUTES:
    raise ImproperlyConfigured("STACKPORT_METERING_INTERVAL_MINUTES must divide a day (e.g. 15, 30, 60).")
# Missed intervals older than this are not metered any more when the task runs late.
STACKPORT_METERING_CATCHUP_HOURS = env.int("STACKPORT_METERING_CATCHUP_HOURS", default=48)
# The catalog gives volumes no size: each volume of a stateful component counts as this many GB.
STACKPORT_VOLUME_GB = env.int("STACKPORT_VOLUME_GB", default=1)
# Disk limits (docs/backends.md): a sized volume is an ext4 image in this folder of its
# engine's host (one subfolder per engine), made and attached by a helper container of the
# volume tools image (needs losetup, mkfs.ext4 and debugfs; privileged, our own commands only).
STACKPORT_VOLUME_IMAGE_DIR = env.str("STACKPORT_VOLUME_IMAGE_DIR", default="/var/lib/stackport/volumes")
STACKPORT_VOLUME_TOOLS_IMAGE = env.str("STACKPORT_VOLUME_TOOLS_IMAGE", default="stackport/debian:bookworm")
# The portal's CA for Docker engines on tcp:// (mutual TLS, stacks/runtime/engine_ca.py): its
# key, the engines' CA certificate and the portal's client certificate (made on first use).
STACKPORT_ENGINE_CA_DIR = env.str("STACKPORT_ENGINE_CA_DIR", default=str(VAR_DIR / "engine-ca"))
# A volume fuller than this share of its size is shown with a warning.
STACKPORT_VOLUME_WARN_RATIO = env.float("STACKPORT_VOLUME_WARN_RATIO", default=0.8)

# --- backups (docs/backups.md) ----------------------------------------------------------------
# restic repository base: "s3:http(s)://host:port/bucket[/prefix]" on an S3-compatible store;
# empty: a repository on local disk under STACKPORT_VAR_DIR/backups. One repository per
# organization below it (org-<id>), encrypted with the organization's own generated password.
STACKPORT_BACKUP_REPOSITORY = env.str("STACKPORT_BACKUP_REPOSITORY", default="")
STACKPORT_BACKUP_S3_ACCESS_KEY = env.str("STACKPORT_BACKUP_S3_ACCESS_KEY", default="")
STACKPORT_BACKUP_S3_SECRET_KEY = env.str("STACKPORT_BACKUP_S3_SECRET_KEY", default="")
STACKPORT_RESTIC = env.str("STACKPORT_RESTIC", default="restic")
STACKPORT_BACKUP_TIMEOUT = env.int("STACKPORT_BACKUP_TIMEOUT", default=6 * 3600)
STACKPORT_BACKUP_MAX_ATTEMPTS = env.int("STACKPORT_BACKUP_MAX_ATTEMPTS", default=3)
STACKPORT_BACKUP_RETRY_SECONDS = env.int("STACKPORT_BACKUP_RETRY_SECONDS", default=60)

# --- background work (Celery) ---------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "heartbeat": {"task": "portal.heartbeat_task", "schedule": 60.0},
    "reconcile": {"task": "stacks.reconcile_task", "schedule": 30.0},
    "backups": {"task": "stacks.backup_schedule_task", "schedule": 300.0},
    "probe-hosts": {"task": "stacks.probe_hosts_task", "schedule": float(STACKPORT_HOST_PROBE_SECONDS)},
    "samples": {"task": "stacks.record_samples_task", "schedule": 60.0},
    "check-domains": {"task": "stacks.check_domains_task", "schedule": 60.0},
    "check-certificates": {"task": "stacks.check_certificates_task", "schedule": 60.0},
    "volumes": {"task": "stacks.measure_volumes_task", "schedule": 300.0},
    "prune-images": {"task": "stacks.prune_images_task", "schedule": 6 * 3600.0},
    "prune-content": {"task": "stacks.prune_content_task", "schedule": 24 * 3600.0},
    "warn-expiring-demos": {"task": "portal.warn_expiring_demos_task", "schedule": 300.0},
    "expire-demos": {"task": "portal.expire_demos_task", "schedule": 60.0},
    "metering": {"task": "billing.record_usage_task", "schedule": 300.0},
    "monthly-invoices": {"task": "billing.generate_invoices_task", "schedule": 3600.0},
}

# --- static files --------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- web security --------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}


# --- metrics -------------------------------------------------------------------------------
def _networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(v, strict=False) for v in values]
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from exc


METRICS_ALLOWED_NETWORKS = _networks(
    env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.1/32", "::1/128"])
)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- logging (structlog for web and worker) -------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="json" if PRODUCTION else "console")
if LOG_FORMAT not in {"json", "console"}:
    raise ImproperlyConfigured("LOG_FORMAT must be json or console.")

_shared_processors: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer()
                if LOG_FORMAT == "json"
                else structlog.dev.ConsoleRenderer(colors=False),
            ],
            "foreign_pre_chain": _shared_processors,
        },
    },
    "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["default"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.server": {"level": "WARNING"},
    },
}
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,
        *_shared_processors,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)
DJANGO_STRUCTLOG_CELERY_ENABLED = True

# --- i18n ----------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
