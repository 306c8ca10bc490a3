"""Settings of the processes the benchmark starts: production settings, plus a no-op view.

Only this module routes /bench/noop/; config.urls (production) never does.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
# The benchmark measures throughput at any hour: no quiet hours (its customers are in UTC).
NUDGE_SEND_WINDOW = ""
