"""Request checks Nudge's site makes before any view runs.

`RejectNulMiddleware`: a NUL character (%00) in the path, the query string or a form body
answers 400. PostgreSQL refuses NUL in any text value, so such a value reaching a query (an
admin list filter `?type=%00`, a search `?q=%00`) raised an error and answered 500. No valid
input contains one; one check here covers every view, Nudge's and the host's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    QueryDict,
)
from rest_framework.views import APIView

logger = logging.getLogger(__name__)

NUL = "\x00"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MULTIPART_CONTENT_TYPE = "multipart/form-data"


def _has_nul(data: QueryDict) -> bool:
    return any(NUL in text for key, values in data.lists() for text in (key, *values))


def nul_found_in(request: HttpRequest, *, multipart: bool = True) -> str | None:
    """Where the request carries a NUL character ("path", "query string", "form data"), or
    None. A multipart body is read only when `multipart` (not for API views: the media
    upload checks its size before the body is parsed, and DRF's fields refuse NUL)."""
    if NUL in request.path:
        return "path"
    if _has_nul(request.GET):
        return "query string"
    form_types = (FORM_CONTENT_TYPE, MULTIPART_CONTENT_TYPE) if multipart else (FORM_CONTENT_TYPE,)
    if request.method == "POST" and request.content_type in form_types and _has_nul(request.POST):
        return "form data"
    return None


class RejectNulMiddleware:
    """400 for a request with a NUL character in its path, query string or url-encoded form:
    JSON (`{"detail": ...}`, as DRF answers) for an API view, plain text for any other."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        view_class = getattr(view_func, "cls", None)
        api_view = isinstance(view_class, type) and issubclass(view_class, APIView)
        where = nul_found_in(request, multipart=not api_view)
        if where is None:
            return None
        message = f"A NUL character (%00) is not allowed in the {where}."
        logger.warning("refused %s %s: NUL in the %s", request.method, request.path, where)
        if api_view:
            return JsonResponse({"detail": message}, status=400)
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
