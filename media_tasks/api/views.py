"""Media endpoints: upload an image (validated, stored, compression queued), read its state."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from media_tasks import selectors, services
from media_tasks.api.serializers import ImageUploadSerializer, UploadedImageSerializer
from media_tasks.models import ImageVariant
from media_tasks.validation import InvalidImage
from nudge.api import AuthenticatedAPIView, error_responses

# Room for the multipart envelope around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


class CanUploadImages(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.has_perm("media_tasks.add_uploadedimage"))


class CanViewImages(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.has_perm("media_tasks.view_uploadedimage"))


class ImageUploadView(AuthenticatedAPIView):
    # Named here, not left to DEFAULT_PERMISSION_CLASSES: DRF's default is AllowAny.
    permission_classes = [IsAuthenticated, CanUploadImages]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": ImageUploadSerializer},
        responses={
            201: UploadedImageSerializer,
            400: OpenApiResponse(description="Not an image, damaged, too large, or unsupported."),
            403: OpenApiResponse(description="No media_tasks.add_uploadedimage permission."),
            **error_responses(401, 415, 429, 503),
        },
        summary="Upload an image; it is compressed in the background on the media cluster.",
    )
    def post(self, request: Request) -> Response:
        length = request.META.get("CONTENT_LENGTH") or "0"
        limit = settings.NUDGE_MEDIA_MAX_UPLOAD_BYTES
        if length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
            # Refused before the body is read into a temporary file.
            return Response(
                {"file": [f"File is over the limit of {limit} bytes."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        serializer = ImageUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            image = services.image_upload(
                file=serializer.validated_data["file"], uploaded_by=request.user
            )
        except InvalidImage as exc:
            return Response({"file": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(
            UploadedImageSerializer(image, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )


class ImageDetailView(AuthenticatedAPIView):
    permission_classes = [IsAuthenticated, CanViewImages]

    @extend_schema(
        responses={
            200: UploadedImageSerializer,
            403: OpenApiResponse(description="No media_tasks.view_uploadedimage permission."),
            404: OpenApiResponse(description="No such image, or another user's image."),
            **error_responses(401, 429, 503),
        },
        summary="An image and its variants (a user sees the images they uploaded).",
    )
    def get(self, request: Request, pk: int) -> Response:
        image = get_object_or_404(
            selectors.images_visible_to(user=request.user).prefetch_related(
                Prefetch("variants", queryset=ImageVariant.objects.order_by("-width", "name"))
            ),
            pk=pk,
        )
        return Response(UploadedImageSerializer(image, context={"request": request}).data)
