from __future__ import annotations

import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from journeys.models import Journey, JourneyStep

pytestmark = pytest.mark.django_db

SPEC = {
    "journeys": [
        {
            "slug": "signup-no-purchase-sms",
            "name": "Sign-up, no purchase: SMS",
            "trigger": "user_registered",
            "exit_on": ["payment_finished"],
            "dedupe": "first",
            "reentry": "once",
            "max_lateness": "PT2H",
            "active": True,
            "steps": [
                {
                    "delay": "PT30M",
                    "channel": "sms",
                    "template": {
                        "subject": None,
                        "body": "Hi {{ customer.first_name }}, {{ discount.code }} gives 10% off",
                    },
                    "discount": {"percent_off": 10, "valid_for": "P7D"},
                }
            ],
        }
    ]
}


def write(tmp_path, data, name="journeys.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def export(capsys) -> dict:
    capsys.readouterr()
    call_command("journeys_export")
    return json.loads(capsys.readouterr().out)


def test_import_then_export_round_trips(tmp_path, capsys):
    call_command("journeys_import", write(tmp_path, SPEC))

    exported = export(capsys)["journeys"]
    assert len(exported) == 1
    journey = exported[0]
    assert journey["slug"] == "signup-no-purchase-sms"
    assert journey["steps"][0]["delay"] == "PT30M"
    assert journey["steps"][0]["discount"] == {"percent_off": 10, "valid_for": "P7D"}
    assert journey["max_lateness"] == "PT2H"

    call_command("journeys_import", write(tmp_path, {"journeys": exported}, "again.json"))
    assert export(capsys)["journeys"] == exported
    assert Journey.objects.count() == 1 and JourneyStep.objects.count() == 1


def test_any_delay_of_zero_or_more_works(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["journeys"][0]["steps"][0]["delay"] = "PT3S"
    spec["journeys"][0]["steps"].append(dict(spec["journeys"][0]["steps"][0], delay="PT0S"))
    call_command("journeys_import", write(tmp_path, spec))

    assert [s.delay.total_seconds() for s in JourneyStep.objects.order_by("position")] == [3, 0]


def test_invalid_file_writes_nothing_and_names_journey_and_field(tmp_path):
    good = SPEC["journeys"][0]
    bad = dict(
        good,
        slug="broken",
        trigger="user_registerd",
        steps=[{"delay": "30 minutes", "channel": "fax", "template": {"body": "{{ custmer.x }}"}}],
    )
    with pytest.raises(CommandError) as error:
        call_command("journeys_import", write(tmp_path, {"journeys": [good, bad]}))

    message = str(error.value)
    assert "nothing imported" in message
    assert "journeys[1] (broken): trigger: unknown event type 'user_registerd'" in message
    assert "journeys[1] (broken): steps[0].delay:" in message
    assert "journeys[1] (broken): steps[0].channel:" in message
    assert (
        "journeys[1] (broken): steps[0].template.body: unknown variable {{ custmer.x }}" in message
    )
    assert Journey.objects.count() == 0


def test_template_syntax_error_is_refused(tmp_path):
    spec = json.loads(json.dumps(SPEC))
    spec["journeys"][0]["steps"][0]["template"]["body"] = "Hi {% if %}"
    with pytest.raises(CommandError, match="template syntax error"):
        call_command("journeys_import", write(tmp_path, spec))


def test_replace_deactivates_journeys_absent_from_the_file(tmp_path, capsys):
    other = dict(SPEC["journeys"][0], slug="other", name="Other")
    call_command("journeys_import", write(tmp_path, {"journeys": [SPEC["journeys"][0], other]}))

    call_command("journeys_import", write(tmp_path, SPEC, "one.json"))
    assert Journey.objects.get(slug="other").active

    call_command("journeys_import", write(tmp_path, SPEC, "one.json"), "--replace")
    assert not Journey.objects.get(slug="other").active
    assert Journey.objects.get(slug="signup-no-purchase-sms").active
    assert "deactivated: other" in capsys.readouterr().out


def test_dry_run_validates_and_writes_nothing(tmp_path, capsys):
    call_command("journeys_import", write(tmp_path, SPEC), "--dry-run")

    assert "would have created: signup-no-purchase-sms" in capsys.readouterr().out
    assert Journey.objects.count() == 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", 'must be an object {"journeys": [...]}'),
        ('{"journeys": [42]}', "journeys[0]: must be an object"),
    ],
)
def test_unreadable_files_are_refused_clearly(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CommandError, match=re.escape(expected)):
        call_command("journeys_import", str(path))


def test_missing_file_is_a_clear_error():
    with pytest.raises(CommandError, match=r"cannot read /nonexistent\.json"):
        call_command("journeys_import", "/nonexistent.json")
