"""Print a `.env` for a first local run: fresh secrets, DEBUG on, SQLite. Used by `make run`."""

import base64
import secrets

print("# Written by `make run` for a first local run. A variable set in the environment wins")
print("# over this file (config/settings.py, scripts/start.py).")
print(f"SECRET_KEY={secrets.token_urlsafe(50)}")
print("DEBUG=true")
print(f"NUDGE_WEBHOOK_SECRET=whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}")
print(f"NUDGE_DEMO_PASSWORD={secrets.token_urlsafe(12)}")
# Quiet hours are on by default (NUDGE_SEND_WINDOW 09:00-21:00 in the customer's time zone):
# off for the first run, so that the README's "Try it" sends at any hour of the day.
print("# Quiet hours off for this first run (the default is 09:00-21:00, customer's local time).")
print("NUDGE_SEND_WINDOW=")
