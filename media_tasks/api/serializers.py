"""Shapes of the media API: the upload's input, and an image with its variants as output."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from media_tasks.models import ImageVariant, UploadedImage


class ImageUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=False)


class VariantSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = ImageVariant
        fields = ["name", "format", "width", "height", "size", "url"]

    def get_url(self, variant: ImageVariant) -> str:
        url = variant.file.url
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


class OriginalSerializer(serializers.Serializer):
    width = serializers.IntegerField(source="original_width")
    height = serializers.IntegerField(source="original_height")
    size = serializers.IntegerField(source="original_size")


class UploadedImageSerializer(serializers.ModelSerializer):
    original = serializers.SerializerMethodField()
    variants = VariantSerializer(many=True, read_only=True)

    class Meta:
        model = UploadedImage
        fields = ["id", "status", "error", "original", "variants"]

    def get_original(self, image: UploadedImage) -> dict[str, Any]:
        return dict(OriginalSerializer(image).data)
