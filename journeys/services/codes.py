"""Discount codes, the writes: a send's code at enrolment, pool codes handed out at dispatch,
the upload of a pool's codes, and the redemption of codes by payments (the rules are
journeys.codes).

- **Enrolment** copies the step's rule onto the send (value, currency, pool): a later edit of
  the step does not change what an issued code is worth. A pending send of a step without a
  pool gets its generated code there (prefix + 10 characters from `secrets`); a send that is
  not pending (cancelled, stale, held out) gets none.
- **Dispatch** hands a pool's codes out under the sends' row locks, one statement for a
  take's sends (`pool_codes_take`), and gives back, in the same transaction, those of sends
  refused meanwhile (`pool_codes_give_back`): a cancelled send never consumes a pool code. A
  send that already has its code (a retry) keeps it. A send whose pool is empty is skipped,
  "no discount code: pool 'winter' is empty".
- **Redemption** (`code_redemptions_record`, from the apply path): each payment_finished
  whose payment carries a code is recorded once (CodeRedemption, one per payment): redeemed
  (the first payment of a sent, unexpired code: the send's discount_redeemed_at and
  discount_payment), duplicate, expired, void or unknown.
"""

from __future__ import annotations

import csv
import io
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now

from journeys.codes import (
    CODE_MAX_LENGTH,
    CODE_RE,
    GENERATED_LENGTH,
    CodeState,
    code_normalise,
    code_state,
)
from journeys.models import CodeRedemption, DiscountCodePool, JourneyStep, PooledCode, ScheduledSend
from journeys.sqlnames import sql
from marketing.models import Event, Payment

logger = logging.getLogger(__name__)

Status = ScheduledSend.Status
Outcome = CodeRedemption.Outcome
DISCOUNT_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
PAYMENT_EVENT = "payment_finished"


# --- enrolment ------------------------------------------------------------------------------


def discount_code_generate(prefix: str = "") -> str:
    """A fresh code from `secrets`: the prefix, then 32^10 (about 10^15) possibilities,
    unique in the database (ScheduledSend's constraint)."""
    return prefix + "".join(secrets.choice(DISCOUNT_ALPHABET) for _ in range(GENERATED_LENGTH))


def send_discount_fields(step: JourneyStep, *, status: str) -> dict[str, Any]:
    """The discount fields of a new send of `step` created with `status`: the step's value
    copied, and a generated code for a pending send of a step without a pool."""
    has_rule = step.discount_percent is not None or step.discount_amount is not None
    if not has_rule:
        return {"discount_code": None, "discount_percent": None}
    pooled = step.discount_pool_id is not None
    return {
        "discount_code": (
            discount_code_generate(step.discount_prefix)
            if status == Status.PENDING and not pooled
            else None
        ),
        "discount_percent": step.discount_percent,
        "discount_amount": step.discount_amount,
        "discount_currency": step.discount_currency if step.discount_amount is not None else "",
        "discount_pool_id": step.discount_pool_id,
    }


# --- dispatch -------------------------------------------------------------------------------

# A take's sends that need a pool code get one each, in one statement: each pool's first free
# codes (its partial index pooled_code_free, in id order), locked with SKIP LOCKED so that two
# dispatching workers never wait for, nor take, the same code; paired with the sends by rank
# within the pool, and copied onto the send (ScheduledSend.discount_code, unique).
_POOL_TAKE_SQL = sql("""
WITH wanted AS (
    SELECT w.send_id, w.pool_id,
           row_number() OVER (PARTITION BY w.pool_id ORDER BY w.send_id) AS n
      FROM unnest(%s::bigint[], %s::bigint[]) AS w(send_id, pool_id)
), free AS (
    SELECT f.id, f.pool_id, row_number() OVER (PARTITION BY f.pool_id ORDER BY f.id) AS n
      FROM (SELECT pool_id, count(*) AS k FROM wanted GROUP BY pool_id) p,
           LATERAL (SELECT c.id, c.pool_id FROM {pooled_code} c
                     WHERE c.pool_id = p.pool_id AND c.send_id IS NULL
                     ORDER BY c.id LIMIT p.k FOR UPDATE SKIP LOCKED) f
), taken AS (
    UPDATE {pooled_code} c SET send_id = wanted.send_id, taken_at = now()
      FROM free JOIN wanted ON wanted.pool_id = free.pool_id AND wanted.n = free.n
     WHERE c.id = free.id
    RETURNING c.send_id, c.code
)
UPDATE {send} s SET discount_code = taken.code
  FROM taken
 WHERE s.id = taken.send_id
RETURNING s.id, s.discount_code
""")

# The pool codes taken in this transaction by sends that are not going out after all:
# free again, and off the send.
_POOL_GIVE_BACK_SQL = sql("""
WITH back AS (
    UPDATE {send} SET discount_code = NULL WHERE id = ANY(%s::bigint[]) RETURNING id
)
UPDATE {pooled_code} c SET send_id = NULL, taken_at = NULL FROM back WHERE c.send_id = back.id
""")


@dataclass
class PoolTake:
    """What a take's pool codes came to: the sends that got a code now, and the reason of
    each send that needs one and got none."""

    taken: set[int] = field(default_factory=set)
    missing: dict[int, str] = field(default_factory=dict)


def pool_codes_take(*, sends: list[ScheduledSend]) -> PoolTake:
    """Give each locked send that needs a pool code (its step's pool, no code yet) one of
    the pool's free codes: one statement for all of them, none when no send needs one. Runs
    in the dispatch's transaction, under the sends' row locks."""
    needing = [s for s in sends if s.discount_pool_id is not None and not s.discount_code]
    result = PoolTake()
    if not needing:
        return result
    ids = [s.pk for s in needing]
    pools = [s.discount_pool_id for s in needing]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_POOL_TAKE_SQL, [ids, pools])
            codes = dict(cursor.fetchall())
    else:
        codes = _pool_codes_take_orm(needing)
    for send in needing:
        code = codes.get(send.pk)
        if code is not None:
            send.discount_code = code
            result.taken.add(send.pk)
    short = {s.discount_pool_id for s in needing if s.pk not in result.taken}
    if short:
        names: dict[int | None, str] = dict(
            DiscountCodePool.objects.filter(pk__in=short).values_list("pk", "name")
        )
        for send in needing:
            if send.pk not in result.taken:
                name = names.get(send.discount_pool_id, f"#{send.discount_pool_id}")
                result.missing[send.pk] = f"no discount code: pool '{name}' is empty"
        logger.warning("discount code pool(s) empty: %s", ", ".join(sorted(names.values())))
    return result


def _pool_codes_take_orm(needing: list[ScheduledSend]) -> dict[int, str]:
    """SQLite (one writer at a time): the same, one code per send."""
    codes: dict[int, str] = {}
    for send in needing:
        pooled = (
            PooledCode.objects.filter(pool_id=send.discount_pool_id, send=None).order_by("pk")
        ).first()
        if pooled is None:
            continue
        PooledCode.objects.filter(pk=pooled.pk).update(send_id=send.pk, taken_at=Now())
        ScheduledSend.objects.filter(pk=send.pk).update(discount_code=pooled.code)
        codes[send.pk] = pooled.code
    return codes


def pool_codes_give_back(*, sends: list[ScheduledSend], take: PoolTake) -> None:
    """Free the codes taken by `take` for sends that are not going out (refused, or failed
    before their call): they were never shown to anyone. A send still in flight (called, or
    waiting for a retry) keeps its code."""
    back = [s for s in sends if s.pk in take.taken and s.status != Status.SENDING]
    if not back:
        return
    for send in back:
        send.discount_code = None
    ids = [s.pk for s in back]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_POOL_GIVE_BACK_SQL, [ids])
        return
    PooledCode.objects.filter(send_id__in=ids).update(send=None, taken_at=None)
    ScheduledSend.objects.filter(pk__in=ids).update(discount_code=None)


# --- pools: upload --------------------------------------------------------------------------

UPLOAD_MAX_BYTES = 5 * 1024 * 1024
_QUERY_CHUNK = 5000


class PoolUploadRefused(Exception):
    """The file itself cannot be read as codes: nothing of it is added."""


@dataclass
class PoolUploadReport:
    added: int
    lines: int
    problems: list[str]  # "line 3: ...", in line order


def pooled_codes_upload(*, pool: DiscountCodePool, data: bytes) -> PoolUploadReport:
    """Add a file's codes to `pool`: one code per line, or a CSV with a `code` column. Codes
    are upper-cased; an invalid code, a repeat within the file, or a code already in a pool
    or already a send's is reported with its line number, and the valid ones are added (all
    of them in one transaction). A file that cannot be read (not UTF-8 text, not CSV, too
    large, no codes, several columns without one named `code`) raises PoolUploadRefused and
    adds nothing."""
    rows = _upload_rows(data)
    problems: dict[int, str] = {}
    seen: dict[str, int] = {}
    for line, raw in rows:
        code = code_normalise(raw)
        if not code:
            problems[line] = "no code"
        elif not CODE_RE.fullmatch(code):
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            problems[line] = (
                f"{shown!r} is not a valid code (letters, digits, '-' and '_', at most "
                f"{CODE_MAX_LENGTH} characters)"
            )
        elif code in seen:
            problems[line] = f"{code} repeats line {seen[code]}"
        else:
            seen[code] = line
    codes = list(seen)
    for start in range(0, len(codes), _QUERY_CHUNK):
        chunk = codes[start : start + _QUERY_CHUNK]
        for code, name in PooledCode.objects.filter(code__in=chunk).values_list(
            "code", "pool__name"
        ):
            problems[seen.pop(code)] = f"{code} is already in pool '{name}'"
        for code in ScheduledSend.objects.filter(discount_code__in=chunk).values_list(
            "discount_code", flat=True
        ):
            if code in seen:
                problems[seen.pop(code)] = f"{code} is already a send's discount code"
    try:
        with transaction.atomic():
            PooledCode.objects.bulk_create(
                [PooledCode(pool=pool, code=code) for code in seen], batch_size=_QUERY_CHUNK
            )
    except IntegrityError as exc:
        raise PoolUploadRefused(
            "some of these codes were added meanwhile (another upload?): nothing was added, "
            "upload the file again"
        ) from exc
    return PoolUploadReport(
        added=len(seen),
        lines=len(rows),
        problems=[f"line {line}: {problems[line]}" for line in sorted(problems)],
    )


def _upload_rows(data: bytes) -> list[tuple[int, str]]:
    """(line number, raw code) for each non-empty row of the file, the header left out."""
    if len(data) > UPLOAD_MAX_BYTES:
        raise PoolUploadRefused(f"the file is over {UPLOAD_MAX_BYTES // (1024 * 1024)} MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PoolUploadRefused(f"line {line}: not UTF-8 text") from exc
    if "\x00" in text:
        raise PoolUploadRefused("not a text file (it contains NUL bytes)")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise PoolUploadRefused(f"line {reader.line_num}: not CSV ({exc})") from exc
    if not rows:
        raise PoolUploadRefused("the file holds no codes")
    header = [cell.strip().lower() for cell in rows[0][1]]
    column = 0
    if "code" in header:
        column = header.index("code")
        rows = rows[1:]
    elif len(header) > 1:
        raise PoolUploadRefused(
            "line 1: several columns and none is named 'code' (one code per line, or a CSV "
            "with a 'code' column)"
        )
    if not rows:
        raise PoolUploadRefused("the file holds no codes, only its header")
    return [(line, row[column] if column < len(row) else "") for line, row in rows]


# --- redemption -----------------------------------------------------------------------------

# First redemptions, in one statement: the sends locked in id order (two appliers of
# different customers may redeem the same shared code), and only those not redeemed yet,
# re-checked after the lock: the ids returned are the redemptions that counted.
_REDEEM_SQL = sql("""
UPDATE {send} s
   SET discount_redeemed_at = v.at, discount_payment_id = v.payment, updated_at = now()
  FROM unnest(%s::bigint[], %s::timestamptz[], %s::bigint[]) AS v(id, at, payment),
       (SELECT id FROM {send}
         WHERE id = ANY(%s::bigint[]) AND discount_redeemed_at IS NULL
         ORDER BY id FOR UPDATE) l
 WHERE s.id = v.id AND s.id = l.id
RETURNING s.id
""")


def _payment_of(event: Event) -> tuple[str, str] | None:
    """(payment id, code) of a payment_finished event whose payment carries a code."""
    if event.type != PAYMENT_EVENT or not isinstance(event.payload, dict):
        return None
    payment = event.payload.get("payment")
    if not isinstance(payment, dict):
        return None
    payment_id, code = payment.get("id"), payment.get("discount_code")
    if not isinstance(payment_id, str) or not isinstance(code, str) or not code.strip():
        return None
    return payment_id, code


def code_redemptions_record(*, events: list[Event]) -> list[CodeRedemption]:
    """Record what each payment_finished event's code means, once per payment (applying an
    event again, or another event about the same payment, records nothing new). Reads are
    one query for the chunk's payments (with whether they were recorded) and one for the
    sends of their codes; writes one UPDATE for the first redemptions and one INSERT.
    Returns the new records."""
    first: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.pk):
        if (found := _payment_of(event)) is not None:
            first.setdefault(found[0], event)
    if not first:
        return []
    payments = list(
        Payment.objects.filter(external_id__in=list(first), redemption__isnull=True).exclude(
            discount_code=""
        )
    )
    if not payments:
        return []
    codes = {code_normalise(p.discount_code) for p in payments}
    sends = {
        s.discount_code: s
        for s in ScheduledSend.objects.filter(discount_code__in=codes)
        .select_related("discount_payment")
        .only(
            "id",
            "status",
            "reason",
            "customer_id",
            "journey_id",
            "discount_code",
            "discount_expires_at",
            "discount_redeemed_at",
            "discount_payment__external_id",
        )
    }
    payments.sort(key=lambda p: first[p.external_id].pk)
    records: list[CodeRedemption] = []
    redeeming: dict[int, CodeRedemption] = {}  # send id -> its first redemption in the chunk
    for payment in payments:
        at = first[payment.external_id].occurred_at
        code = code_normalise(payment.discount_code)
        record = CodeRedemption(payment=payment, code=code, at=at)
        records.append(record)
        send = sends.get(code)
        if send is None:
            record.outcome, record.detail = Outcome.UNKNOWN, "no send has this code"
            continue
        record.send = send
        state, why = code_state(send, at)
        if send.pk in redeeming or state == CodeState.REDEEMED:
            earlier = redeeming.get(send.pk)
            by = earlier.payment.external_id if earlier else _redeemer(send)
            record.outcome, record.detail = Outcome.DUPLICATE, f"redeemed before by payment {by}"
        elif state == CodeState.VOID:
            record.outcome, record.detail = Outcome.VOID, why
        elif state == CodeState.EXPIRED:
            assert send.discount_expires_at is not None
            record.outcome = Outcome.EXPIRED
            record.detail = f"expired at {send.discount_expires_at.isoformat()}"
        else:
            record.outcome = Outcome.REDEEMED
            if payment.customer_id != send.customer_id:
                record.detail = "paid by another customer than the one it was sent to"
            redeeming[send.pk] = record
    if redeeming:
        counted = _redemptions_save(redeeming)
        for send_id, record in redeeming.items():
            if send_id not in counted:  # another applier's payment redeemed it meanwhile
                record.outcome = Outcome.DUPLICATE
                record.detail = "redeemed meanwhile by another payment"
    CodeRedemption.objects.bulk_create(records, ignore_conflicts=True)
    return records


def _redeemer(send: ScheduledSend) -> str:
    payment = send.discount_payment
    return payment.external_id if payment is not None else "(unknown)"


def _redemptions_save(redeeming: dict[int, CodeRedemption]) -> set[int]:
    """Mark the sends redeemed (only those not redeemed yet); the ids that were."""
    ids = sorted(redeeming)
    ats: list[datetime] = [redeeming[i].at for i in ids]
    payments = [redeeming[i].payment.pk for i in ids]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_REDEEM_SQL, [ids, ats, payments, ids])
            return {row[0] for row in cursor.fetchall()}
    counted = set()
    for send_id, at, payment_id in zip(ids, ats, payments, strict=True):
        if ScheduledSend.objects.filter(pk=send_id, discount_redeemed_at=None).update(
            discount_redeemed_at=at, discount_payment_id=payment_id, updated_at=Now()
        ):
            counted.add(send_id)
    return counted
