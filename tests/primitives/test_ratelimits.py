"""The rate-limit primitive, driven through ``CoordinationMachine`` with msgpack commands and a
hand-moved log clock: refill math in integer ms, burst, the exact countdown, changing a key's
rate, dropping full buckets on ticks, limits and bad input, snapshot round trips, determinism,
the rate parser, and a property test against a plain reference model in fractions."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from search_depth import examples

from coordination.exceptions import InvalidRate
from coordination.primitives import limits
from coordination.primitives.machine import CoordinationMachine
from coordination.primitives.ratelimits import RateLimits
from coordination.primitives.rates import default_burst, parse_rate
from raft_node.core.fsm import CommandRejected


class Node:
    """One replica's state machine, fed by hand."""

    def __init__(self) -> None:
        self.m = CoordinationMachine()
        self.index = 0
        self.now = 1_000

    @property
    def part(self) -> RateLimits:
        part = self.m.part("ratelimits")
        assert isinstance(part, RateLimits)
        return part

    def do(self, op: str, *args: Any) -> Any:
        self.index += 1
        return self.m.apply(self.index, msgpack.packb([op, *args], use_bin_type=True), self.now)

    def take(self, key: str, count: int, period: int, burst: int, n: int = 1) -> dict:
        return self.do("ratelimit.take", key, count, period, burst, n)

    def query(self, op: str, *args: Any) -> Any:
        return self.m.query(msgpack.packb([op, *args], use_bin_type=True))

    def tick(self, advance_ms: int = 0) -> None:
        self.now += advance_ms
        self.index += 1
        self.m.apply(self.index, self.m.tick_command(), self.now)

    def rejected(self, code: str, *args: Any) -> str:
        with pytest.raises(CommandRejected) as info:
            self.do("ratelimit.take", *args)
        assert info.value.code == code, info.value.message
        return info.value.message


@pytest.fixture
def node() -> Node:
    return Node()


def state_bytes(machine: CoordinationMachine) -> bytes:
    return msgpack.packb(machine.part("ratelimits").to_state(), use_bin_type=True)


# -- refill, burst and the countdown --------------------------------------------------------------


def test_a_new_bucket_starts_full_and_grants_its_burst_then_counts_down(node: Node) -> None:
    for left in range(4, -1, -1):
        answer = node.take("api", 10, 1000, 5)  # 10/s, burst 5
        assert answer == {"granted": True, "wait_ms": 0, "tokens": left, "burst": 5}
    assert node.take("api", 10, 1000, 5) == {
        "granted": False,
        "wait_ms": 100,  # one token per 100 ms
        "tokens": 0,
        "burst": 5,
    }
    node.now += 99
    refused = node.take("api", 10, 1000, 5)
    assert not refused["granted"] and refused["wait_ms"] == 1
    assert refused["tokens"] == pytest.approx(0.99)  # a refusal takes nothing
    node.now += 1
    assert node.take("api", 10, 1000, 5)["granted"]


def test_the_countdown_is_exact_for_rates_that_do_not_divide_evenly(node: Node) -> None:
    assert node.take("m", 100, 60_000, 1)["granted"]  # "100/m", burst 1: 600 ms per token
    assert node.take("m", 100, 60_000, 1)["wait_ms"] == 600
    node.now += 599
    assert node.take("m", 100, 60_000, 1)["wait_ms"] == 1
    node.now += 1
    assert node.take("m", 100, 60_000, 1)["granted"]
    # 3 per 1000 ms: a token every 333.33 ms; the wait rounds up so the retry succeeds.
    assert node.take("odd", 3, 1000, 1)["granted"]
    wait = node.take("odd", 3, 1000, 1)["wait_ms"]
    assert wait == 334
    node.now += wait - 1
    assert not node.take("odd", 3, 1000, 1)["granted"]
    node.now += 1
    assert node.take("odd", 3, 1000, 1)["granted"]


def test_taking_several_tokens_waits_for_all_of_them(node: Node) -> None:
    assert node.take("bulk", 10, 1000, 10, 8)["granted"]
    answer = node.take("bulk", 10, 1000, 10, 5)
    assert not answer["granted"] and answer["wait_ms"] == 300  # 2 there, 3 more at 100 ms each
    node.now += 300
    assert node.take("bulk", 10, 1000, 10, 5) == {
        "granted": True,
        "wait_ms": 0,
        "tokens": 0,
        "burst": 10,
    }


def test_refill_never_exceeds_the_burst(node: Node) -> None:
    node.take("cap", 1000, 1000, 3, 3)
    node.now += 3_600_000  # an hour idle (no tick dropped it): still only 3 tokens
    for _ in range(3):
        assert node.take("cap", 1000, 1000, 3)["granted"]
    assert not node.take("cap", 1000, 1000, 3)["granted"]


def test_the_latest_take_sets_the_rate_and_tokens_carry_over(node: Node) -> None:
    node.take("k", 10, 1000, 10, 4)  # 6 left
    assert node.take("k", 600, 60_000, 10)["tokens"] == 5  # same rate as a per-minute count
    assert node.take("k", 1, 1000, 2)["tokens"] == 1  # burst lowered to 2: capped, one taken
    view = node.query("ratelimit.get", "k")
    assert (view["count"], view["period_ms"], view["burst"]) == (1, 1000, 2)


def test_inspect_lists_and_stats_use_the_last_log_time(node: Node) -> None:
    node.take("b:1", 10, 1000, 10, 10)
    node.take("a:1", 1, 1000, 1)
    node.take("other", 1, 1000, 1)
    node.now += 500
    node.take("b:1", 10, 1000, 10, 1)  # the entry moves the log time: 5 refilled, 1 taken
    view = node.query("ratelimit.get", "b:1")
    assert view == {
        "key": "b:1",
        "count": 10,
        "period_ms": 1000,
        "burst": 10,
        "tokens": 4,
        "full_in_ms": 600,
        "updated_ms": node.now,
    }
    assert node.query("ratelimit.get", "never") is None
    assert [v["key"] for v in node.query("ratelimit.list", "", 100)] == ["a:1", "b:1", "other"]
    assert [v["key"] for v in node.query("ratelimit.list", "b:", 100)] == ["b:1"]
    assert [v["key"] for v in node.query("ratelimit.list", "", 1)] == ["a:1"]
    assert node.query("ratelimit.stats") == {
        "buckets": 3,
        "dropped": 0,
        "max_buckets": limits.RATELIMIT_BUCKETS_MAX,
    }


# -- bounded memory -------------------------------------------------------------------------------


def test_a_bucket_full_again_is_dropped_by_the_tick_at_its_rounded_deadline(node: Node) -> None:
    node.now = 10_000
    node.take("idle", 10, 1000, 5, 5)  # full again at 10_500: dropped at 11_000
    assert node.m.next_deadline() == 11_000
    node.tick(999)  # 10_999: not yet
    assert "idle" in node.part.buckets
    node.tick(1)
    assert "idle" not in node.part.buckets and node.part.dropped == 1
    assert node.m.next_deadline() is None
    # Dropping changed nothing observable: a new bucket starts full, as the old one was.
    assert node.take("idle", 10, 1000, 5)["tokens"] == 4


def test_a_busy_bucket_is_kept_and_its_deadline_moves(node: Node) -> None:
    node.now = 10_000
    node.take("busy", 10, 1000, 5, 5)
    node.now = 10_900
    node.take("busy", 10, 1000, 5, 5)  # drained again: full at 11_400, dropped at 12_000
    node.tick(100)  # 11_000: the old deadline passed, but it moved
    assert "busy" in node.part.buckets
    assert node.m.next_deadline() == 12_000


def test_buckets_going_idle_together_share_one_tick(node: Node) -> None:
    node.now = 20_000
    for i in range(50):
        node.now += 3
        node.take(f"k{i}", 100, 1000, 1)
    assert node.m.next_deadline() == 21_000
    node.tick(1_000)
    assert not node.part.buckets and node.part.dropped == 50


def test_new_keys_beyond_the_bucket_limit_are_refused(node: Node, monkeypatch) -> None:
    monkeypatch.setattr(limits, "RATELIMIT_BUCKETS_MAX", 2)
    node.take("a", 1, 1000, 1)
    node.take("b", 1, 1000, 1)
    node.rejected("limit_exceeded", "c", 1, 1000, 1, 1)
    assert not node.take("a", 1, 1000, 1)["granted"]  # existing keys are still served
    node.tick(1_000)  # both full again: dropped
    assert node.take("c", 1, 1000, 1)["granted"]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("k", 0, 1000, 1, 1), "invalid_rate"),  # zero rate
        (("k", -5, 1000, 1, 1), "invalid_rate"),  # negative rate
        (("k", 5, 0, 1, 1), "invalid_rate"),  # zero period
        (("k", 5, limits.RATE_PERIOD_MS[1] + 1, 1, 1), "invalid_rate"),
        (("k", 5, 1000, 0, 1), "invalid_rate"),  # zero burst
        (("k", 5.5, 1000, 1, 1), "invalid_rate"),  # not an integer
        (("k", 5, 1000, 3, 4), "limit_exceeded"),  # n over the burst: never grantable
        (("k", 5, 1000, 3, 0), "bad_command"),
        (("x" * (limits.NAME_MAX_BYTES + 1), 5, 1000, 1, 1), "limit_exceeded"),
        (("has space", 5, 1000, 1, 1), "bad_command"),
        (("k", 5, 1000, 1), "bad_command"),  # arity
    ],
)
def test_bad_input_is_refused_with_a_typed_code_and_changes_nothing(
    node: Node, args: tuple, code: str
) -> None:
    node.rejected(code, *args)
    assert not node.part.buckets


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("100/s", (100, 1000)),
        ("100/m", (100, 60_000)),
        ("100/h", (100, 3_600_000)),
        (" 7 / m ", (7, 60_000)),
        ("20", (20, 1000)),  # Celery: a bare number is per second
        ((3, 250), (3, 250)),
        (20, (20, 1000)),
    ],
)
def test_the_rate_parser_reads_celerys_format(spec: Any, expected: tuple[int, int]) -> None:
    assert parse_rate(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["0/s", "-1/m", "100/d", "100/", "1.5/s", "fast", "", (0, 1000), (5, -1), 2.5, True, None],
)
def test_the_rate_parser_rejects_bad_rates_with_invalid_rate(spec: Any) -> None:
    with pytest.raises(InvalidRate) as info:
        parse_rate(spec)
    assert info.value.code == "invalid_rate" and isinstance(info.value, ValueError)


def test_the_default_burst_is_one_period(node: Node) -> None:
    assert default_burst(100) == 100


# -- snapshots and determinism --------------------------------------------------------------------


def _drive(node: Node, seed: int, steps: int = 300) -> list[Any]:
    rng = random.Random(seed)
    answers = []
    for _ in range(steps):
        node.now += rng.choice([0, 1, 7, 50, 333, 1500])
        if rng.random() < 0.1:
            node.tick()
            continue
        key = f"k{rng.randrange(4)}"
        count, period = rng.choice([(1, 1000), (10, 1000), (100, 60_000), (3, 7)])
        burst = rng.choice([1, 2, 5])
        answers.append(node.take(key, count, period, burst, rng.randint(1, burst)))
    return answers


def test_two_replicas_fed_the_same_log_answer_and_snapshot_identically() -> None:
    a, b = Node(), Node()
    assert _drive(a, 7) == _drive(b, 7)
    assert state_bytes(a.m) == state_bytes(b.m)


def test_a_snapshot_round_trips_and_the_restored_replica_goes_on_identically() -> None:
    original = Node()
    _drive(original, 11)
    restored = Node()
    restored.m.restore(original.m.snapshot())
    restored.index, restored.now = original.index, original.now
    assert state_bytes(restored.m) == state_bytes(original.m)
    assert restored.m.next_deadline() == original.m.next_deadline()
    assert _drive(restored, 12) == _drive(original, 12)
    assert state_bytes(restored.m) == state_bytes(original.m)


def test_a_snapshot_from_before_the_part_existed_restores_with_no_buckets() -> None:
    node = Node()
    node.take("k", 1, 1000, 1)
    version, state = msgpack.unpackb(node.m.snapshot(), raw=False, strict_map_key=False)
    del state["ratelimits"]
    node.m.restore(msgpack.packb([version, state], use_bin_type=True))
    assert not node.part.buckets and node.take("k", 1, 1000, 1)["granted"]


# -- against a reference model in exact fractions -------------------------------------------------

_step = st.tuples(
    st.integers(0, 2_000),  # ms of log time before the step
    st.sampled_from(["a", "b"]),
    st.sampled_from([(1, 1000), (5, 1000), (100, 60_000), (7, 3)]),
    st.integers(1, 4),  # burst
    st.integers(1, 4),  # n (clamped to the burst)
    st.booleans(),  # a tick before the take
)


@settings(max_examples=examples(quick=150, deep=1000), deadline=None)
@given(st.lists(_step, max_size=60))
def test_takes_match_a_fractional_token_bucket(steps: list[tuple]) -> None:
    node = Node()
    model: dict[str, list[Any]] = {}  # key -> [tokens (Fraction), last_ms, rate, burst]
    for advance, key, (count, period), burst, n, tick in steps:
        n = min(n, burst)
        node.now += advance
        if tick:
            node.tick()
        rate = Fraction(count, period)
        tokens, last, old_rate, old_burst = model.get(key, [Fraction(burst), node.now, rate, burst])
        tokens = min(Fraction(old_burst), tokens + old_rate * (node.now - last))
        if tokens == old_burst:
            tokens = Fraction(burst)  # a full bucket stays full at the new burst
        else:  # converted to the new unit, rounding down to 1/period of a token
            tokens = min(Fraction(burst), Fraction(int(tokens * period), period))
        answer = node.take(key, count, period, burst, n)
        if tokens >= n:
            tokens -= n
            assert answer["granted"] and answer["wait_ms"] == 0
        else:
            wait = (n - tokens) / rate
            assert not answer["granted"]
            assert answer["wait_ms"] == -(-wait.numerator // wait.denominator)  # ceil
        assert answer["tokens"] == pytest.approx(float(tokens))
        model[key] = [tokens, node.now, rate, burst]
    assert len(node.part.buckets) <= 2
