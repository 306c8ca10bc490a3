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
