"""The raft:// transport's inbox (``coordination.celery.delivery.Inbox``): its descriptor is
readable exactly while rows wait, whatever the interleaving of the pushing thread and the taker;
a stale wake-up would make kombu's event loop (level-triggered) spin without end."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from coordination.celery import delivery
from coordination.celery.delivery import Inbox


def _readable(inbox: Inbox) -> bool:
    return bool(select.select([inbox.fileno()], [], [], 0)[0])


def test_the_descriptor_is_readable_only_while_rows_wait():
    inbox = Inbox()
    assert not _readable(inbox) and not inbox.wait(0)
    inbox.put([{"n": 1}])
    inbox.put([{"n": 2}])
    assert _readable(inbox) and inbox.wait(0)
    assert inbox.take() == [{"n": 1}, {"n": 2}]
    assert not _readable(inbox) and inbox.take() == []
    inbox.give_back([{"n": 3}])
    assert _readable(inbox) and inbox.take() == [{"n": 3}]
    inbox.close()
    inbox.put([{"n": 4}])  # after close: dropped, no error


def test_a_pusher_and_a_taker_racing_leave_no_stale_wake_up(monkeypatch: pytest.MonkeyPatch):
    """The pusher is slowed down right before it writes its wake-up byte (as a thread switch
    there would), so the taker runs in between as often as it can."""
    write = os.write

    def slow_write(fd: int, data: bytes) -> int:
        time.sleep(0.0005)
        return write(fd, data)

    monkeypatch.setattr(delivery.os, "write", slow_write)
    inbox = Inbox()
    total, got = 2_000, []

    def push() -> None:
        for n in range(total):
            inbox.put([n])

    pusher = threading.Thread(target=push)
    pusher.start()
    while pusher.is_alive() or len(got) < total:
        if inbox.wait(0.1):
            got += inbox.take()
            if not inbox._rows:  # the invariant under test
                assert not _readable(inbox) or inbox._rows, "woken with nothing to take"
    pusher.join()
    assert got == list(range(total))
    assert not _readable(inbox)
    inbox.close()
