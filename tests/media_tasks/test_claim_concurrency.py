"""Two workers racing for one image on real PostgreSQL: exactly one claim wins."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from media_tasks import services
from media_tasks.models import UploadedImage
from tests.factories import UploadedImageFactory


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_on_one_image_have_one_winner():
    if connection.vendor != "postgresql":
        pytest.skip("needs concurrent connections: PostgreSQL")
    image = UploadedImageFactory.create()
    contenders = 8
    barrier = threading.Barrier(contenders)
    tokens: list[object] = []

    def worker() -> None:
        try:
            barrier.wait()
            tokens.append(services.image_claim(image_id=image.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [token for token in tokens if token is not None]
    assert len(tokens) == contenders
    assert len(winners) == 1
    stored = UploadedImage.objects.get()
    assert (stored.status, stored.claim_token, stored.attempts) == ("processing", winners[0], 1)
