"""The customer JSON API (Django Ninja): everything the pages do, for scripts and the CLI.

Authentication is by personal API token only (``Authorization: Bearer sp_...``), never by
the session cookie, so no CSRF check is needed and none is skipped for a browser. Tokens
act as their user with the same roles; a read-only token refuses every unsafe method; a
token limited to one organization sees nothing else. Refusals answer
``{"detail": message, "field": field}`` with a 4xx status. Each token has its own rate
limits (``STACKPORT_API_RATE_LIMIT``, and ``STACKPORT_API_WRITE_RATE_LIMIT`` for unsafe
methods), and each user wider ones over all of their tokens together
(``STACKPORT_API_USER_RATE_LIMIT``, ``STACKPORT_API_USER_WRITE_RATE_LIMIT``): over any of
them, 429 with ``Retry-After``. One user's use never slows another user.
"""

from __future__ import annotations

import math
import threading
import time
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI, Swagger
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.renderers import JSONRenderer
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle

from projects.api import check_path_objects
from projects.api import router as projects_router
from projects.models import ApiToken
from projects.services import ServiceError, authenticate_api_token
from stacks.api import catalog_router
from stacks.api import router as stacks_router

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenAuth(HttpBearer):
    """``Authorization: Bearer <secret>``: the token's user becomes ``request.user``."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        found = authenticate_api_token(token.strip())
        if found is None:
            return None
        if found.read_only and request.method not in SAFE_METHODS:
            raise PermissionDenied("This token is read-only.")
        request.user = found.user
        return found


_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@lru_cache(maxsize=16)
def parse_rate(rate: str) -> tuple[int, int] | None:
    """``"600/m"`` -> (600 requests, per 60 s); ``"100/5m"`` per 300 s; ``""`` or ``"off"``: no limit."""
    if rate.strip().lower() in ("", "off"):
        return None
    count, _, per = rate.strip().partition("/")
    unit = per[-1:].lower()
    if not count.isdigit() or int(count) < 1 or unit not in _PERIODS or not (per[:-1] or "1").isdigit():
        raise ImproperlyConfigured(
            f'{rate!r} is not a rate limit: give "N/s", "N/m", "N/h", "N/d" (or "N/5m").'
        )
    return int(count), int(per[:-1] or 1) * _PERIODS[unit]


class TokenRateThrottle(BaseThrottle):
    """Per-token and per-user request limits, as counters in the shared cache: one per fixed
    window, created and incremented atomically (Redis ``INCR``; a cache without an atomic
    increment switches the throttle off, see ``STACKPORT_API_THROTTLE_ENABLED``), so
    concurrent requests never lose a count. The token's counters go first: a token already
    over its own limit costs its user nothing. Unsafe methods count against the stricter
    write limits too. Ninja asks after authentication; a refusal is ``Throttled``."""

    def __init__(self) -> None:
        self._wait = threading.local()  # one instance serves every thread

    def allow_request(self, request: HttpRequest) -> bool:
        self._wait.seconds = None
        if not settings.STACKPORT_API_THROTTLE_ENABLED:
            return True
        for key, rate in _limits(request):
            if (parsed := parse_rate(rate)) is not None:
                wait = _count(key, *parsed)
                if wait is not None:
                    self._wait.seconds = wait
                    return False
        return True

    def wait(self) -> float | None:
        return getattr(self._wait, "seconds", None)


def _limits(request: HttpRequest) -> list[tuple[str, str]]:
    """(counter key, rate) to count this request against, the token's before the user's."""
    auth = getattr(request, "auth", None)
    user = auth.user if isinstance(auth, ApiToken) else getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    write = request.method not in SAFE_METHODS
    limits = []
    if isinstance(auth, ApiToken):
        who = f"token:{auth.prefix}"  # random, unlike the pk (reused by a new database)
        limits.append((f"api-rate:any:{who}", settings.STACKPORT_API_RATE_LIMIT))
        if write:
            limits.append((f"api-rate:write:{who}", settings.STACKPORT_API_WRITE_RATE_LIMIT))
    limits.append((f"api-rate:any:user:{user.pk}", settings.STACKPORT_API_USER_RATE_LIMIT))
    if write:
        limits.append((f"api-rate:write:user:{user.pk}", settings.STACKPORT_API_USER_WRITE_RATE_LIMIT))
    return limits


def _count(key: str, limit: int, period: int) -> float | None:
    """Count one request in the current window; seconds until the next window when over."""
    now = time.time()
    window = f"{key}:{period}:{int(now // period)}"
    cache.add(window, 0, timeout=period + 1)
    try:
        used = cache.incr(window)
    except ValueError:  # expired between add and incr
        cache.set(window, used := 1, timeout=period + 1)
    return period - now % period if used > limit else None


class SafeJSONRenderer(JSONRenderer):
    """JSON with ``<``, ``>`` and ``&`` as unicode escapes (like Django's ``json_script``):
    the same data, and no markup even if a browser were talked into reading it as HTML."""

    def render(self, request: HttpRequest, data: Any, *, response_status: int) -> Any:
        text = super().render(request, data, response_status=response_status)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


api = NinjaAPI(
    title="Stackport API",
    version="1",
    description="Projects, environments and their operations, with the same access rules as "
    "the portal's pages. Authenticate with a personal API token (Account → API tokens): "
    "`Authorization: Bearer sp_...`.",
    urls_namespace="api",
    auth=TokenAuth(),
    throttle=[TokenRateThrottle()],
    renderer=SafeJSONRenderer(),
    # Ninja's own template and its bundled Swagger UI files, served from 'self' (the CSP
    # allows nothing else); needs "ninja" in INSTALLED_APPS.
    docs=Swagger(settings={"persistAuthorization": False}),
    docs_url="/docs",
    openapi_url="/openapi.json",
)
api.add_router("/", projects_router)
api.add_router("/", catalog_router)
api.add_router("/", stacks_router)


def _error(request: HttpRequest, detail: str, status: int, field: str | None = None) -> HttpResponse:
    return api.create_response(request, {"detail": detail, "field": field}, status=status)


@api.exception_handler(ServiceError)
def service_error(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    return _error(request, exc.message, exc.status, exc.field)


@api.exception_handler(Http404)
def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, "Not found.", 404)


@api.exception_handler(PermissionDenied)
def permission_denied(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return _error(request, str(exc) or "You may not do this.", 403)


@api.exception_handler(AuthenticationError)
def unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    response = _error(request, "Send a valid API token: Authorization: Bearer <token>.", 401)
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(Throttled)
def throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
    retry_after = max(1, math.ceil(exc.wait or 1))
    response = _error(request, f"Too many requests with this token: try again in {retry_after} s.", 429)
    response["Retry-After"] = str(retry_after)
    return response


@api.exception_handler(HttpError)
def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:  # a body Ninja could not parse: someone else's object is still 404
        try:
            check_path_objects(request)
        except Http404:
            return not_found(request, Http404())
        return _error(request, "Send the body as JSON (Content-Type: application/json).", 400)
    return _error(request, str(exc), exc.status_code)


def _where(loc: list[Any]) -> str:
    # Ninja's locations start with the source ("body", "query", "path", "file") and the
    # parameter's own name; the customer knows only the field.
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "form", "file", "header", "cookie"}:
        parts = parts[2:] if len(parts) > 2 and parts[0] == "body" else parts[1:]
    return ".".join(parts)


@api.exception_handler(ValidationError)
def invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    try:
        check_path_objects(request)
    except Http404:
        return not_found(request, Http404())
    # Only where and what: pydantic's "input" would echo what was sent (a secret, say).
    errors = [
        {"field": _where(e.get("loc", [])), "message": str(e.get("msg", "invalid"))} for e in exc.errors
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    return api.create_response(
        request,
        {
            "detail": detail or "Invalid request.",
            "field": errors[0]["field"] if errors else None,
            "errors": errors,
        },
        status=422,
    )
