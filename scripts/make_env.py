"""Print a `.env` for a first local run: fresh secrets, DEBUG on, SQLite. Used by `make run`."""

import base64
import secrets

print("# Written by `make run` for a first local run. A variable set in the environment wins")
print("# over this file (config/settings.py, scripts/start.py).")
print(f"SECRET_KEY={secrets.token_urlsafe(50)}")
print("DEBUG=true")
print(f"NUDGE_WEBHOOK_SECRET=whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}")
print(f"NUDGE_DEMO_PASSWORD={secrets.token_urlsafe(12)}")
