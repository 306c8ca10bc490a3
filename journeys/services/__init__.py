"""Every write of the journey engine, one module per verb or noun:

- `exits`: the exit rule (its Python and SQL bodies side by side) and the cancellations it causes
- `enrolment`: the enrolment plan of a chunk of stored events
- `applying`: stored events applied to journeys on the workers (marketing's verbs lock them)
- `claiming`: the timer's claims of due and stuck sends
- `dispatch`: locked, re-checked, sent, recorded
- `codes`: discount codes: made at enrolment, pool codes handed out at dispatch, pool uploads,
  redemptions from payments
- `consent`: a customer's own opt-out waits for the dispatch of their in-flight sends
- `operators`: an operator's cancellations and deactivations, and a removed step's
- `journeys_as_code`: import and the demo journeys

The public verbs are re-exported here: `from journeys import services;
services.scheduled_sends_dispatch(...)`.
"""

from journeys.services.applying import events_apply, events_apply_pending
from journeys.services.claiming import scheduled_sends_claim_due, scheduled_sends_recover
from journeys.services.consent import scheduled_sends_await_dispatch
from journeys.services.dispatch import (
    scheduled_send_dispatch,
    scheduled_sends_dispatch,
    scheduled_sends_dispatch_chunks,
)
from journeys.services.enrolment import (
    EnrolmentPlan,
    discount_code_generate,
    enrolment_plan_apply,
)
from journeys.services.exits import (
    describe_event,
    event_cart_id,
    event_exits,
    events_exits_apply,
    scheduled_send_cancel_for_exit,
)
from journeys.services.feedback import ENGAGEMENTS, send_delivery_record, send_engagement_record
from journeys.services.journeys_as_code import (
    DEMO_JOURNEYS,
    ImportSummary,
    JourneyImportError,
    demo_journeys_ensure,
    journey_save_spec,
    journeys_import,
)
from journeys.services.operators import (
    SendNotCancellable,
    journeys_deactivate,
    scheduled_send_cancel,
    scheduled_send_cancel_for_steps,
)

__all__ = [
    "DEMO_JOURNEYS",
    "ENGAGEMENTS",
    "EnrolmentPlan",
    "ImportSummary",
    "JourneyImportError",
    "SendNotCancellable",
    "demo_journeys_ensure",
    "describe_event",
    "discount_code_generate",
    "enrolment_plan_apply",
    "event_cart_id",
    "event_exits",
    "events_apply",
    "events_apply_pending",
    "events_exits_apply",
    "journey_save_spec",
    "journeys_deactivate",
    "journeys_import",
    "scheduled_send_cancel",
    "scheduled_send_cancel_for_exit",
    "scheduled_send_cancel_for_steps",
    "scheduled_send_dispatch",
    "scheduled_sends_await_dispatch",
    "scheduled_sends_claim_due",
    "scheduled_sends_dispatch",
    "scheduled_sends_dispatch_chunks",
    "scheduled_sends_recover",
    "send_delivery_record",
    "send_engagement_record",
]
