"""Request bodies larger than the biggest upload are refused before anything reads them.

Django reads a multipart body whole (to a temporary file above FILE_UPLOAD_MAX_MEMORY_SIZE)
as soon as anything asks for ``request.POST`` - the CSRF check does, before any view - and
gunicorn sets no limit of its own. This middleware comes first and answers 413 when the
declared length is over ``STACKPORT_UPLOAD_MAX_BYTES`` (plus room for the form's other
fields): not one byte of the body is read. A body without a declared length (chunked) is
read as empty by Django's WSGI handler, so it cannot get past either.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

FORM_OVERHEAD = 256 * 1024  # multipart headers, the CSRF token and the form's other fields


def body_limit() -> int:
    return int(settings.STACKPORT_UPLOAD_MAX_BYTES) + FORM_OVERHEAD


class BodyLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length <= body_limit():
            return self.get_response(request)
        limit_mb = settings.STACKPORT_UPLOAD_MAX_BYTES / 2**20
        message = (
            f"The upload is too large: an archive may be at most {limit_mb:.0f} MB. Leave out what "
            "the site does not need (such as .git or node_modules), or deploy from a git repository."
        )
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=413)
        return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
