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
    CONSENT_FIELDS,
    OPT_OUT_FIELDS,
    ConsentHeldByOptOut,
    UnsubscribeTokenInvalid,
    consent_of,
    consent_text,
    customer_consent_set,
    customer_resubscribe,
    customer_sms_opt_in,
    customer_sms_opt_out,
    customer_unsubscribe,
    opted_out_reason,
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
from marketing.services.suppression import (
    address_digest,
    address_suppress,
    address_unsuppress,
    suppressed_reason,
    suppressions_delete,
)

__all__ = [
    "CONSENT_FIELDS",
    "HOST_EVENT_FOR_MODEL",
    "MARKETER_GROUP",
    "MARKETER_PERMISSIONS",
    "OPT_OUT_FIELDS",
    "BatchOutcome",
    "CartOwnedByAnotherCustomer",
    "ConsentHeldByOptOut",
    "EventConflict",
    "EventInvalid",
    "IngestResult",
    "UnsubscribeTokenInvalid",
    "address_digest",
    "address_suppress",
    "address_unsuppress",
    "canonical_json",
    "canonical_sha256",
    "cart_upsert",
    "consent_of",
    "consent_text",
    "customer_consent_set",
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
    "opted_out_reason",
    "payment_upsert",
    "suppressed_reason",
    "suppressions_delete",
    "unsubscribe_headers",
    "unsubscribe_token",
    "unsubscribe_token_read",
    "unsubscribe_url",
]
