"""A null provider that counts: every call appends the send id to a file of its process, so
the harness can prove each due send reached the provider exactly once."""

from __future__ import annotations

import os

from journeys.channels import OutgoingMessage

_fd: dict[int, int] = {}


class CountingChannel:
    def send(self, message: OutgoingMessage) -> str:
        pid = os.getpid()
        fd = _fd.get(pid)
        if fd is None:
            path = os.path.join(os.environ["NUDGE_BENCH_CALLS_DIR"], f"{pid}.calls")
            fd = _fd[pid] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, b"%d\n" % message.send_id)
        return f"null:{message.send_id}"
