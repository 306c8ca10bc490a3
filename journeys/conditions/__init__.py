"""The condition language of journeys: entry conditions (`Journey.conditions`, on the trigger
event and its customer) and step conditions (`JourneyStep.condition`, at dispatch).

A condition is JSON, one of:

    {"all": [<condition>, ...]}       every one holds (an empty list holds)
    {"any": [<condition>, ...]}       at least one holds
    {"field": "cart.total", "op": ">=", "value": 50}
    {"history": {"event": "payment_finished", "within": "P30D", "op": "=", "count": 0}}
    {"step": 0, "was": "opened"}      step conditions only: an earlier step of the enrolment

and `{}` (or nothing) means "always". The package is pure, one module per verb: `fields` (what
a condition may name, and the operators of each type), `checking` (`condition_problems`, when
saving), `words` (`condition_words`), `evaluation` (`condition_compile`, then evaluated
against `Facts` the caller loaded for a whole chunk, services.conditions): no query here.

Rules a reader may look for:
- A comparison on a value the event or customer does not carry (or carries blank) is false,
  `!=` and `not in` too; `is set` / `is not set` test presence.
- Text compares as written (case-sensitive); amounts as decimals.
- A history condition counts the customer's stored events of a type that occurred within the
  window that ends at the trigger's occurred_at (both ends included): the trigger itself is
  counted when it is of that type, an event that occurred after it never is.
"""

from __future__ import annotations

from journeys.conditions.checking import (
    condition_problems,
    condition_renumber,
    condition_step_positions,
)
from journeys.conditions.evaluation import (
    Compiled,
    Facts,
    HistoryNeed,
    StepState,
    condition_compile,
)
from journeys.conditions.fields import (
    ENTRY_FIELDS,
    MISSING,
    PROPERTIES,
    STEP_FIELDS,
    Scope,
    as_decimal,
    entry_scope,
    known_fields,
    step_scope,
)
from journeys.conditions.words import condition_expression, condition_words, duration_words

__all__ = [
    "ENTRY_FIELDS",
    "MISSING",
    "PROPERTIES",
    "STEP_FIELDS",
    "Compiled",
    "Facts",
    "HistoryNeed",
    "Scope",
    "StepState",
    "as_decimal",
    "condition_compile",
    "condition_expression",
    "condition_problems",
    "condition_renumber",
    "condition_step_positions",
    "condition_words",
    "duration_words",
    "entry_scope",
    "known_fields",
    "step_scope",
]
