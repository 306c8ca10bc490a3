"""The host project's own models as event sources, by configuration (settings.NUDGE_HOST_EVENTS).

Each entry names a model, the event type its save records, when it does so and how the event's
fields are read from the instance::

    {"model": "shop.Order", "event": "payment_finished", "on": "save",
     "when": {"status": "paid"}, "occurred_at": "paid_at",
     "fields": {"user.id": "customer_id", "user.email": "customer.email",
                "payment.id": "pk", "payment.amount": "total", "payment.currency": "currency"}}

A save that qualifies (not raw; the first one for "create"; `when` holds) is read at once,
into the webhook's JSON shape, and recorded by `services.host_event_record` after the host's
transaction commits, with the id "<app_label>.<model_name>:<pk>:<event type>" and source
"host": an object records each event once however often it is saved. An event its data
cannot make valid is logged, never raised into the host's request.

`host_sources_check` (a system check) reports every configuration error at startup;
`connect()` connects one `post_save` receiver per valid entry, and runs again when a test
overrides the settings (`setting_changed`), so a test configures sources like any setting.
Reading the settings at signal time instead would mean a receiver on every model's save.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error
from django.db import models, transaction
from django.db.models.signals import post_save
from django.utils import timezone
from rest_framework import serializers

from marketing import services
from marketing.api.serializers import EventSerializer
from marketing.models import EventType
from marketing.services.canonical import iso_utc

logger = logging.getLogger(__name__)

ON_CREATE = "create"
ON_SAVE = "save"
_KEYS = {"model", "event", "on", "when", "occurred_at", "fields"}
# Apps whose models already are event sources, or are Nudge's own records.
_NUDGE_APPS = {"marketing", "journeys", "media_tasks"}


@dataclass(frozen=True)
class HostSource:
    """One valid entry of NUDGE_HOST_EVENTS."""

    model: type[models.Model]
    event: str
    on: str
    when: dict[str, Any]
    occurred_at: str | None
    # event field path ("payment.amount") -> attribute path on the instance ("total")
    fields: dict[str, str]

    @property
    def dispatch_uid(self) -> str:
        return f"nudge-host-source:{self.model._meta.label_lower}:{self.event}"

    def event_id(self, pk: Any) -> str:
        return f"{self.model._meta.label_lower}:{pk}:{self.event}"


# --- configuration ---------------------------------------------------------------------------


def event_field_paths() -> dict[str, serializers.Field]:
    """The fields a host event may set, by dotted path in the webhook's JSON shape, from
    EventSerializer itself (id, type and occurred_at are Nudge's to set)."""
    paths: dict[str, serializers.Field] = {}

    def walk(prefix: str, fields: Iterable[tuple[str, serializers.Field]]) -> None:
        for name, field in fields:
            if isinstance(field, serializers.Serializer):
                walk(f"{prefix}{name}.", field.fields.items())
            else:
                paths[f"{prefix}{name}"] = field

    walk("", EventSerializer().fields.items())
    for top in ("id", "type", "occurred_at"):
        del paths[top]
    return paths


def _required_groups() -> dict[str, tuple[bool, list[str]]]:
    """For each part of the event (user, cart, payment): is it required, and its required
    fields."""
    groups: dict[str, tuple[bool, list[str]]] = {}
    for name, field in EventSerializer().fields.items():
        if isinstance(field, serializers.Serializer):
            required = [sub for sub, f in field.fields.items() if f.required]
            groups[name] = (bool(field.required), required)
    return groups


def _attribute_error(model: type[models.Model], path: str) -> str | None:
    """Why `path` ("customer.email", "customer_id", "pk") does not name a field reached
    through forward relations of `model`, or None when it does."""
    if not isinstance(path, str) or not path:
        return f"{path!r} is not an attribute path"
    current = model
    *relations, last = path.split(".")
    for name in relations:
        field = _model_field(current, name)
        if field is None or not field.concrete or not (field.many_to_one or field.one_to_one):
            return f"{current._meta.label}.{name} is not a foreign key or one-to-one field"
        current = field.related_model
    if last == "pk":
        return None
    field = _model_field(current, last)
    if field is None or not field.concrete:
        return f"{current._meta.label} has no field {last!r}"
    if field.is_relation and last == field.name:
        return f"{current._meta.label}.{last} is a relation: use {last}_id or {last}.<field>"
    return None


def _model_field(model: type[models.Model], name: str) -> Any:
    for field in model._meta.get_fields():
        if field.name == name or getattr(field, "attname", None) == name:
            return field
    return None


def _final_field(model: type[models.Model], path: str) -> Any:
    current: Any = model
    *relations, last = path.split(".")
    for name in relations:
        current = _model_field(current, name).related_model
    return current._meta.pk if last == "pk" else _model_field(current, last)


def _entry_parse(
    index: int, entry: Any, known_events: set[str]
) -> tuple[HostSource | None, list[CheckMessage]]:
    where = f"NUDGE_HOST_EVENTS[{index}]"
    if not isinstance(entry, dict):
        return None, [Error(f"{where} is not a dict.", id="nudge.E100")]
    errors: list[CheckMessage] = []
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        errors.append(
            Error(
                f"{where} has unknown keys: {', '.join(map(str, unknown))}.",
                hint=f"Keys: {', '.join(sorted(_KEYS))}.",
                id="nudge.E100",
            )
        )
    model = None
    label = entry.get("model")
    try:
        model = apps.get_model(label) if isinstance(label, str) else None
    except (LookupError, ValueError):
        model = None
    if model is None:
        errors.append(
            Error(
                f"{where}: 'model' {label!r} is not an installed model.",
                hint="Name it as app_label.ModelName, e.g. 'auth.User'.",
                id="nudge.E101",
            )
        )
    elif model._meta.swapped:
        errors.append(
            Error(
                f"{where}: {model._meta.label} is swapped for {model._meta.swapped}.",
                hint=f"Name {model._meta.swapped} instead.",
                id="nudge.E101",
            )
        )
        model = None
    elif model.__module__.split(".")[0] in _NUDGE_APPS:
        errors.append(
            Error(
                f"{where}: {model._meta.label} is one of Nudge's own models.",
                hint="Nudge's Customer, Cart and Payment record their events already.",
                id="nudge.E101",
            )
        )
        model = None
    event = entry.get("event")
    if event not in known_events:
        errors.append(
            Error(
                f"{where}: 'event' {event!r} is not a known event type.",
                hint="Use one of marketing.models.EventType or add it to NUDGE_EXTRA_EVENT_TYPES.",
                id="nudge.E102",
            )
        )
    on = entry.get("on", ON_CREATE)
    if on not in (ON_CREATE, ON_SAVE):
        errors.append(Error(f"{where}: 'on' is {on!r}, not 'create' or 'save'.", id="nudge.E103"))
    fields = entry.get("fields", {})
    known_fields = event_field_paths()
    if not isinstance(fields, dict):
        errors.append(Error(f"{where}: 'fields' is not a dict.", id="nudge.E104"))
        fields = {}
    for path in fields:
        if path not in known_fields:
            errors.append(
                Error(
                    f"{where}: 'fields' key {path!r} is not an event field.",
                    hint=f"Event fields: {', '.join(known_fields)}.",
                    id="nudge.E104",
                )
            )
    errors.extend(_required_fields_errors(where, event, fields))
    when = entry.get("when") or {}
    if not isinstance(when, dict):
        errors.append(Error(f"{where}: 'when' is not a dict.", id="nudge.E107"))
        when = {}
    occurred_at = entry.get("occurred_at")
    if model is not None:
        for path, attribute in fields.items():
            problem = _attribute_error(model, attribute)
            if problem:
                errors.append(Error(f"{where}: 'fields' {path!r}: {problem}.", id="nudge.E105"))
        for attribute in when:
            problem = _attribute_error(model, attribute)
            if problem:
                errors.append(Error(f"{where}: 'when': {problem}.", id="nudge.E107"))
        if occurred_at is not None:
            problem = _attribute_error(model, occurred_at)
            if not problem and not isinstance(
                _final_field(model, occurred_at), models.DateTimeField
            ):
                problem = f"{occurred_at} is not a DateTimeField"
            if problem:
                errors.append(Error(f"{where}: 'occurred_at': {problem}.", id="nudge.E108"))
    if errors or model is None:
        return None, errors
    return HostSource(
        model=model,
        event=str(event),
        on=str(on),
        when=dict(when),
        occurred_at=occurred_at,
        fields=dict(fields),
    ), []


def _required_fields_errors(where: str, event: Any, fields: dict[str, Any]) -> list[CheckMessage]:
    """The event fields the webhook's validation requires that `fields` leaves out: the user's
    id always, a part's required fields once any of its fields is mapped, and the part an
    event type requires (EventSerializer.validate decides which)."""
    errors: list[CheckMessage] = []
    mapped_groups = {path.split(".")[0] for path in fields if isinstance(path, str)}
    for group, (group_required, required) in _required_groups().items():
        if not (group_required or group in mapped_groups):
            continue
        missing = [f"{group}.{name}" for name in required if f"{group}.{name}" not in fields]
        if missing:
            errors.append(
                Error(
                    f"{where}: 'fields' must map {', '.join(missing)}.",
                    hint="The webhook's validation requires it.",
                    id="nudge.E106",
                )
            )
    if isinstance(event, str):
        present = {group: {"present": True} for group in mapped_groups}
        try:
            EventSerializer().validate({"type": event, **present})
        except serializers.ValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"event": exc.detail}
            for group, messages in detail.items():
                errors.append(
                    Error(
                        f"{where}: {group}: {' '.join(map(str, messages))}; map {group}.* fields.",
                        id="nudge.E106",
                    )
                )
    return errors


def _source_event_types() -> set[str]:
    """The types a host source may record: built in, and NUDGE_EXTRA_EVENT_TYPES."""
    return set(EventType.values) | set(settings.NUDGE_EXTRA_EVENT_TYPES)


def host_sources_parse(entries: Any) -> tuple[list[HostSource], list[CheckMessage]]:
    """The valid entries of NUDGE_HOST_EVENTS, and the errors of the others."""
    if not isinstance(entries, list | tuple):
        return [], [Error("NUDGE_HOST_EVENTS is not a list.", id="nudge.E100")]
    known = _source_event_types()
    sources: list[HostSource] = []
    errors: list[CheckMessage] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        source, problems = _entry_parse(index, entry, known)
        errors.extend(problems)
        if source is None:
            continue
        if source.dispatch_uid in seen:
            errors.append(
                Error(
                    f"NUDGE_HOST_EVENTS[{index}]: {source.model._meta.label} records "
                    f"{source.event} in an earlier entry too.",
                    hint="Both would record the same event id; keep one entry.",
                    id="nudge.E109",
                )
            )
            continue
        seen.add(source.dispatch_uid)
        sources.append(source)
    return sources, errors


def host_sources_check(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """System check: every NUDGE_HOST_EVENTS entry is valid (registered in marketing.checks)."""
    return host_sources_parse(settings.NUDGE_HOST_EVENTS)[1]


# --- reading an instance ---------------------------------------------------------------------


def _value_at(instance: models.Model, path: str) -> Any:
    """The value at an attribute path; None when a relation on the way is empty."""
    value: Any = instance
    for name in path.split("."):
        if value is None:
            return None
        value = getattr(value, name)
    return value


def _json_value(value: Any) -> Any:
    """A value as the webhook would carry it: strings for ids, amounts and times."""
    if value is None or isinstance(value, bool | str | list | dict):
        return value
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def host_event_payload_build(
    source: HostSource, instance: models.Model, *, occurred_at: datetime | None
) -> dict[str, Any]:
    """The event `instance` stands for, in the webhook's JSON shape, None values left out;
    without "occurred_at" when `occurred_at` is None (the commit sets it)."""
    payload: dict[str, Any] = {"id": source.event_id(instance.pk), "type": source.event}
    if occurred_at is not None:
        payload["occurred_at"] = iso_utc(occurred_at)
    for path, attribute in source.fields.items():
        value = _json_value(_value_at(instance, attribute))
        if value is None:
            continue
        *parents, leaf = path.split(".")
        node = payload
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return payload


def _qualifies(source: HostSource, instance: models.Model, created: bool) -> bool:
    if source.on == ON_CREATE and not created:
        return False
    return all(_value_at(instance, path) == value for path, value in source.when.items())


# --- the receivers ---------------------------------------------------------------------------


def receiver_for(source: HostSource) -> Callable[..., None]:
    """The post_save receiver of one source: read the instance now, record on commit."""

    def record_host_source_event(
        sender: type, instance: models.Model, created: bool, raw: bool = False, **kwargs: Any
    ) -> None:
        if raw or not _qualifies(source, instance, created):
            return
        occurred_at = _value_at(instance, source.occurred_at) if source.occurred_at else None
        payload = host_event_payload_build(source, instance, occurred_at=occurred_at)

        def record() -> None:
            try:
                # without a time of its own, the event's time is the commit's
                services.host_event_record(
                    payload={"occurred_at": iso_utc(timezone.now()), **payload}
                )
            except services.EventInvalid as exc:
                _not_recorded(source, instance, "; ".join(_error_lines(exc.errors)))
            except services.CartOwnedByAnotherCustomer as exc:
                _not_recorded(source, instance, str(exc))

        # robust: whatever happens here, the host's committed save stands and its request goes on
        transaction.on_commit(record, using=kwargs.get("using"), robust=True)

    return record_host_source_event


def _error_lines(errors: Any, path: str = "") -> list[str]:
    """DRF's nested errors as "user.email: Enter a valid email address." lines."""
    if isinstance(errors, dict):
        return [
            line
            for key, value in errors.items()
            for line in _error_lines(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(errors, list):
        return [line for item in errors for line in _error_lines(item, path)]
    return [f"{path}: {errors}" if path else str(errors)]


def _not_recorded(source: HostSource, instance: models.Model, why: str) -> None:
    logger.error(
        "%s %s: %s not recorded: %s", source.model._meta.label, instance.pk, source.event, why
    )


# dispatch_uid -> model, for disconnect()
_connected: dict[str, type[models.Model]] = {}


def connect() -> None:
    """Connect a post_save receiver for each valid entry of NUDGE_HOST_EVENTS (the others are
    reported by the system checks), replacing those connected before."""
    disconnect()
    for source in host_sources_parse(settings.NUDGE_HOST_EVENTS)[0]:
        post_save.connect(
            receiver_for(source), sender=source.model, weak=False, dispatch_uid=source.dispatch_uid
        )
        _connected[source.dispatch_uid] = source.model


def disconnect() -> None:
    for dispatch_uid, model in _connected.items():
        post_save.disconnect(sender=model, dispatch_uid=dispatch_uid)
    _connected.clear()


def settings_changed(setting: str, **kwargs: Any) -> None:
    """`setting_changed` receiver: a test that overrides the sources gets them connected."""
    if setting in ("NUDGE_HOST_EVENTS", "NUDGE_EXTRA_EVENT_TYPES"):
        connect()
