"""Where messages leave Nudge. The outbox channel records the message on the send row only;
real email/SMS providers plug in through NUDGE_CHANNELS (see README)."""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def idempotency_key(self) -> str:
        """Stable per send: a provider that honours it never delivers a retried send twice."""
        return f"nudge-send-{self.send_id}"


class ChannelError(Exception):
    """The provider refused or failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Channel(Protocol):
    def send(self, message: OutgoingMessage) -> str:
        """Deliver the message; return the provider's message id. Raise ChannelError."""
        ...


class OutboxChannel:
    """Delivers nowhere: the rendered message stays on the ScheduledSend row."""

    def send(self, message: OutgoingMessage) -> str:
        return f"outbox:{message.send_id}"


@cache
def get_channel(name: str) -> Channel:
    path = settings.NUDGE_CHANNELS.get(name)
    if path is None:
        raise ChannelError(f"no channel configured for {name!r}", retryable=False)
    channel: Channel = import_string(path)()
    return channel
