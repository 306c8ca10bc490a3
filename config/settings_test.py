"""The test suite's settings: production settings, less HTTPS redirects and slow hashing."""

from config.settings import *  # noqa: F403

SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# No collectstatic before tests: plain storage instead of the hashed manifest.
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# A host project's own models (tests/hostapp), for host models as event sources. Their sources
# (NUDGE_HOST_EVENTS) are set by the tests that use them: other tests create users too.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.hostapp"]  # noqa: F405
# Emails stay in django.core.mail.outbox (as Django's test runner does), also in the worker
# processes some tests start; the SMTP tests name their own backend.
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# django-axes refuses authenticate() without a request, which Django's test client login()
# makes; the login lock-out tests (tests/nudge/test_login_lockout.py) switch it on.
AXES_ENABLED = False
# The suite's tests post an event and dispatch what is due at once, as if it had arrived
# long ago; tests/journeys/test_settling.py sets NUDGE_SETTLE_SECONDS itself.
NUDGE_SETTLE_SECONDS = 0.0
# No site quiet hours: the suite dispatches at whatever time of day it runs;
# tests/journeys/test_pacing.py sets the window it tests.
NUDGE_SEND_WINDOW = ""
