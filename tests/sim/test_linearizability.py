"""Tests for the WGL linearizability checker and its models.

Hand-written histories pin down the verdicts that matter (stale reads, lost writes, two lock
holders, FIFO violations, the tie rule). Property tests then build histories by really executing
random ops one at a time against a reference implementation and stretching each op into an
interval that contains its effect time: those are linearizable by construction, and a single
impossible output must make them fail.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_depth import examples

from raft_node.sim.linearizability import (
    CheckResult,
    Operation,
    check_history,
    check_operations,
)
from raft_node.sim.models import FencingLockModel, QueueModel, RegisterModel

NEVER = 999  # a value no generated history writes or enqueues


def op(
    client: str,
    kind: str,
    inp: Any,
    out: Any,
    call: float,
    ret: float | None,
    key: Hashable = "k",
) -> Operation:
    return Operation(client, key, kind, inp, out, call, ret)


def assert_ok(result: CheckResult) -> None:
    assert result.ok is True, result.explanation


def assert_violation(result: CheckResult) -> None:
    assert result.ok is False, result.explanation


# --- register: hand-written histories -------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert_ok(check_operations([], RegisterModel()))


def test_sequential_history_is_linearizable() -> None:
    history = [
        op("a", "write", 1, None, 0, 1),
        op("b", "read", None, 1, 2, 3),
        op("a", "cas", (1, 2), True, 4, 5),
        op("b", "cas", (1, 3), False, 6, 7),
        op("a", "read", None, 2, 8, 9),
    ]
    assert_ok(check_history(history, RegisterModel()))


@pytest.mark.parametrize("seen", [None, 1])
def test_read_overlapping_a_write_may_see_either_value(seen: int | None) -> None:
    history = [op("a", "write", 1, None, 0, 10), op("b", "read", None, seen, 2, 3)]
    assert_ok(check_history(history, RegisterModel()))


def test_stale_read_after_completed_write_is_rejected() -> None:
    stale = op("b", "read", None, 0, 2, 3)
    history = [op("a", "write", 0, None, 0, 0.5), op("a", "write", 1, None, 0.6, 1), stale]
    result = check_history(history, RegisterModel())
    assert_violation(result)
    assert result.key == "k"
    assert stale.describe() in result.explanation
    assert "illegal" in result.explanation
    assert "longest linearizable prefix has 2 op(s)" in result.explanation


def test_touching_intervals_are_concurrent() -> None:
    """Tie rule: A precedes B only if A.ret < B.call, so ret == call allows either order."""
    write = op("a", "write", 1, None, 0, 1)
    assert_ok(check_history([write, op("b", "read", None, None, 1, 2)], RegisterModel()))
    assert_violation(check_history([write, op("b", "read", None, None, 1.5, 2)], RegisterModel()))


def test_unknown_write_that_must_have_happened() -> None:
    history = [op("a", "write", 1, None, 0, None), op("b", "read", None, 1, 5, 6)]
    assert_ok(check_history(history, RegisterModel()))


def test_unknown_write_that_never_shows_up() -> None:
    history = [
        op("a", "write", 1, None, 0, None),
        op("b", "read", None, None, 5, 6),
        op("b", "read", None, None, 7, 8),
    ]
    assert_ok(check_history(history, RegisterModel()))


def test_unknown_write_seen_then_old_value_again_is_rejected() -> None:
    history = [
        op("a", "write", 0, None, 0, 1),
        op("a", "write", 1, None, 2, None),
        op("b", "read", None, 1, 3, 4),
        op("b", "read", None, 0, 5, 6),
    ]
    assert_violation(check_history(history, RegisterModel()))


def test_unknown_read_carries_no_information() -> None:
    history = [op("a", "write", 1, None, 0, 1), op("b", "read", None, "garbage", 2, None)]
    assert_ok(check_history(history, RegisterModel()))


def test_cas_success_and_failure() -> None:
    ok = [
        op("a", "write", 0, None, 0, 1),
        op("b", "cas", (0, 5), True, 2, 3),
        op("c", "cas", (0, 6), False, 4, 5),
        op("a", "read", None, 5, 6, 7),
    ]
    assert_ok(check_history(ok, RegisterModel()))
    wrong_success = [op("a", "write", 0, None, 0, 1), op("b", "cas", (1, 5), True, 2, 3)]
    assert_violation(check_history(wrong_success, RegisterModel()))


def test_two_concurrent_cas_from_same_value_cannot_both_succeed() -> None:
    history = [op("a", "cas", (0, 1), True, 0, 5), op("b", "cas", (0, 2), True, 1, 6)]
    assert_violation(check_history(history, RegisterModel(initial=0)))


def test_unknown_cas_may_have_swapped() -> None:
    history = [op("a", "cas", (0, 1), None, 0, None), op("b", "read", None, 1, 5, 6)]
    assert_ok(check_history(history, RegisterModel(initial=0)))


def test_violation_is_reported_with_its_key() -> None:
    history = [
        op("a", "write", 1, None, 0, 1, key="x"),
        op("a", "read", None, 1, 2, 3, key="x"),
        op("b", "write", 1, None, 0, 1, key="y"),
        op("b", "read", None, None, 2, 3, key="y"),
    ]
    result = check_operations(history, RegisterModel())
    assert_violation(result)
    assert result.key == "y"
    assert "'y'" in result.explanation
    assert_ok(check_operations(history[:2], RegisterModel()))


def test_check_history_does_not_partition_by_key() -> None:
    """Across keys the register is one cell, so x's write makes y's read stale."""
    history = [op("a", "write", 1, None, 0, 1, key="x"), op("b", "read", None, None, 2, 3, key="y")]
    assert_ok(check_operations(history, RegisterModel()))
    result = check_history(history, RegisterModel())
    assert_violation(result)
    assert result.key is None


def test_budget_exhaustion_reports_unknown() -> None:
    history = [op(f"c{i}", "write", i, None, 0, 10) for i in range(12)]
    result = check_history(history, RegisterModel(), max_states=3)
    assert result.ok is None
    assert result.key == "k"
    assert result.states_explored == 3
    assert "budget" in result.explanation


def test_definite_violation_wins_over_exhausted_budget() -> None:
    hard = [op(f"c{i}", "write", i, None, 0, 10, key="hard") for i in range(12)]
    bad = [op("a", "write", 1, None, 0, 1, key="bad"), op("a", "read", None, 0, 2, 3, key="bad")]
    result = check_operations(hard + bad, RegisterModel(), max_states=5)
    assert_violation(result)
    assert result.key == "bad"


@pytest.mark.parametrize(
    "bad", [op("a", "read", None, 1, 2, 1), op("a", "read", None, 1, float("nan"), 1)]
)
def test_malformed_timestamps_are_rejected(bad: Operation) -> None:
    with pytest.raises(ValueError):
        check_history([bad], RegisterModel())


def test_unsupported_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        check_history([op("a", "increment", 1, None, 0, 1)], RegisterModel())


# --- fencing lock -----------------------------------------------------------------------------


def test_lock_lifecycle_is_linearizable() -> None:
    history = [
        op("a", "acquire", None, 3, 0, 1),
        op("b", "acquire", None, None, 2, 3),  # refused: held by a
        op("c", "check", 3, True, 2, 3),
        op("a", "release", 3, True, 4, 5),
        op("b", "acquire", None, 7, 6, 7),  # tokens need not be contiguous
        op("c", "check", 3, False, 8, 9),
        op("a", "release", 3, False, 8, 9),
    ]
    assert_ok(check_history(history, FencingLockModel()))


def test_two_overlapping_acquires_cannot_both_succeed() -> None:
    history = [op("a", "acquire", None, 1, 0, 2), op("b", "acquire", None, 2, 1, 3)]
    assert_violation(check_history(history, FencingLockModel()))


def test_stale_token_check_after_new_grant_is_rejected() -> None:
    history = [
        op("a", "acquire", None, 1, 0, 1),
        op("a", "release", 1, True, 2, 3),
        op("b", "acquire", None, 2, 4, 5),
        op("c", "check", 1, True, 6, 7),
    ]
    assert_violation(check_history(history, FencingLockModel()))


def test_tokens_must_increase() -> None:
    history = [
        op("a", "acquire", None, 5, 0, 1),
        op("a", "release", 5, True, 2, 3),
        op("b", "acquire", None, 5, 4, 5),
    ]
    assert_violation(check_history(history, FencingLockModel()))


def test_refusal_of_a_free_lock() -> None:
    history = [op("a", "acquire", None, None, 0, 1)]
    assert_violation(check_history(history, FencingLockModel()))
    assert_ok(check_history(history, FencingLockModel(allow_spurious_refusal=True)))


def test_lost_acquire_reply_then_release_with_its_token() -> None:
    history = [
        op("a", "acquire", None, None, 0, None),
        op("b", "acquire", None, None, 2, 3),  # refused: a's lost acquire holds the lock
        op("a2", "release", 4, True, 4, 5),
        op("b", "acquire", None, 3, 6, 7),  # must exceed the lost grant's token (4)
    ]
    assert_violation(check_history(history, FencingLockModel()))
    history[-1] = op("b", "acquire", None, 9, 6, 7)
    assert_ok(check_history(history, FencingLockModel()))


# --- queue ------------------------------------------------------------------------------------


def test_queue_concurrent_puts_may_dequeue_in_either_order() -> None:
    history = [
        op("a", "put", 1, None, 0, 3),
        op("b", "put", 2, None, 1, 2),
        op("c", "get", None, 2, 4, 5),
        op("c", "get", None, 1, 6, 7),
        op("c", "get", None, None, 8, 9),
    ]
    assert_ok(check_history(history, QueueModel()))


def test_queue_get_of_value_never_put_is_rejected() -> None:
    history = [op("a", "put", 1, None, 0, 1), op("b", "get", None, 7, 2, 3)]
    result = check_history(history, QueueModel())
    assert_violation(result)
    assert "get(None) -> 7" in result.explanation


def test_queue_fifo_violation_is_rejected() -> None:
    history = [
        op("a", "put", 1, None, 0, 1),
        op("a", "put", 2, None, 2, 3),
        op("b", "get", None, 2, 4, 5),
    ]
    assert_violation(check_history(history, QueueModel()))


def test_queue_empty_get_while_nonempty_is_rejected() -> None:
    history = [op("a", "put", 1, None, 0, 1), op("b", "get", None, None, 2, 3)]
    assert_violation(check_history(history, QueueModel()))


# --- histories from real sequential executions ------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """An op before it runs: who issues it, what it asks, and where its interval falls."""

    client: int
    kind: str
    input: Any
    gap: float  # idle time after the client's previous op
    duration: float  # ret - call
    effect: float  # fraction of the interval at which it takes effect, in [0, 1]
    fate: str  # "ok", or for a lost reply "applied" / "dropped"


class RefRegister:
    def __init__(self) -> None:
        self.value: Any = None

    def apply(self, kind: str, inp: Any) -> Any:
        if kind == "write":
            self.value = inp
            return None
        if kind == "read":
            return self.value
        expected, new = inp
        if self.value != expected:
            return False
        self.value = new
        return True


class RefQueue:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def apply(self, kind: str, inp: Any) -> Any:
        if kind == "put":
            self.items.append(inp)
            return None
        return self.items.pop(0) if self.items else None


class RefLock:
    def __init__(self) -> None:
        self.holder: int | None = None
        self.last = 0

    def apply(self, kind: str, inp: Any) -> Any:
        if kind == "acquire":
            if self.holder is not None:
                return None
            self.last += 1 + self.last % 2  # strictly increasing, with gaps
            self.holder = self.last
            return self.holder
        if kind == "release":
            if self.holder != inp:
                return False
            self.holder = None
            return True
        return self.holder == inp


def execute(plans: Sequence[Planned], reference: Any) -> list[Operation]:
    """Lay the plans out per client, run them in effect-time order, record what clients saw."""
    clock: dict[int, float] = {}
    timed = []
    for plan in plans:
        call = clock.get(plan.client, 0.0) + plan.gap
        ret = call + plan.duration
        clock[plan.client] = ret
        timed.append((call + plan.effect * plan.duration, call, ret, plan))
    ops = []
    for _, call, ret, plan in sorted(timed, key=lambda t: t[0]):
        out = None if plan.fate == "dropped" else reference.apply(plan.kind, plan.input)
        known = plan.fate == "ok"
        ops.append(
            Operation(
                f"c{plan.client}", "k", plan.kind, plan.input, out, call, ret if known else None
            )
        )
    return ops


SMALL = st.integers(0, 3)
REGISTER_OPS = st.one_of(
    st.tuples(st.just("write"), SMALL),
    st.tuples(st.just("read"), st.none()),
    st.tuples(st.just("cas"), st.tuples(SMALL, SMALL)),
)
QUEUE_OPS = st.one_of(st.tuples(st.just("put"), SMALL), st.tuples(st.just("get"), st.none()))
LOCK_OPS = st.one_of(
    st.tuples(st.just("acquire"), st.none()),
    st.tuples(st.just("release"), st.integers(1, 6)),
    st.tuples(st.just("check"), st.integers(1, 6)),
)


def plans(ops: st.SearchStrategy[tuple[str, Any]], max_size: int = 24) -> st.SearchStrategy:
    """Random plans; integer times make touching intervals (ties) common."""
    plan = st.builds(
        lambda client, kind_input, gap, duration, effect, fate: Planned(
            client, *kind_input, gap, duration, effect / 4, fate
        ),
        st.integers(0, 3),
        ops,
        st.integers(0, 2),
        st.integers(0, 6),
        st.integers(0, 4),
        st.sampled_from(["ok"] * 8 + ["applied", "dropped"]),
    )
    return st.lists(plan, max_size=max_size)


MODELS: dict[str, tuple[st.SearchStrategy, Callable[[], Any], Callable[[], Any]]] = {
    "register": (REGISTER_OPS, RefRegister, RegisterModel),
    "queue": (QUEUE_OPS, RefQueue, QueueModel),
    "lock": (LOCK_OPS, RefLock, FencingLockModel),
}
PROPERTY = settings(
    max_examples=examples(quick=60, deep=150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("name", sorted(MODELS))
@PROPERTY
@given(data=st.data())
def test_real_executions_are_linearizable(name: str, data: st.DataObject) -> None:
    strategy, reference, model = MODELS[name]
    history = execute(data.draw(plans(strategy)), reference())
    assert_ok(check_operations(history, model()))


@pytest.mark.parametrize(("name", "observer"), [("register", "read"), ("queue", "get")])
@PROPERTY
@given(data=st.data())
def test_an_impossible_output_is_rejected(name: str, observer: str, data: st.DataObject) -> None:
    strategy, reference, model = MODELS[name]
    history = execute(data.draw(plans(strategy).filter(bool)), reference())
    history.append(op("z", observer, None, None, 1000, 1001))  # at least one known observation
    targets = [i for i, o in enumerate(history) if o.kind == observer and o.ret is not None]
    i = data.draw(st.sampled_from(targets), label="mutated op")
    history[i] = dataclasses.replace(history[i], output=NEVER)
    assert_violation(check_operations(history, model()))


def random_plans(rng: random.Random, n_ops: int, n_clients: int) -> list[Planned]:
    """Register workload with real overlap: reads, writes of few values, some cas."""
    result = []
    for _ in range(n_ops):
        roll = rng.random()
        if roll < 0.45:
            kind, inp = "read", None
        elif roll < 0.85:
            kind, inp = "write", rng.randrange(5)
        else:
            kind, inp = "cas", (rng.randrange(5), rng.randrange(5))
        fate = "ok" if rng.random() < 0.95 else rng.choice(["applied", "dropped"])
        result.append(
            Planned(
                rng.randrange(n_clients),
                kind,
                inp,
                rng.random(),
                rng.uniform(0.5, 4),
                rng.random(),
                fate,
            )
        )
    return result


@pytest.mark.parametrize("seed", range(5))
def test_performance_200_ops_5_clients(seed: int) -> None:
    """A realistic register history should check almost instantly, not explode."""
    history = execute(random_plans(random.Random(seed), 200, 5), RefRegister())
    result = check_operations(history, RegisterModel(), max_states=200_000)
    assert_ok(result)


# --- differential test against brute force ----------------------------------------------------


def brute_force(history: Sequence[Operation], model: Any) -> bool:
    """Try every subset of unknown-outcome ops and every order respecting real time."""
    known = [o for o in history if o.ret is not None]
    unknown = [o for o in history if o.ret is None]
    for mask in range(1 << len(unknown)):
        chosen = known + [o for j, o in enumerate(unknown) if mask >> j & 1]
        for order in itertools.permutations(chosen):
            if _respects_real_time(order) and _legal(order, model):
                return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    return not any(
        b.ret is not None and b.ret < a.call for i, a in enumerate(order) for b in order[i + 1 :]
    )


def _legal(order: Sequence[Operation], model: Any) -> bool:
    state = model.init()
    for o in order:
        legal, state = model.step(state, o)
        if not legal:
            return False
    return True


RANDOM_OUTPUT_OPS = {
    "register": st.one_of(
        st.tuples(st.just("write"), st.integers(0, 2), st.none()),
        st.tuples(st.just("read"), st.none(), st.sampled_from([None, 0, 1, 2])),
        st.tuples(st.just("cas"), st.tuples(st.integers(0, 2), st.integers(0, 2)), st.booleans()),
    ),
    "queue": st.one_of(
        st.tuples(st.just("put"), st.integers(0, 2), st.none()),
        st.tuples(st.just("get"), st.none(), st.sampled_from([None, 0, 1, 2])),
    ),
    "lock": st.one_of(
        st.tuples(st.just("acquire"), st.none(), st.sampled_from([None, 1, 2, 3])),
        st.tuples(st.sampled_from(["release", "check"]), st.integers(1, 3), st.booleans()),
    ),
}


@pytest.mark.parametrize("name", sorted(RANDOM_OUTPUT_OPS))
@settings(max_examples=examples(quick=80, deep=200), deadline=None)
@given(data=st.data())
def test_agrees_with_brute_force(name: str, data: st.DataObject) -> None:
    """Arbitrary (mostly non-linearizable) small histories: WGL must match exhaustive search."""
    timed = st.tuples(
        RANDOM_OUTPUT_OPS[name], st.integers(0, 6), st.integers(0, 3), st.integers(0, 4)
    )
    history = [
        op(f"c{n}", kind, inp, out, call, None if lost == 0 else call + duration)
        for n, ((kind, inp, out), call, duration, lost) in enumerate(
            data.draw(st.lists(timed, max_size=6))
        )
    ]
    model = {"register": RegisterModel, "queue": QueueModel, "lock": FencingLockModel}[name]()
    assert check_history(history, model).ok is brute_force(history, model)
