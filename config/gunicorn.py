"""gunicorn's settings for the web process (Procfile, benchmark): `-c config/gunicorn.py`.

One sync worker per core (WEB_CONCURRENCY overrides it). Measured on the 2-core machine of
bench/RESULTS.md, (2 x cores) + 1 workers, gunicorn's general advice, gave fewer events/s
than 2: ingestion is CPU-bound here (Python and PostgreSQL share the cores), and extra
workers only add switching.
"""

import multiprocessing
import os

workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())


def post_worker_init(worker: object) -> None:
    """Once a worker has loaded Django: load the URLs and views too (the first request
    would), then move everything alive into the garbage collector's permanent generation.
    A full collection then walks only what requests allocate, not the ~75,000 objects of
    Django's start-up (measured here: ~40 ms to walk them, paid by whichever request
    triggers the collection; after the freeze, well under a millisecond)."""
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 (imports every view module)
    gc.collect()
    gc.freeze()


_made_directories: list[str] = []


def on_starting(server: object) -> None:
    """Before any worker exists: one PROMETHEUS_MULTIPROC_DIR for all of them, so that
    GET /metrics sums django-prometheus's counters over every worker (nudge.metrics). The
    directory given in the environment is emptied of its metric files (a previous run's
    would be added in); without one, a fresh temporary directory. The workers inherit the
    variable and so, importing prometheus_client after the fork, write to it.
    NUDGE_METRICS_MULTIPROCESS=false leaves each worker's counters its own."""
    import glob
    import tempfile

    if os.environ.get("NUDGE_METRICS_MULTIPROCESS", "true").lower() in ("0", "false", "no"):
        return
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.remove(path)
    else:
        directory = tempfile.mkdtemp(prefix="nudge-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        _made_directories.append(directory)


def child_exit(server: object, worker: object) -> None:
    """A worker ended: drop its live gauges from the sums (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    """gunicorn stops: remove the temporary metrics directory it made."""
    import shutil

    for directory in _made_directories:
        shutil.rmtree(directory, ignore_errors=True)
