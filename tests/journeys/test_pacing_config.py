"""Pacing's configuration: the admin (caps, priority, transactional, quiet hours) and
journeys-as-code (the journeys' fields and the top-level "caps"), export and import."""

from __future__ import annotations

import json
from datetime import time, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from journeys import services
from journeys.checks import send_window_check
from journeys.models import FrequencyCap, Journey, SendWindowMode
from journeys.selectors import journeys_export
from tests.journeys.test_admin import admin_client_logged_in, journey_form, marketer_client  # noqa: F401
from tests.journeys.test_journeys_as_code import SPEC

pytestmark = pytest.mark.django_db


def spec_with(**fields):
    journey = {**SPEC["journeys"][0], **fields}
    return {"journeys": [journey]}


# --- admin ----------------------------------------------------------------------------------


def test_admin_saves_priority_transactional_and_own_hours(admin_client_logged_in):  # noqa: F811
    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/",
        journey_form(
            priority="10",
            transactional="on",
            send_window="custom",
            send_window_start="20:00",
            send_window_end="08:00",
            send_weekdays_only="on",
        ),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    journey = Journey.objects.get(slug="winback")
    assert journey.priority == 10
    assert journey.transactional is True
    assert journey.send_window == SendWindowMode.CUSTOM
    assert (journey.send_window_start, journey.send_window_end) == (time(20), time(8))
    assert journey.send_weekdays_only is True


def test_admin_defaults_when_the_pacing_fields_are_left_out(admin_client_logged_in):  # noqa: F811
    response = admin_client_logged_in.post("/admin/journeys/journey/add/", journey_form())

    assert response.status_code == 302
    journey = Journey.objects.get(slug="winback")
    assert (journey.priority, journey.transactional, journey.send_window) == (0, False, "site")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"send_window_start": "09:00", "send_window_end": ""}, "need a start and an end"),
        ({"send_window_start": "09:00", "send_window_end": "09:00"}, "must differ"),
        ({"send_window_start": "9 am", "send_window_end": "17:00"}, "Enter a valid time"),
    ],
)
def test_admin_refuses_broken_own_hours(admin_client_logged_in, fields, message):  # noqa: F811
    response = admin_client_logged_in.post(
        "/admin/journeys/journey/add/", journey_form(send_window="custom", **fields)
    )

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Journey.objects.exists()


def test_the_journey_page_shows_the_pacing_fields(admin_client_logged_in):  # noqa: F811
    page = admin_client_logged_in.get("/admin/journeys/journey/add/").content.decode()
    for name in ("priority", "transactional", "send_window", "send_window_start",
                 "send_weekdays_only"):  # fmt: skip
        assert f'name="{name}"' in page
    assert "Pacing" in page


def test_a_marketer_adds_edits_and_switches_off_frequency_caps(marketer_client):  # noqa: F811
    response = marketer_client.post(
        "/admin/journeys/frequencycap/add/",
        {"channel": "sms", "max_sends": "1", "period": "1 00:00:00", "active": "on"},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    cap = FrequencyCap.objects.get()
    assert str(cap) == "1 SMS per 24 h"
    listing = marketer_client.get("/admin/journeys/frequencycap/").content.decode()
    assert "1 SMS per 24 h" in listing

    response = marketer_client.post(
        f"/admin/journeys/frequencycap/{cap.pk}/change/",
        {"channel": "sms", "max_sends": "2", "period": "1 00:00:00"},
    )
    assert response.status_code == 302
    cap.refresh_from_db()
    assert (cap.max_sends, cap.active) == (2, False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_sends": "0"}, "at least 1 message"),
        ({"period": "00:00:00"}, "longer than zero"),
    ],
)
def test_admin_refuses_a_broken_cap(admin_client_logged_in, fields, message):  # noqa: F811
    data = {"channel": "sms", "max_sends": "1", "period": "1 00:00:00", "active": "on", **fields}

    response = admin_client_logged_in.post("/admin/journeys/frequencycap/add/", data)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not FrequencyCap.objects.exists()


def test_admin_refuses_a_second_cap_for_the_same_channel_and_period(admin_client_logged_in):  # noqa: F811
    FrequencyCap.objects.create(channel="sms", max_sends=1, period=timedelta(days=1))
    data = {"channel": "sms", "max_sends": "3", "period": "1 00:00:00", "active": "on"}

    response = admin_client_logged_in.post("/admin/journeys/frequencycap/add/", data)

    assert response.status_code == 200
    assert "has a cap for this period already" in response.content.decode()


# --- journeys as code -----------------------------------------------------------------------

CAPS = [
    {"channel": "email", "max_sends": 3, "period": "P7D", "active": True},
    {"channel": "sms", "max_sends": 1, "period": "P1D", "active": True},
    {"channel": "sms", "max_sends": 3, "period": "P7D", "active": True},
]


@pytest.mark.parametrize(
    "send_window",
    ["site", None, {"start": "20:00", "end": "08:00", "weekdays_only": True}],
)
def test_pacing_fields_and_caps_round_trip_through_export_and_import(send_window):
    data = spec_with(priority=10, transactional=True, send_window=send_window)
    data["caps"] = CAPS
    services.journeys_import(data=data)

    exported = journeys_export()

    (journey,) = exported["journeys"]
    assert journey["priority"] == 10
    assert journey["transactional"] is True
    assert journey["send_window"] == send_window
    assert exported["caps"] == CAPS
    # and the export imports back to the same
    FrequencyCap.objects.all().delete()
    Journey.objects.update(priority=0, transactional=False, send_window="site")
    services.journeys_import(data=exported)
    assert journeys_export() == exported


def test_defaults_when_a_journey_names_no_pacing_field():
    services.journeys_import(data=SPEC)

    (journey,) = journeys_export()["journeys"]
    assert (journey["priority"], journey["transactional"], journey["send_window"]) == (
        0, False, "site",
    )  # fmt: skip


def test_caps_in_the_file_are_the_complete_list_and_absent_caps_keep_the_sites():
    FrequencyCap.objects.create(channel="email", max_sends=1, period=timedelta(hours=12))
    services.journeys_import(data=SPEC)  # no "caps": the site's stay as they are
    assert FrequencyCap.objects.get().active

    summary = services.journeys_import(data={**SPEC, "caps": CAPS[1:2]})

    assert summary.caps_saved == ["1 SMS per 24 h"]
    assert summary.caps_deactivated == ["1 email per 12 h"]
    assert list(FrequencyCap.objects.filter(active=True).values_list("channel", flat=True)) == [
        "sms"
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": "high"}, "priority: a whole number"),
        ({"priority": True}, "priority: a whole number"),
        ({"transactional": "yes"}, "transactional: must be true or false"),
        ({"send_window": "always"}, 'send_window: "site"'),
        ({"send_window": {"start": "09:00"}}, "send_window.end: None is not a time of day"),
        ({"send_window": {"start": "09:00", "end": "09:00"}}, "must differ"),
        ({"send_window": {"start": "9h", "end": "17:00"}}, "send_window.start: '9h'"),
        ({"send_window": {"start": "09:00", "end": "17:00", "tz": "UTC"}}, "unknown field(s): tz"),
        ({"send_window": {"start": "09:00", "end": "17:00", "weekdays_only": 1}},
         "weekdays_only: must be true or false"),
    ],
)  # fmt: skip
def test_broken_pacing_fields_are_refused_naming_the_field(fields, message):
    with pytest.raises(services.JourneyImportError) as refused:
        services.journeys_import(data=spec_with(**fields))

    assert any(message in error for error in refused.value.errors), refused.value.errors
    assert not Journey.objects.exists()


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ("none", "caps: must be a list"),
        ([{"channel": "fax", "max_sends": 1, "period": "P1D"}], "caps[0].channel: must be one"),
        ([{"channel": "sms", "max_sends": 0, "period": "P1D"}], "caps[0].max_sends: a whole"),
        ([{"channel": "sms", "max_sends": 1, "period": "PT0S"}], "caps[0].period: must be longer"),
        ([{"channel": "sms", "max_sends": 1}], "caps[0].period: required"),
        ([{"channel": "sms", "max_sends": 1, "period": "P1D", "per": 1}],
         "caps[0]: unknown field(s): per"),
        ([{"channel": "sms", "max_sends": 1, "period": "P1D"},
          {"channel": "sms", "max_sends": 2, "period": "PT24H"}], "caps[1]: a cap for this"),
    ],
)  # fmt: skip
def test_broken_caps_are_refused_and_nothing_is_written(caps, message):
    with pytest.raises(services.JourneyImportError) as refused:
        services.journeys_import(data={**SPEC, "caps": caps})

    assert any(message in error for error in refused.value.errors), refused.value.errors
    assert not Journey.objects.exists()
    assert not FrequencyCap.objects.exists()


def test_the_import_command_reports_the_caps(tmp_path, capsys):
    path = tmp_path / "journeys.json"
    path.write_text(json.dumps({**SPEC, "caps": CAPS[:1]}))

    call_command("journeys_import", str(path))

    assert "caps saved: 3 emails per 7 days" in capsys.readouterr().out
    path.write_text(json.dumps({**SPEC, "caps": [{"channel": "sms"}]}))
    with pytest.raises(CommandError, match=r"caps\[0\]\.max_sends"):
        call_command("journeys_import", str(path))


def test_a_broken_site_send_window_stops_the_process(settings):
    settings.NUDGE_SEND_WINDOW = "9-5"
    (error,) = send_window_check()
    assert error.id == "nudge.E130"
    assert "not a send window" in error.msg
    for fine in ("09:00-21:00", "22:00-07:00", "", "off"):
        settings.NUDGE_SEND_WINDOW = fine
        assert send_window_check() == []


# the example of the README's "Pacing" section
README_EXAMPLE = """
{
  "caps": [
    {"channel": "sms", "max_sends": 1, "period": "P1D", "active": true},
    {"channel": "sms", "max_sends": 3, "period": "P7D", "active": true},
    {"channel": "email", "max_sends": 3, "period": "P7D", "active": true}
  ],
  "journeys": [
    {
      "slug": "abandoned-cart-sms",
      "name": "Abandoned cart: SMS",
      "trigger": "checkout_started",
      "exit_on": ["payment_finished"],
      "max_lateness": "P1D",
      "priority": 10,
      "transactional": false,
      "send_window": {"start": "09:00", "end": "21:00", "weekdays_only": true},
      "steps": [{"delay": "PT1H", "channel": "sms",
                 "template": {"body": "Your cart is waiting: {{ cart.checkout_url }}"}}]
    },
    {
      "slug": "receipt",
      "name": "Receipt",
      "trigger": "payment_finished",
      "transactional": true,
      "send_window": null,
      "steps": [{"delay": "PT0S", "channel": "email",
                 "template": {"subject": "Thank you", "body": "We received your payment."}}]
    }
  ]
}
"""


def test_the_documented_example_imports_and_exports_as_written():
    data = json.loads(README_EXAMPLE)

    summary = services.journeys_import(data=data)

    assert summary.created == ["abandoned-cart-sms", "receipt"]
    assert summary.caps_saved == ["1 SMS per 24 h", "3 SMS per 7 days", "3 emails per 7 days"]
    exported = journeys_export()
    assert sorted(exported["caps"], key=str) == sorted(data["caps"], key=str)
    by_slug = {j["slug"]: j for j in exported["journeys"]}
    assert by_slug["abandoned-cart-sms"]["send_window"] == data["journeys"][0]["send_window"]
    assert by_slug["receipt"]["send_window"] is None
    assert by_slug["receipt"]["transactional"] is True
