"""What the admin shows of semaphores (on the locks page): each in-use semaphore with its limit,
holders (session, owner, fencing token) and waiters in arrival order with their time left.
Reads through the process's ``Coordinator`` as ``coordination.inspection`` does for locks."""

from __future__ import annotations

from typing import Any

from coordination.client.coordinator import Coordinator
from coordination.inspection import LOCKS_SHOWN, log_now


def semaphores(coord: Coordinator, prefix: str = "", limit: int = LOCKS_SHOWN) -> dict[str, Any]:
    """Semaphores with holders or waiters (by name, up to ``limit``), inspected one by one."""
    listed = coord.semaphores(prefix, limit + 1)
    shown = [coord.inspect_semaphore(row["name"]) for row in listed[:limit]]
    shown = [s for s in shown if s["holders"] or s["waiters"]]  # freed meanwhile
    now = log_now(coord.sessions()) if any(s["waiters"] for s in shown) else None
    for sem in shown:
        for waiter in sem["waiters"]:
            waiter["left_ms"] = None if now is None else max(0, waiter["deadline_ms"] - now)
    return {"semaphores": shown, "semaphores_truncated": len(listed) > limit}
