"""Every write to marketing data, and the one way events enter the system.

One module per job: canonical (an event's canonical JSON and hash), outcomes (results and
refusals, the answer shape), columns (the fields an event writes, from the models), profiles
(customers), consent (the unsubscribe link and a customer's own opt-out), purchases (carts,
payments), ingest (one event), batch (many), applying (the verbs journeys applies events with),
host_events (the host's own saves), access (the Marketer group). Callers use the names below:
`from marketing import services`.
"""

from marketing.services.access import (
    MARKETER_GROUP,
    MARKETER_PERMISSIONS,
    marketer_group_sync,
    marketer_user_ensure,
)
from marketing.services.applying import (
    event_apply_failed,
    events_claim_unapplied,
    events_lock_for_apply,
    events_mark_applied,
    events_unapplied_ids,
)
from marketing.services.batch import event_ingest_outcome, events_ingest_batch
from marketing.services.canonical import canonical_json, canonical_sha256
from marketing.services.consent import (
    UnsubscribeTokenInvalid,
    customer_resubscribe,
    customer_sms_opt_in,
    customer_sms_opt_out,
    customer_unsubscribe,
    unsubscribe_headers,
    unsubscribe_token,
    unsubscribe_token_read,
    unsubscribe_url,
)
from marketing.services.host_events import (
    HOST_EVENT_FOR_MODEL,
    event_record_host,
    host_event_payload,
    host_event_record,
)
from marketing.services.ingest import event_ingest, event_record
from marketing.services.outcomes import (
    BatchOutcome,
    CartOwnedByAnotherCustomer,
    EventConflict,
    EventInvalid,
    IngestResult,
    event_result,
)
from marketing.services.profiles import customer_upsert
from marketing.services.purchases import cart_upsert, payment_upsert
from marketing.services.suppression import address_suppress, suppressed_reason

__all__ = [
    "HOST_EVENT_FOR_MODEL",
    "MARKETER_GROUP",
    "MARKETER_PERMISSIONS",
    "BatchOutcome",
    "CartOwnedByAnotherCustomer",
    "EventConflict",
    "EventInvalid",
    "IngestResult",
    "UnsubscribeTokenInvalid",
    "address_suppress",
    "canonical_json",
    "canonical_sha256",
    "cart_upsert",
    "customer_resubscribe",
    "customer_sms_opt_in",
    "customer_sms_opt_out",
    "customer_unsubscribe",
    "customer_upsert",
    "event_apply_failed",
    "event_ingest",
    "event_ingest_outcome",
    "event_record",
    "event_record_host",
    "event_result",
    "events_claim_unapplied",
    "events_ingest_batch",
    "events_lock_for_apply",
    "events_mark_applied",
    "events_unapplied_ids",
    "host_event_payload",
    "host_event_record",
    "marketer_group_sync",
    "marketer_user_ensure",
    "payment_upsert",
    "suppressed_reason",
    "unsubscribe_headers",
    "unsubscribe_token",
    "unsubscribe_token_read",
    "unsubscribe_url",
]
