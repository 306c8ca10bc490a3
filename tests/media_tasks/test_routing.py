"""Compression runs on the media cluster's queue only; a messaging worker never takes it."""

from __future__ import annotations

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django_q.models import OrmQ, Task
from django_q.signing import SignedPackage

from media_tasks.bench import running_qcluster
from media_tasks.models import UploadedImage
from media_tasks.samples import photo_jpeg
from media_tasks.services import COMPRESS_TASK


def upload(client, data: bytes):
    return client.post(
        "/api/media/", {"file": SimpleUploadedFile("p.jpg", data)}, format="multipart"
    )


@pytest.mark.django_db
def test_upload_queues_compression_on_the_media_queue_after_commit(
    api_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(api_client, photo_jpeg(300, 200))
        assert OrmQ.objects.count() == 0  # nothing is queued before the row is committed

    for callback in callbacks:
        callback()

    image_id = response.json()["id"]
    queued = OrmQ.objects.get()
    task = SignedPackage.loads(queued.payload)
    assert queued.key == "media"
    assert (task["func"], task["args"], task["cluster"]) == (COMPRESS_TASK, (image_id,), "media")


def wait_for(predicate, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_media_cluster_compresses_an_upload_and_messaging_cluster_does_not(api_client, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the qcluster subprocesses share the test database: PostgreSQL only")
    log = tmp_path / "qcluster.log"
    with running_qcluster(None, workers=2, log=log):  # messaging
        time.sleep(2)  # started and polling
        response = upload(api_client, photo_jpeg(2400, 1800))
        assert response.status_code == 201, response.content
        image_id = response.json()["id"]
        time.sleep(3)  # messaging polls every 0.1 s: ample time to (wrongly) take it

        assert api_client.get(f"/api/media/{image_id}/").json()["status"] == "pending"
        assert list(OrmQ.objects.values_list("key", flat=True)) == ["media"]

        with running_qcluster("media", workers=1, log=log):
            done = wait_for(
                lambda: UploadedImage.objects.get(pk=image_id).status in ("done", "failed"),
                timeout=60,
            )
            assert done, log.read_text()[-3000:]

    body = api_client.get(f"/api/media/{image_id}/").json()
    assert body["status"] == "done", body
    assert body["original"] == {"width": 2400, "height": 1800, "size": body["original"]["size"]}
    assert [(v["name"], v["width"]) for v in body["variants"]] == [
        ("large-jpg", 1600),
        ("large-webp", 1600),
        ("thumb-jpg", 400),
        ("thumb-webp", 400),
    ]
    assert wait_for(lambda: Task.objects.filter(func=COMPRESS_TASK).exists(), timeout=10)
    assert list(Task.objects.filter(func=COMPRESS_TASK).values_list("cluster", "success")) == [
        ("media", True)
    ]
