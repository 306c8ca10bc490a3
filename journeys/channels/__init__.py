"""Where messages leave Nudge. The outbox channel records the message on the send row only;
real email/SMS providers plug in through NUDGE_CHANNELS (see README)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class OutgoingMessage:
    send_id: int
    channel: str
    recipient: str
    subject: str
    body: str
    # extra headers of an email (List-Unsubscribe, ...); channels without headers ignore them
    headers: dict[str, str] = field(default_factory=dict)
    # an SMS's segment count, as dispatch recorded it on the send (None for an email)
    segments: int | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable per send: a provider that honours it never delivers a retried send twice."""
        return f"nudge-send-{self.send_id}"


class ChannelError(Exception):
    """The provider refused or failed; `retryable` says whether trying again may help, and
    `retry_after` (seconds) when the provider said how long to wait (Retry-After): dispatch
    then hands the send out again no sooner than that. `throttled` when the provider said
    too many requests (429): then every worker holds its calls to that provider for the
    Retry-After (services.providers)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.throttled = throttled


class Channel(Protocol):
    """A provider. It may also have `batch()`, a context manager that dispatch enters once
    around each chunk (see channels_batch): the channel's sends inside it may share one
    connection, which it opens at the first send and closes on exit."""

    def send(self, message: OutgoingMessage) -> str:
        """Deliver the message; return the provider's message id. Raise ChannelError."""
        ...


class OutboxChannel:
    """Delivers nowhere: the rendered message stays on the ScheduledSend row."""

    provider = "outbox"

    def send(self, message: OutgoingMessage) -> str:
        return f"outbox:{message.send_id}"


def provider_name(channel: Channel) -> str:
    """What a send records as its provider: the channel's `provider` attribute (the SMS
    backend, the email backend), else its class name."""
    return str(getattr(channel, "provider", "") or type(channel).__name__)[:32]


@cache
def get_channel(name: str) -> Channel:
    path = settings.NUDGE_CHANNELS.get(name)
    if path is None:
        raise ChannelError(f"no channel configured for {name!r}", retryable=False)
    channel: Channel = import_string(path)()
    return channel


@contextmanager
def channels_batch(names: Iterable[str]) -> Iterator[None]:
    """Enter the `batch()` scope of each named channel that has one, for one dispatch chunk.
    A channel that cannot be loaded is left out here: each of its sends reports why."""
    with ExitStack() as stack:
        for name in sorted(set(names)):
            try:
                channel = get_channel(name)
            except Exception:  # noqa: S112 (get_channel raises it again for each send)
                continue
            batch = getattr(channel, "batch", None)
            if batch is not None:
                stack.enter_context(batch())
        yield
