"""gunicorn's settings for the web process (Procfile, benchmark): `-c config/gunicorn.py`.

One sync worker per core (WEB_CONCURRENCY overrides it). Measured on the 2-core machine of
bench/RESULTS.md, (2 x cores) + 1 workers, gunicorn's general advice, gave fewer events/s
than 2: ingestion is CPU-bound here (Python and PostgreSQL share the cores), and extra
workers only add switching.
"""

import multiprocessing
import os

workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
