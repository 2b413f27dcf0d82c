"""``eta_delay``: how long the raft:// transport keeps an ETA/countdown task delayed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coordination.celery.transport import MAX_ETA, eta_delay

NOW = 1_800_000_000.0


def test_no_eta_is_due_now() -> None:
    assert eta_delay({}, NOW) == 0.0
    assert eta_delay({"eta": None}, NOW) == 0.0


def test_aware_and_naive_etas() -> None:
    aware = datetime.fromtimestamp(NOW + 30, tz=UTC).isoformat()
    assert eta_delay({"eta": aware}, NOW) == pytest.approx(30)
    naive = datetime.fromtimestamp(NOW + 5).isoformat()  # local time, as with enable_utc off
    assert eta_delay({"eta": naive}, NOW) == pytest.approx(5)


def test_past_eta_is_due_now() -> None:
    past = datetime.fromtimestamp(NOW - 60, tz=UTC).isoformat()
    assert eta_delay({"eta": past}, NOW) == 0.0


def test_bad_or_too_distant_eta_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        eta_delay({"eta": "tomorrow"}, NOW)
    far = datetime.fromtimestamp(NOW, tz=UTC) + timedelta(seconds=MAX_ETA + 60)
    with pytest.raises(ValueError, match="7 days"):
        eta_delay({"eta": far.isoformat()}, NOW)
