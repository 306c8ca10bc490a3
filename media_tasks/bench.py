"""Media benchmark scenario: compress N large generated images on the real media cluster and
compare its throughput with plain Pillow doing the same work in the same number of processes.

    >>> from media_tasks.bench import run_media_bench
    >>> result = run_media_bench(images=500, processes=4)
    >>> result.ratio   # media cluster throughput / raw Pillow throughput

Called by the benchmark harness (`make bench`) after Django is set up against a real database
(the one in settings; a qcluster subprocess is started against it). Also importable alone.
The raw baseline uses a "spawn" process pool, which re-imports the caller's main module: call
it from under `if __name__ == "__main__":` as multiprocessing requires.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import Max, Min

from media_tasks import services
from media_tasks.bench_pillow import generate_photo, raw_pillow_compress
from media_tasks.conf import compression_settings
from media_tasks.models import ImageStatus, UploadedImage

BASE_DIR = Path(settings.BASE_DIR)


@dataclass(frozen=True)
class MediaBenchResult:
    images: int
    processes: int
    width: int
    height: int
    original_bytes: int  # total of the originals
    variant_bytes: int  # total of all variants the cluster produced
    raw_seconds: float  # plain Pillow in a process pool, wall time (mean of the two runs)
    raw_seconds_runs: tuple[float, float]  # before and after the cluster run
    cluster_seconds: float  # first claim to last finish, from the rows' timestamps
    cluster_wall_seconds: float  # qcluster start to all done, start-up included
    failed: int

    @property
    def raw_images_per_second(self) -> float:
        return self.images / self.raw_seconds

    @property
    def cluster_images_per_second(self) -> float:
        return self.images / self.cluster_seconds

    @property
    def ratio(self) -> float:
        """Media cluster throughput as a fraction of raw Pillow's (the target is >= 0.9)."""
        return self.cluster_images_per_second / self.raw_images_per_second

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "raw_images_per_second": round(self.raw_images_per_second, 3),
            "cluster_images_per_second": round(self.cluster_images_per_second, 3),
            "ratio": round(self.ratio, 3),
        }


def run_media_bench(
    *,
    images: int = 500,
    processes: int | None = None,
    width: int = 4000,
    height: int = 3000,
    distinct: int = 8,
    timeout: float = 3600,
    cleanup: bool = True,
) -> MediaBenchResult:
    """Compress `images` generated JPEGs of width x height on the media cluster and with raw
    Pillow, each with `processes` processes (default: Q_MEDIA_WORKERS, i.e. one per core).

    `distinct` different photos are generated and reused round-robin (generating hundreds of
    12-megapixel photos would take longer than compressing them); each upload is still its
    own file and row. The raw run (twice: before and after the cluster run; the mean counts)
    performs the same Pillow calls with the same settings
    (draft decode, EXIF transpose, Lanczos with reducing gap, WebP + JPEG per size) in a
    multiprocessing pool, on bytes in memory, results discarded: no Django, database,
    storage or queue. The cluster run uploads through `services.image_upload` (not timed),
    then starts `Q_CLUSTER_NAME=media manage.py qcluster` and waits for every row to finish.
    With cleanup, the rows and files it created are deleted afterwards.
    """
    processes = processes or int(_media_conf("workers", os.cpu_count() or 1))
    originals = generate_originals(
        distinct=max(1, min(distinct, images)), width=width, height=height, processes=processes
    )
    work = [originals[i % len(originals)] for i in range(images)]

    raw_before = raw_pillow_seconds(work, processes=processes)

    ids = [
        services.image_upload(file=SimpleUploadedFile(f"bench-{i}.jpg", data)).pk
        for i, data in enumerate(work)
    ]
    try:
        started = time.perf_counter()
        with running_qcluster(settings.NUDGE_MEDIA_CLUSTER, workers=processes):
            _wait_until_finished(ids, timeout=timeout)
        wall = time.perf_counter() - started
        # Raw Pillow runs before and after the cluster and the mean is used, so a change in
        # the machine's load during the run does not favour either side.
        raw_after = raw_pillow_seconds(work, processes=processes)
        rows = UploadedImage.objects.filter(pk__in=ids)
        span = rows.aggregate(first=Min("claimed_at"), last=Max("processed_at"))
        cluster_seconds = (span["last"] - span["first"]).total_seconds()
        return MediaBenchResult(
            images=images,
            processes=processes,
            width=width,
            height=height,
            original_bytes=sum(len(data) for data in work),
            variant_bytes=sum(
                rows.filter(variants__isnull=False).values_list("variants__size", flat=True)
            ),
            raw_seconds=(raw_before + raw_after) / 2,
            raw_seconds_runs=(raw_before, raw_after),
            cluster_seconds=cluster_seconds,
            cluster_wall_seconds=wall,
            failed=rows.filter(status=ImageStatus.FAILED).count(),
        )
    finally:
        if cleanup:
            for image in UploadedImage.objects.filter(pk__in=ids).prefetch_related("variants"):
                for variant in image.variants.all():
                    variant.file.delete(save=False)
                image.original.delete(save=False)
                image.delete()


def raw_pillow_seconds(work: list[bytes], *, processes: int) -> float:
    """Wall time of plain Pillow compressing `work` in a pool of `processes` (after a warm-up)."""
    conf = compression_settings()
    with get_context("spawn").Pool(processes) as pool:
        pool.map(raw_pillow_compress, [(data, conf) for data in work[:processes]])  # warm up
        started = time.perf_counter()
        pool.map(raw_pillow_compress, [(data, conf) for data in work], chunksize=1)
        return time.perf_counter() - started


def generate_originals(*, distinct: int, width: int, height: int, processes: int) -> list[bytes]:
    """`distinct` camera-like JPEGs of width x height, generated in a pool of `processes`."""
    with get_context("spawn").Pool(processes) as pool:
        return pool.map(generate_photo, [(width, height, seed) for seed in range(distinct)])


def _wait_until_finished(ids: list[int], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    unfinished = [ImageStatus.PENDING, ImageStatus.PROCESSING]
    while UploadedImage.objects.filter(pk__in=ids, status__in=unfinished).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"media cluster did not finish {len(ids)} images in {timeout}s")
        time.sleep(0.2)


def _media_conf(key: str, default: Any) -> Any:
    q_cluster: dict[str, Any] = settings.Q_CLUSTER
    alt = q_cluster.get("ALT_CLUSTERS", {})
    return alt.get(settings.NUDGE_MEDIA_CLUSTER, {}).get(key, default)


def database_url() -> str:
    """DATABASE_URL of the database this process uses now (a test database included)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or ''}{port}/{db['NAME']}"


@contextlib.contextmanager
def running_qcluster(
    cluster_name: str | None,
    *,
    workers: int | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `manage.py qcluster` for one cluster (None: the default, messaging) against this
    process's database and media folder; its output goes to `log` if given. Stopped
    (SIGTERM, then SIGKILL) on exit."""
    child_env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    child_env.pop("Q_CLUSTER_NAME", None)
    if cluster_name and cluster_name != settings.Q_CLUSTER.get("cluster_name"):
        child_env["Q_CLUSTER_NAME"] = cluster_name
    if workers:
        variable = (
            "Q_MEDIA_WORKERS"
            if cluster_name == settings.NUDGE_MEDIA_CLUSTER
            else "Q_MESSAGING_WORKERS"
        )
        child_env[variable] = str(workers)
    output = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, str(BASE_DIR / "manage.py"), "qcluster"],
        cwd=BASE_DIR,
        env=child_env,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if log:
            output.close()  # type: ignore[union-attr]
