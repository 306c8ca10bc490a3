"""The consent booleans become states with a source and a time, and the suppression list's
plain addresses become keyed hashes.

- consent_email / consent_sms true: granted, source "migration", at the profile's time
  (profile_as_of: the event the value came from), else the migration's moment; false: revoked,
  with the customer's own opt-out as its source and time when there is one ("unsubscribe_link",
  "esp_unsubscribe", "sms_reply"), "erasure" for an erased customer, else "migration".
- a suppression whose address is not yet "hmac-sha256:..." is replaced by its keyed hash
  (marketing.services.suppression.identifier_digest, the function the running code hashes with:
  the same NUDGE_ERASURE_PEPPER / SECRET_KEY must be set when migrating), and the address is
  cut out of its detail.

Going back restores the booleans (unknown becomes true, the old default); hashed addresses
cannot be turned back into addresses and stay hashed.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations
from django.db.models import Case, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

BATCH = 1000
CHANNELS = ("email", "sms")


def consent_forwards(apps: Any, schema_editor: Any) -> None:
    Customer = apps.get_model("marketing", "Customer")
    now = timezone.now()
    for channel in CHANNELS:
        flag, opted_at, opted_via = (
            f"consent_{channel}",
            f"{channel}_opted_out_at",
            f"{channel}_opted_out_via",
        )
        state, source, at = (
            f"{channel}_consent",
            f"{channel}_consent_source",
            f"{channel}_consent_at",
        )
        customers = Customer.objects.all()
        customers.filter(**{flag: True}).update(
            **{
                state: "granted",
                source: Value("migration"),
                at: Coalesce("profile_as_of", Value(now)),
            }
        )
        customers.filter(**{flag: False}).update(
            **{
                state: "revoked",
                source: Case(
                    When(
                        **{f"{opted_at}__isnull": False},
                        then=Case(
                            When(**{opted_via: ""}, then=Value("migration")), default=F(opted_via)
                        ),
                    ),
                    When(erased_at__isnull=False, then=Value("erasure")),
                    default=Value("migration"),
                ),
                at: Coalesce(opted_at, "erased_at", "profile_as_of", Value(now)),
            }
        )


def consent_backwards(apps: Any, schema_editor: Any) -> None:
    Customer = apps.get_model("marketing", "Customer")
    for channel in CHANNELS:
        Customer.objects.update(
            **{
                f"consent_{channel}": Case(
                    When(**{f"{channel}_consent": "revoked"}, then=Value(False)),
                    default=Value(True),
                )
            }
        )


def suppressions_hash(apps: Any, schema_editor: Any) -> None:
    from marketing.services.suppression import HASH_PREFIX, detail_without_address, address_digest

    Suppression = apps.get_model("marketing", "Suppression")
    plain = Suppression.objects.exclude(address__startswith=HASH_PREFIX).order_by("pk")
    while batch := list(plain[:BATCH]):
        for row in batch:
            digest = address_digest(row.channel, row.address)
            if Suppression.objects.filter(
                channel=row.channel, address=digest, reason=row.reason
            ).exists():
                row.delete()  # already there, hashed
                continue
            row.detail = detail_without_address(row.detail, row.address)
            row.address = digest
            row.source = row.source or "migration"
            row.save(update_fields=["address", "detail", "source"])


class Migration(migrations.Migration):
    dependencies = [("marketing", "0007_consent")]

    operations = [
        migrations.RunPython(consent_forwards, consent_backwards),
        migrations.RunPython(suppressions_hash, migrations.RunPython.noop),
    ]
