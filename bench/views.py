from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def noop(request: HttpRequest) -> JsonResponse:
    """The floor for ingest: the same server, middleware and request, and no work."""
    return JsonResponse({"status": "ok"}, status=202)
