"""Suite-wide test set-up lives in config/settings_test.py (no HTTPS redirect, plain static
storage, fast password hashing), so live servers built once per session get it too."""

pytest_plugins = ["tests.browser"]
