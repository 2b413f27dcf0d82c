"""What the admin shows of the recipes built on the primitives: ``@once`` keys and elections.

Neither has state of its own in the cluster, so this module joins what the primitives hold:

- an ``@once`` key on ``raft://`` is a *held key* of the task's message (the ``queue.held``
  query lists them with where each message is); on other brokers it is an exclusive lock
  ``once:<key>`` owned by the task id (``coordination.celery.once_fallback``);
- an election is an exclusive lock ``election:<name>`` (``coordination.client.election``): the
  holder leads, its token fences, the waiters are the candidates in the order they will lead.
  ``celery beat`` on ``ElectedScheduler`` campaigns in ``celery-beat.<app name>`` unless
  configured otherwise (``coordination.celery.beat.election_name``).

Session labels are joined in so a row says *which process* (a worker, a beat ``host:pid``)
rather than a bare session id. Read-only, like ``coordination.inspection``.
"""

from __future__ import annotations

import os
from typing import Any

from coordination.celery.beat import election_name
from coordination.celery.once_fallback import LOCK_PREFIX as ONCE_LOCK_PREFIX
from coordination.client import operations as ops
from coordination.client.coordinator import Coordinator
from coordination.client.election import PREFIX as ELECTION_PREFIX
from coordination.inspection import LOCKS_SHOWN, log_now

BEAT_PREFIX = "celery-beat."  # the default beat election's name, before the app name
STATES = {"ready": "queued", "delayed": "queued (delayed)", "in_flight": "delivered"}


def _labels(sessions: list[dict[str, Any]]) -> dict[int, str]:
    return {row["session"]: row.get("label") or "" for row in sessions}


def _held_locks(coord: Coordinator, prefix: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Locks named ``prefix...`` with holders or waiters (up to ``limit``), inspected."""
    listed = coord.locks(prefix, limit + 1)
    shown = [coord.inspect_lock(row["name"]) for row in listed[:limit]]
    return [lock for lock in shown if lock["holders"] or lock["waiters"]], len(listed) > limit


# -- @once ----------------------------------------------------------------------------------------


def once_keys(coord: Coordinator, prefix: str = "", limit: int = LOCKS_SHOWN) -> dict[str, Any]:
    """Held keys of every queue starting with ``prefix`` (``held``: key, queue, message id,
    task id, queued or delivered, deliveries, the leasing session and its label), and the
    fallback locks ``once:<key>`` of non-``raft://`` brokers (``fallback``: key, task id,
    holding session and label, fencing token). Each list says whether it was cut."""
    held = coord.run(ops.queue_held(prefix, limit + 1))
    locks, locks_cut = _held_locks(coord, ONCE_LOCK_PREFIX + prefix, limit)
    sessions = coord.sessions()
    labels, now = _labels(sessions), log_now(sessions)
    for row in held[:limit]:
        row["state_text"] = STATES.get(row["state"], row["state"])
        row["label"] = labels.get(row["session"], "") if row["session"] is not None else ""
        expires = row["lease_expires_ms"]
        row["lease_left_ms"] = None if expires is None or now is None else max(0, expires - now)
    fallback = []
    for lock in locks:
        for hold in lock["holders"]:
            fallback.append(
                {
                    "lock": lock["name"],
                    "key": lock["name"][len(ONCE_LOCK_PREFIX) :],
                    "task_id": hold["owner"],
                    "session": hold["session"],
                    "label": labels.get(hold["session"], ""),
                    "token": hold["token"],
                }
            )
    return {
        "held": held[:limit],
        "held_truncated": len(held) > limit,
        "fallback": fallback,
        "fallback_truncated": locks_cut,
    }


# -- elections ------------------------------------------------------------------------------------


def beat_election_names() -> set[str]:
    """The beat elections this process knows of by name: ``RAFTSYNC_BEAT_ELECTION_NAME`` and
    the current Celery app's (``beat_election_name``, else ``celery-beat.<app name>``). Any
    election named ``celery-beat.*`` counts too (``is_beat``): beats of another app, or run
    with other settings, still use the default prefix unless renamed."""
    from celery import current_app

    names = {election_name(current_app)}
    configured = os.environ.get("RAFTSYNC_BEAT_ELECTION_NAME")
    if configured:
        names.add(configured)
    return names


def is_beat(name: str, beat_names: set[str]) -> bool:
    return name in beat_names or name.startswith(BEAT_PREFIX)


def elections(coord: Coordinator, prefix: str = "", limit: int = LOCKS_SHOWN) -> dict[str, Any]:
    """Elections with a leader or candidates (name starting with ``prefix``, up to ``limit``):
    the leader (its value, fencing token, session and label; ``since_index``: the grant's Raft
    index, which is the token), the candidates in the order they will lead with their time
    left in this wait, and ``beat`` for the ``celery beat`` elections (beat ones first)."""
    locks, cut = _held_locks(coord, ELECTION_PREFIX + prefix, limit)
    sessions = coord.sessions()
    labels, now = _labels(sessions), log_now(sessions)
    beat_names = beat_election_names()
    rows = []
    for lock in locks:
        name = lock["name"][len(ELECTION_PREFIX) :]
        leader = lock["holders"][0] if lock["holders"] else None
        if leader is not None:
            leader = {**leader, "label": labels.get(leader["session"], "")}
        candidates = [
            {
                **waiter,
                "label": labels.get(waiter["session"], ""),
                "left_ms": None if now is None else max(0, waiter["deadline_ms"] - now),
            }
            for waiter in lock["waiters"]
        ]
        rows.append(
            {
                "name": name,
                "lock": lock["name"],
                "leader": leader,
                "candidates": candidates,
                "last_token": lock["last_token"],
                "beat": is_beat(name, beat_names),
            }
        )
    rows.sort(key=lambda row: not row["beat"])  # stable: by name within each group
    return {"elections": rows, "truncated": cut}
