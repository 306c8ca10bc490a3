from __future__ import annotations

import pytest
from django.db import connection

from media_tasks.bench import run_media_bench
from media_tasks.models import UploadedImage


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_media_bench_runs_end_to_end_with_two_images(media_root):
    if connection.vendor != "postgresql":
        pytest.skip("the qcluster subprocess shares the test database: PostgreSQL only")

    result = run_media_bench(images=2, processes=1, width=1600, height=1200, distinct=2)

    assert (result.images, result.processes, result.failed) == (2, 1, 0)
    assert result.raw_seconds > 0
    assert result.cluster_seconds > 0
    assert result.variant_bytes < result.original_bytes
    assert result.ratio > 0
    assert set(result.as_dict()) >= {"ratio", "raw_images_per_second", "cluster_images_per_second"}
    assert UploadedImage.objects.count() == 0  # cleaned up
