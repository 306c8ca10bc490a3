"""Signals marketing sends; other apps (journeys) listen, marketing imports none of them.

`event_recorded` is sent *inside* the transaction that stores the event, with
`event=<Event>`: a receiver's writes (enrolments, cancellations) commit or roll back together
with the event, so a 2xx answer means the event and its consequences are both durable, and a
payment's cancellation takes its row locks before the payment commits (see journeys).
Receivers must be quick and must not call the outside world; they enqueue work on commit.
"""

from django.dispatch import Signal

event_recorded = Signal()
