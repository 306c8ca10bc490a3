"""The media scenario of `make bench` (issue 5): messaging lateness while the media cluster is
saturated with large images, and the media cluster's compression throughput against plain
Pillow with the same number of processes on the same images.

One run, in this order, so every compared figure comes from the same run:

1. generate the images; plain Pillow compresses them all in a pool (`raw before`);
2. upload them through `services.image_upload` (queued on the media queue; not timed);
3. start the messaging cluster and the ticker; a steady stream of sends: `base before`;
4. start the media cluster as the Procfile does (`Q_CLUSTER_NAME=media nice -n 10 ... qcluster`,
   workers = cores), wait until every media worker is compressing, then the same steady
   stream: `loaded` (checked afterwards: images were still queued when the stream ended);
5. wait for every image; the same steady stream again: `base after`;
6. stop the clusters; plain Pillow again (`raw after`).

lateness_ratio = loaded p99 / mean(base before, base after) p99. compress_per_s counts the
images claimed after the loaded stream was sent, from the first such claim to the last finish,
so the messaging stream does not compete for the cores there (the raw pool has the machine to
itself too); the whole batch, stream included, is in the table. vs_pillow = compress_per_s /
(images / mean(raw before, raw after)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.run import (
    PY,
    BenchFailure,
    Processes,
    db_now,
    dispatch_steady,
    fmt,
    log,
    sql,
    start_engine,
)

WIDTH, HEIGHT = 4000, 3000  # 12 megapixels: a camera photo as marketers upload them
DISTINCT = 8  # different photos, reused round-robin (each upload is still its own file and row)


@dataclass(frozen=True)
class MediaFigures:
    images: int
    processes: int
    base_p99: tuple[float, float]  # messaging alone, before and after the media load
    base_p50: tuple[float, float]
    loaded_p99: float
    loaded_p50: float
    loaded_max: float
    saturated: bool  # images were still queued when the loaded stream was all sent
    compress_per_s: float  # images claimed after the loaded stream
    compress_images: int  # how many those were
    batch_per_s: float  # the whole batch, first claim to last finish, stream included
    raw_seconds: tuple[float, float]  # plain Pillow on all images, before and after

    @property
    def base_p99_mean(self) -> float:
        return sum(self.base_p99) / 2

    @property
    def lateness_ratio(self) -> float:
        return self.loaded_p99 / self.base_p99_mean

    @property
    def raw_per_s(self) -> float:
        return self.images / (sum(self.raw_seconds) / 2)

    @property
    def vs_pillow(self) -> float:
        return self.compress_per_s / self.raw_per_s


def bench_line(figures: MediaFigures | None, images: int) -> str:
    """The one machine-readable line of the scenario (nan everywhere when it was skipped)."""
    values: tuple[float, ...] = (float("nan"),) * 5
    if figures:
        values = (
            figures.loaded_p99,
            figures.base_p99_mean,
            figures.lateness_ratio,
            figures.compress_per_s,
            figures.vs_pillow,
        )
    p99, base, ratio, per_s, vs = (fmt(v) for v in values)
    return (
        f"BENCH media images={images} lateness_p99_s={p99} lateness_p99_base_s={base} "
        f"lateness_ratio={ratio} compress_per_s={per_s} vs_pillow={vs}"
    )


def table_rows(f: MediaFigures, steady_rate: float) -> list[tuple[str, str]]:
    return [
        ("images (4000 x 3000 JPEG) / media workers", f"{f.images} / {f.processes}"),
        (
            f"messaging lateness p99, {steady_rate:.0f}/s, no media load: before / after (s)",
            f"{fmt(f.base_p99[0])} / {fmt(f.base_p99[1])}",
        ),
        (
            "messaging lateness p50 / p99 / max, media cluster saturated (s)",
            f"{fmt(f.loaded_p50)} / {fmt(f.loaded_p99)} / {fmt(f.loaded_max)}",
        ),
        ("media cluster saturated for the whole stream", "yes" if f.saturated else "NO"),
        ("lateness p99 ratio, with / without media load (target <= 1.2)", fmt(f.lateness_ratio)),
        (
            f"media cluster, images claimed after the stream ({f.compress_images}) (images/s)",
            fmt(f.compress_per_s),
        ),
        ("media cluster, whole batch, stream included (images/s)", fmt(f.batch_per_s)),
        (
            "raw Pillow, same processes and images: before / after (images/s)",
            f"{fmt(f.images / f.raw_seconds[0])} / {fmt(f.images / f.raw_seconds[1])}",
        ),
        ("media cluster / raw Pillow (target >= 0.9)", fmt(f.vs_pillow)),
    ]


def media_workers() -> int:
    from django.conf import settings

    q_cluster: dict[str, Any] = settings.Q_CLUSTER
    return int(q_cluster["ALT_CLUSTERS"][settings.NUDGE_MEDIA_CLUSTER]["workers"])


def image_counts(ids: list[int]) -> dict[str, int]:
    rows = sql(
        "SELECT status, count(*) FROM media_tasks_uploadedimage WHERE id = ANY(%s) GROUP BY status",
        [ids],
    )
    return {status: count for status, count in rows}


def wait_for_images(
    ids: list[int], procs: Processes, *, done: bool, workers: int, timeout: float
) -> None:
    """Wait until every image is finished (done=True) or `workers` are compressing."""
    deadline = time.monotonic() + timeout
    while True:
        counts = image_counts(ids)
        if done and counts.get("pending", 0) + counts.get("processing", 0) == 0:
            return
        if not done and counts.get("processing", 0) >= workers:
            return
        if time.monotonic() > deadline:
            raise BenchFailure(f"media images after {timeout:.0f} s: {counts}")
        procs.check_alive()
        time.sleep(0.2)


def throughput(ids: list[int], since: datetime | None) -> tuple[float, int]:
    """Images/s of those claimed at or after `since` (all if None): first claim to last finish."""
    count, first, last = sql(
        "SELECT count(*), min(claimed_at), max(processed_at) FROM media_tasks_uploadedimage "
        "WHERE id = ANY(%s) AND (%s::timestamptz IS NULL OR claimed_at >= %s)",
        [ids, since, since],
    )[0]
    if count < 2:
        return float("nan"), count
    return count / (last - first).total_seconds(), count


def run(args: Any, journey: Any, step: Any, tag: str, procs: Processes) -> MediaFigures:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from media_tasks import services
    from media_tasks.bench import generate_originals, raw_pillow_seconds

    workers = media_workers()
    images = args.media_images
    log(f"media: generating {min(DISTINCT, images)} photos of {WIDTH} x {HEIGHT}")
    originals = generate_originals(
        distinct=min(DISTINCT, images), width=WIDTH, height=HEIGHT, processes=workers
    )
    work = [originals[i % len(originals)] for i in range(images)]
    log(f"  raw Pillow: {images} images in {workers} processes")
    raw_before = raw_pillow_seconds(work, processes=workers)
    log(f"  {images / raw_before:.2f} images/s; uploading {images} images")
    ids = [
        services.image_upload(file=SimpleUploadedFile(f"{tag}-{i}.jpg", data)).pk
        for i, data in enumerate(work)
    ]
    del work
    rate, seconds = args.steady_rate, args.steady_seconds
    try:
        start_engine(procs)
        log(f"  messaging alone: {rate:.0f}/s for {seconds} s")
        before = dispatch_steady(rate, seconds, journey, step, f"{tag}-b0", procs)
        # as the Procfile starts it: its own queue, workers = cores, lower CPU priority
        procs.start(
            "media",
            ["nice", "-n", "10", PY, "manage.py", "qcluster"],
            Q_CLUSTER_NAME="media",
            Q_MEDIA_WORKERS=str(workers),
        )
        wait_for_images(ids, procs, done=False, workers=workers, timeout=120)
        log(f"  messaging with {workers} media workers compressing: {rate:.0f}/s for {seconds} s")
        loaded = dispatch_steady(rate, seconds, journey, step, f"{tag}-m", procs)
        stream_end = db_now()
        saturated = image_counts(ids).get("pending", 0) > 0
        if not saturated:
            log("  warning: the media queue ran dry before the stream ended; raise --media-images")
        log("  waiting for the media cluster to finish")
        wait_for_images(ids, procs, done=True, workers=workers, timeout=3600)
        log(f"  messaging alone again: {rate:.0f}/s for {seconds} s")
        after = dispatch_steady(rate, seconds, journey, step, f"{tag}-b1", procs)
    finally:
        procs.stop()
    failed = image_counts(ids).get("failed", 0)
    if failed:
        raise BenchFailure(f"{failed} of {images} media images failed to compress")
    log("  raw Pillow again")
    raw_after = raw_pillow_seconds(
        [originals[i % len(originals)] for i in range(images)], processes=workers
    )
    compress_per_s, compress_images = throughput(ids, stream_end)
    if compress_images < 2 * workers:
        # too few images after the stream for a figure of its own: the whole batch counts
        compress_per_s, compress_images = throughput(ids, None)
    return MediaFigures(
        images=images,
        processes=workers,
        base_p99=(before["p99"], after["p99"]),
        base_p50=(before["p50"], after["p50"]),
        loaded_p99=loaded["p99"],
        loaded_p50=loaded["p50"],
        loaded_max=loaded["max"],
        saturated=saturated,
        compress_per_s=compress_per_s,
        compress_images=compress_images,
        batch_per_s=throughput(ids, None)[0],
        raw_seconds=(raw_before, raw_after),
    )
