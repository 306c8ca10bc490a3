"""gunicorn's settings for the web process (Procfile, benchmark): `-c config/gunicorn.py`.

Sync workers, (2 x cores) + 1 of them as gunicorn recommends: a webhook spends part of its
time waiting for PostgreSQL, and the spare workers use the CPU meanwhile. WEB_CONCURRENCY
overrides the count.
"""

import multiprocessing
import os

workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * multiprocessing.cpu_count() + 1)
