"""Signals marketing sends; other apps (journeys) listen, marketing imports none of them.

`events_stored` is sent *inside* the transaction that stores new events, with
`events=[<Event>, ...]` (one for a single event, many for a batch). Its receivers do only
what must hold from the moment the sender gets its 2xx: journeys cancel the sends an exit
event (a payment) ends, taking their row locks before the event commits, so a racing
dispatch either sees the cancellation or finishes first.
They must be quick (a few set-based statements), and never call the outside world.

`events_applying` is sent later, by services.events_apply on a messaging worker, with
`events=[<Event>, ...]` (a chunk of stored events, in id order, with `event.customer` set),
inside the transaction that marks them applied, with their customer rows locked: journeys
enrol the customers there. A receiver's writes commit or roll back together with the mark,
so an event is applied once. If the chunk fails, each of its events is sent again alone, in
its own transaction; an event whose receiver fails keeps its error and is retried.
"""

from django.dispatch import Signal

events_stored = Signal()
events_applying = Signal()
