"""Rate specifications, one parser for every side (clients, the Celery decorator, the API and
the state machine): ``"100/s"``, ``"100/m"``, ``"100/h"`` (Celery's own ``rate_limit`` format;
a bare ``"100"`` or ``100`` is per second, as in Celery), or a ``(count, period_ms)`` pair of
integers. Fractional counts (``"0.5/s"``) are refused: write ``"30/m"``.

A rate is kept as two integers, ``count`` tokens per ``period_ms`` milliseconds, never as a
float: the bucket's refill is then exact integer math on log time, identical on every replica.
Anything unusable (zero or negative count, unknown unit, a period or burst out of range) raises
``InvalidRate`` (HTTP 400); the state machine turns the same message into its rejection.
"""

from __future__ import annotations

import re
from typing import Any

from coordination.exceptions import InvalidRate
from coordination.primitives import limits

UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000}
_SPEC = re.compile(r"\s*([+-]?\d+)\s*(?:/\s*([A-Za-z]*)\s*)?")

__all__ = ["UNITS_MS", "check_burst", "check_rate", "default_burst", "parse_rate"]


def _invalid(message: str) -> InvalidRate:
    return InvalidRate("invalid_rate", message)


def parse_rate(spec: Any) -> tuple[int, int]:
    """``(count, period_ms)`` of ``spec`` (see module doc), checked against the limits."""
    if isinstance(spec, str):
        match = _SPEC.fullmatch(spec)
        if match is None:
            raise _invalid(f"rate {spec[:40]!r} is not of the form N/s, N/m or N/h")
        count, unit = int(match.group(1)), match.group(2)
        unit = "s" if unit is None else unit
        if unit not in UNITS_MS:
            raise _invalid(f"rate {spec[:40]!r}: unknown unit {unit!r} (s, m or h)")
        return check_rate(count, UNITS_MS[unit])
    if isinstance(spec, int) and not isinstance(spec, bool):  # Celery: a number is per second
        return check_rate(spec, UNITS_MS["s"])
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return check_rate(spec[0], spec[1])
    raise _invalid(f"rate must be a string such as '100/m' or (count, period_ms), not {spec!r}")


def _integer(value: Any, bounds: tuple[int, int], what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"{what} must be an integer, not {value!r}")
    lo, hi = bounds
    if value <= 0:
        raise _invalid(f"{what} must be positive, got {value}")
    if not lo <= value <= hi:
        raise _invalid(f"{what} must be in [{lo}, {hi}], got {value}")
    return value


def check_rate(count: Any, period_ms: Any) -> tuple[int, int]:
    return (
        _integer(count, limits.RATE_COUNT, "rate count"),
        _integer(period_ms, limits.RATE_PERIOD_MS, "rate period_ms"),
    )


def check_burst(burst: Any) -> int:
    return _integer(burst, limits.RATE_BURST, "burst")


def default_burst(count: int) -> int:
    """A bucket holds one period's worth by default (``"100/m"``: 100 at once, then one every
    0.6 s), as token buckets usually do; pass a smaller ``burst`` to smooth more."""
    return min(count, limits.RATE_BURST[1])
