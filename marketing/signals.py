"""Signals marketing sends: the extension point for the host project and other apps, which
listen; marketing imports none of them.

`events_stored` is sent *inside* the transaction that stores new events (a webhook's, a
batch's, a host event's), with `events=[<Event>, ...]` (one for a single event, many for a
batch). Its receivers do only what must hold from the moment the sender gets its 2xx: journeys
cancel the sends an exit event (a payment) ends, taking their row locks before the event
commits, so a racing dispatch either sees the cancellation or finishes first. They must be
quick (a few set-based statements), and never call the outside world: what takes longer
belongs after the commit (`transaction.on_commit`) or in a task.

`customer_opted_out` is sent *inside* the transaction of a customer's own opt-out (the
unsubscribe link: marketing.services.consent), with `customer=<Customer>` and `channel`, after
the consent is off. Journeys wait there for any dispatch chunk holding that customer's sends
on that channel: the opt-out's answer comes after every message already handed to the
provider, and any later dispatch re-reads the consent and skips the send.

What an event means for enrolments is not signalled: journeys applies stored events itself,
later, through marketing's verbs (marketing.services.applying).
"""

from django.dispatch import Signal

events_stored = Signal()
customer_opted_out = Signal()
