"""Media endpoints: upload an image (validated, stored, compression queued), read its state."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from media_tasks import services
from media_tasks.api.serializers import ImageUploadSerializer, UploadedImageSerializer
from media_tasks.models import ImageVariant, UploadedImage
from media_tasks.validation import InvalidImage

# Room for the multipart envelope around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


class ImageUploadView(APIView):
    # Named here, not left to DEFAULT_PERMISSION_CLASSES: DRF's default is AllowAny.
    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": ImageUploadSerializer},
        responses={
            201: UploadedImageSerializer,
            400: OpenApiResponse(description="Not an image, damaged, too large, or unsupported."),
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


class ImageDetailView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: UploadedImageSerializer}, summary="An image and its variants.")
    def get(self, request: Request, pk: int) -> Response:
        image = get_object_or_404(
            UploadedImage.objects.prefetch_related(
                Prefetch("variants", queryset=ImageVariant.objects.order_by("-width", "name"))
            ),
            pk=pk,
        )
        return Response(UploadedImageSerializer(image, context={"request": request}).data)
