"""The consent migrations (marketing 0007-0009) on PostgreSQL: rows written by the code before
them, with consent booleans and plain suppression addresses, come out as consent states with
a source and a time, and as keyed hashes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from marketing.services.suppression import address_digest, identifier_digest

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("marketing", "0007_consent")]


def _migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor


def test_the_booleans_become_states_and_the_plain_addresses_keyed_hashes():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    try:
        old = _migrate(BEFORE).loader.project_state(BEFORE).apps
        Customer = old.get_model("marketing", "Customer")
        Suppression = old.get_model("marketing", "Suppression")
        now = timezone.now()
        as_of = now - timedelta(days=3)
        opted = now - timedelta(days=1)
        Customer.objects.create(
            external_id="u_yes", consent_email=True, consent_sms=True, profile_as_of=as_of
        )
        Customer.objects.create(external_id="u_never_evented", consent_email=True)
        Customer.objects.create(
            external_id="u_unsubscribed",
            consent_email=False,
            email_opted_out_at=opted,
            email_opted_out_via="unsubscribe_link",
            consent_sms=False,  # the shop's consent.sms=false: no opt-out of their own
            profile_as_of=as_of,
        )
        Customer.objects.create(
            external_id="erased:9", consent_email=False, consent_sms=False, erased_at=opted
        )
        Suppression.objects.create(
            channel="email",
            address="ana@example.com",
            reason="bounced",
            detail="550 <ana@example.com> unknown",
        )
        Suppression.objects.create(channel="sms", address="+14155550101", reason="complained")
        erased = identifier_digest(kind="id", value="u_gone")
        Suppression.objects.create(channel="email", address=erased, reason="erased")

        new = _migrate(latest).loader.project_state(latest).apps
        Customer = new.get_model("marketing", "Customer")
        Suppression = new.get_model("marketing", "Suppression")

        def consent(external_id: str) -> tuple[object, ...]:
            c = Customer.objects.get(external_id=external_id)
            return (
                c.email_consent,
                c.email_consent_source,
                c.email_consent_at,
                c.sms_consent,
                c.sms_consent_source,
            )

        assert consent("u_yes") == ("granted", "migration", as_of, "granted", "migration")
        never = consent("u_never_evented")
        assert never[:2] == ("granted", "migration") and never[2] is not None
        assert consent("u_unsubscribed") == (
            "revoked",
            "unsubscribe_link",
            opted,
            "revoked",
            "migration",
        )
        assert consent("erased:9") == ("revoked", "erasure", opted, "revoked", "erasure")
        rows = {(s.channel, s.reason): s for s in Suppression.objects.all()}
        assert rows[("email", "bounced")].address == address_digest("email", "ana@example.com")
        assert rows[("email", "bounced")].detail == "550 <<address>> unknown"
        assert rows[("email", "bounced")].source == "migration"
        assert rows[("sms", "complained")].address == address_digest("sms", "+14155550101")
        assert rows[("email", "erased")].address == erased  # already hashed: as it was
        assert all(s.address.startswith("hmac-sha256:") for s in rows.values())
    finally:
        _migrate(latest)
