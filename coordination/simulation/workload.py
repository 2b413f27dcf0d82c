"""Simulated clients of the coordination primitives, and what must hold of what they see.

Each node runs ``CoordinationMachine`` in the production host, ``NodeHost``, as the node process
does: client commands go through ``NodeHost.propose`` (the ``(client_id, seq)`` envelope stamped
with the leader's skewed clock), and the host's own policy proposes the grace command on a new
leader and a tick once log time passes the machine's next deadline; nothing of that policy is
copied here. Clients each own a session, keep it alive (except while "paused",
which lets it expire), and loop over lock and queue operations; every request is retried with
the same ``seq`` until it completes, and blocking requests stay pending across retries.

Checks:

- **Mutual exclusion** in the replicated state after every applied entry: never two exclusive
  holders of a lock, never a writer beside a reader.
- **Fencing**: exclusive grant tokens strictly increase per lock in log order. Clients write to a
  fenced resource (rejects any token below the highest it has seen) while they believe they hold
  the lock, including after a pause; every accepted write carries a token the cluster really
  granted to that client, and the resource never accepts a write from a holder whose grant was
  superseded by a later grant that has already written.
- **Cache linearizability, L1 included** (``cache_clients``): every cache read (L1 hits too) and
  write goes into a history checked per key against a register model.
- **Priority order**: a ``queue.get`` served at once leaves no ready message of a higher
  priority behind it.
- **Semaphore limit and tokens** (``semaphore_clients``): never more than its limit of
  holders, no waiter beside a free slot, grant tokens strictly increasing.
- **Rate limits** (``ratelimit_clients``): grants never exceed the burst plus what the rate
  refilled over any span of log time, and each grant a client is told of is one in the log.
- **Held keys**: after every entry, no two live messages of a queue were put with the same held
  key (a third of the puts carry one of three keys).
- **Queue accounting** at the end: every acknowledged put is either acked by a consumer or still
  in the queue (ready, delayed, in flight or dead-lettered); nothing is delivered that was never
  put; every delivery of a message carries a different ``delivery_count``.
- **Push delivery** (``push_clients``: half the clients consume through subscriptions and
  streams that break and resume): no ready message beside a subscription with room, and no
  lease lost or handed out twice by a stream or its replay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from coordination.primitives import commands as c
from coordination.primitives.machine import CoordinationMachine
from coordination.simulation.cache_clients import CacheClients
from coordination.simulation.clients import Request, RequestWait, SimClient
from coordination.simulation.push_clients import PushClients
from coordination.simulation.ratelimit_clients import RateLimitClients
from coordination.simulation.semaphore_clients import KINDS as SEMAPHORE_KINDS
from coordination.simulation.semaphore_clients import SemaphoreClients
from raft_node.host.applier import Outcome, decode_command
from raft_node.host.node_host import ProposalDropped
from raft_node.sim.invariants import Violation

if TYPE_CHECKING:
    from raft_node.sim.engine import Engine, Entry, SimNode

LOCKS = ("alpha", "beta")
QUEUES = ("jobs",)
SESSION_TTL_MS = 1_500
RETRY_AFTER_MS = 400


class CoordinationWorkload:
    def __init__(
        self, clients: int = 4, machine: Callable[[], CoordinationMachine] = CoordinationMachine
    ) -> None:
        self.machine = machine  # tests pass a deliberately broken machine here
        self.clients = [SimClient(f"k{i}") for i in range(clients)]
        self.sim: Engine | None = None
        self.resource_max: dict[str, int] = defaultdict(int)  # fenced resource per lock
        self.resource_writes: list[tuple[str, str, int, bool]] = []
        self.grants: dict[str, list[tuple[int, str]]] = defaultdict(list)  # lock -> (token, client)
        self.client_grants: set[tuple[str, str, int]] = set()
        self.last_exclusive_token: dict[str, int] = {}
        self.checked_index = 0
        self.puts: dict[bytes, int] = {}  # payload -> id (acknowledged puts)
        self.acked: set[int] = set()
        self.deliveries: dict[int, int] = {}  # id -> highest delivery_count seen
        self.delivery_counts: dict[int, set[int]] = {}
        self._gets_checked: set[tuple[str, int]] = set()
        self.payload_seq = 0
        self.cache = CacheClients(self)
        self.semaphores = SemaphoreClients(self)
        self.ratelimits = RateLimitClients(self)
        self.push = PushClients(self)

    def __repr__(self) -> str:
        return f"pending {[cl.current.kind for cl in self.clients if cl.current]}"

    # -- engine hooks --------------------------------------------------------------------------

    def attach(self, sim: Engine) -> None:
        self.sim = sim
        for cl in self.clients:
            sim.schedule(sim.rng.randrange(1, 30), cl)

    def new_state_machine(self) -> CoordinationMachine:
        return self.machine()

    def on_crash(self, node: SimNode) -> None:
        self.cache.node_crashed(node)  # clients retry their requests on their own

    def _leader(self) -> SimNode | None:
        assert self.sim is not None
        return next((n for n in self.sim.nodes.values() if n.host and n.host.is_leader), None)

    def settled(self) -> bool:
        """Clients done, and no message still delayed (so the final accounting sees all)."""
        if not all(cl.finished for cl in self.clients) or not self.puts:
            return all(cl.finished for cl in self.clients)
        leader = self._leader()
        if leader is None or leader.host is None:
            return False
        stats = leader.host.state_machine.query(msgpack.packb(["queue.stats", QUEUES[0]]))
        return not stats["delayed"]

    def on_applied(self, node: SimNode, entry: Entry, outcomes: list[Outcome]) -> None:
        """Checks on the replicated state after each entry (answers reach the clients through
        their ``RequestWait``s once the host has handled the whole Ready)."""
        self._check_state(node, entry.index)
        self._check_held_keys(node)
        self._check_priority(node, entry, outcomes)
        self.ratelimits.on_applied(node, entry, outcomes)

    # -- client loop ---------------------------------------------------------------------------

    def on_event(self, cl: Any, liveness: bool) -> None:
        sim = self.sim
        assert sim is not None
        if isinstance(cl, tuple):  # an event reached a client
            if cl[0] == "push":  # ("push", client, epoch, frame)
                self.push.deliver(cl[1], cl[2], cl[3])
            else:  # ("invalidate", client, key)
                self.cache.deliver(cl[1], cl[2])
            return
        sim.schedule(sim.rng.randrange(5, 25), cl)
        if cl.finished or sim.now < cl.paused_until:
            return
        self.push.turn(cl)
        if cl.paused_until:
            cl.paused_until = 0
            for name in sorted(cl.held):  # resumed from a pause: write at once, as it would
                self._write_resource(cl, name)
        req = cl.current
        if req is not None:
            if sim.now - req.sent_at >= RETRY_AFTER_MS:
                self._send(req)
            return
        if cl.session is None:
            self.start(cl, c.session_open(SESSION_TTL_MS, cl.name), "open", {})
        elif sim.now >= cl.next_keepalive:
            self.start(cl, c.session_keepalive(cl.session), "keepalive", {})
        elif liveness:
            self._wind_down(cl)
        else:
            self._next_op(cl)

    def _wind_down(self, cl: SimClient) -> None:
        """After healing: give back what we hold, then close the session."""
        assert cl.session is not None
        if self.semaphores.wind_down(cl) or self.push.wind_down(cl):
            return
        if cl.held:
            name = next(iter(cl.held))
            self.start(cl, c.lock_release(cl.session, name, ""), "release", {"lock": name})
        elif cl.leased:
            msg = cl.leased.pop(0)
            self.start(cl, c.queue_ack(cl.session, msg["queue"], msg["id"]), "ack", {"msg": msg})
        else:
            self.start(cl, c.session_close(cl.session), "close", {})

    def _next_op(self, cl: SimClient) -> None:
        sim = self.sim
        assert sim is not None and cl.session is not None
        rng = sim.rng
        r = rng.random()
        if r < 0.03:
            cl.paused_until = sim.now + rng.randrange(500, 3_000)  # GC pause / SIGSTOP
            cl.l1.clear()  # a paused client's local lease clock keeps running
            return
        if rng.random() < 0.3:
            self.cache.next_op(cl)
            return
        if rng.random() < 0.1:
            self.semaphores.next_op(cl)
            return
        if rng.random() < 0.2:
            self.ratelimits.next_op(cl)
            return
        r = rng.random()  # lock and queue operations below
        if cl.held and r < 0.4:
            name = rng.choice(sorted(cl.held))
            if rng.random() < 0.5:
                self._write_resource(cl, name)
                return
            self.start(cl, c.lock_release(cl.session, name, ""), "release", {"lock": name})
        elif r < 0.45:
            name = rng.choice(LOCKS)
            if name in cl.held:
                return
            mode = "exclusive" if rng.random() < 0.7 else "shared"
            wait = rng.choice((0, 200, 1_000))
            body = c.lock_acquire(cl.session, name, mode, "", wait)
            self.start(cl, body, "acquire", {"lock": name, "mode": mode})
        elif cl.leased and r < 0.65:
            if len(cl.leased) > 1 and rng.random() < 0.3:
                queue = cl.leased[0]["queue"]
                ids = [m["id"] for m in cl.leased if m["queue"] == queue]
                cl.leased = [m for m in cl.leased if m["queue"] != queue]
                body = c.queue_ack_many(cl.session, queue, ids)
                self.start(cl, body, "ack_many", {"ids": ids})
                return
            msg = cl.leased.pop(0)
            if rng.random() < 0.8:
                self.start(
                    cl, c.queue_ack(cl.session, msg["queue"], msg["id"]), "ack", {"msg": msg}
                )
            else:
                body = c.queue_nack(cl.session, msg["queue"], msg["id"], True, 0)
                self.start(cl, body, "nack", {"msg": msg})
        elif r < 0.8:
            self.payload_seq += 1
            payload = f"{cl.name}/{self.payload_seq}".encode()
            prio = rng.randrange(0, 10)
            hold = None
            if self.payload_seq % 3 == 0:  # a held key (``@once``), named in the payload
                hold = (f"h{prio % 3}", cl.name)
                payload += f"/{hold[0]}".encode()
            delay = rng.choice((0, 0, 300))
            if hold is None and self.payload_seq % 4 == 1:  # a batch of three, one entry
                payloads = [payload, payload + b"/b1", payload + b"/b2"]
                rows = [[p, prio, None, delay, None] for p in payloads]
                body = c.queue_put_many(QUEUES[0], rows)
                self.start(cl, body, "put_many", {"payloads": payloads})
                return
            body = c.queue_put(QUEUES[0], payload, prio, None, delay, hold)
            self.start(cl, body, "put", {"payload": payload})
        elif self.push.is_push(cl):
            self.push.next_op(cl)  # its messages are pushed: no gets
        elif rng.random() < 0.3:
            count = rng.randrange(2, 5)
            lease = rng.choice((1_000, 1_000, None))  # None: held until the session ends
            body = c.queue_get_many(cl.session, QUEUES[0], rng.choice((0, 300)), lease, count)
            self.start(cl, body, "get_many", {})
        else:
            lease = rng.choice((1_000, 1_000, None))
            body = c.queue_get(cl.session, QUEUES[0], rng.choice((0, 300)), lease)
            self.start(cl, body, "get", {})

    def start(self, cl: SimClient, body: bytes, kind: str, info: dict[str, Any]) -> None:
        assert self.sim is not None
        cl.seq += 1
        cl.current = Request(cl, cl.seq, body, kind, info, started=self.sim.now)
        self._send(cl.current)

    def _send(self, req: Request) -> None:
        sim = self.sim
        assert sim is not None
        req.sent_at = sim.now
        node = sim.pick_node(prefer_leader=True)
        if node is None or node.host is None or not node.host.is_leader:
            return
        try:
            node.host.propose(req.client.name, req.seq, req.body, RequestWait(req, self._finish))
        except ProposalDropped:
            return
        sim.process(node)

    # -- results -------------------------------------------------------------------------------

    def _finish(self, req: Request, ok: bool, value: Any) -> None:
        sim = self.sim
        assert sim is not None
        cl = req.client
        req.done = True
        cl.current = None
        kind, info = req.kind, req.info
        if kind in ("cset", "fill", "renew"):
            self.cache.finished(req, ok, value)
            if not ok and value[0] in ("session_expired", "unknown_session"):
                self._session_lost(cl)
            return
        if kind in SEMAPHORE_KINDS:
            self.semaphores.finished(req, ok, value)
            if not ok and value[0] in ("session_expired", "unknown_session"):
                self._session_lost(cl)
            return
        if kind == "take":
            self.ratelimits.finished(req, ok, value)
            return
        if kind in ("subscribe", "unsubscribe"):
            self.push.finished(req, ok, value)
        if not ok:
            code = value[0]
            if code in ("session_expired", "unknown_session"):
                self._session_lost(cl)
            elif code not in (
                "not_holder",
                "unknown_message",
                "deadlock",
                "lock_mode",
                "unknown_queue",
            ):
                raise Violation(f"{cl.name} {kind} rejected unexpectedly: {value}")
            if kind == "release":
                cl.held.pop(info["lock"], None)
            return
        if kind == "open":
            cl.session = value["session"]
            cl.next_keepalive = sim.now + SESSION_TTL_MS // 3
        elif kind == "keepalive":
            cl.next_keepalive = sim.now + SESSION_TTL_MS // 3
        elif kind == "close":
            cl.session, cl.held, cl.leased = None, {}, []
            cl.finished = True
        elif kind == "acquire" and value.get("acquired"):
            token = value["token"]
            cl.held[info["lock"]] = token
            self.client_grants.add((info["lock"], cl.name, token))
        elif kind == "release":
            if value.get("count", 0) == 0:
                cl.held.pop(info["lock"], None)
        elif kind == "put":
            self.puts[info["payload"]] = value["id"]
        elif kind == "put_many":
            for payload, answer in zip(info["payloads"], value, strict=True):
                if "error" in answer:
                    raise Violation(f"{cl.name} put_many refused a message: {answer}")
                self.puts[payload] = answer["id"]
        elif kind == "get" and value:
            self.delivered(cl, value)
        elif kind == "get_many":
            for msg in value:
                self.delivered(cl, msg)
        elif kind == "ack":
            self.acked.add(info["msg"]["id"])
        elif kind == "ack_many":
            unknown = set(value["unknown"])
            self.acked.update(mid for mid in info["ids"] if mid not in unknown)

    def _session_lost(self, cl: SimClient) -> None:
        """The cluster expired our session: start over with a new one. (The locks we think we
        hold are gone; we keep writing with their tokens for a while, as a paused client
        would, to exercise fencing.)"""
        cl.session = None
        cl.leased = []
        self.cache.session_lost(cl)
        self.semaphores.session_lost(cl)
        self.push.session_lost(cl)

    def delivered(self, cl: SimClient, msg: dict[str, Any]) -> None:
        payload, mid, count = msg["payload"], msg["id"], msg["delivery_count"]
        if self.puts.get(payload, mid) != mid and not payload.startswith(b"k"):
            raise Violation(f"delivered message {mid} with payload {payload!r} never put")
        # Each delivery of a message carries its own count. (Clients may *see* them out of
        # order: a response can arrive late, after a retry answered from the dedup table.)
        seen = self.delivery_counts.setdefault(mid, set())
        if count in seen:
            raise Violation(f"message {mid} delivered twice with delivery_count {count}")
        seen.add(count)
        self.deliveries[mid] = max(count, self.deliveries.get(mid, 0))
        cl.leased.append(msg)

    def _write_resource(self, cl: SimClient, name: str) -> None:
        token = cl.held[name]
        accepted = token >= self.resource_max[name]
        if accepted:
            if (name, cl.name, token) not in self.client_grants:
                raise Violation(f"{cl.name} wrote {name} with token {token} never granted to it")
            self.resource_max[name] = token
        self.resource_writes.append((name, cl.name, token, accepted))
        if cl.session is None:
            cl.held.pop(name, None)  # a lost session stops writing after one attempt

    # -- checks --------------------------------------------------------------------------------

    def _check_state(self, node: SimNode, index: int) -> None:
        if index <= self.checked_index:
            return  # every replica holds the same state at an index: check it once
        self.checked_index = index
        assert node.host is not None
        machine = node.host.state_machine
        self.semaphores.check(machine, index)
        self.push.check(machine, index)
        for name in LOCKS:
            info = machine.query(msgpack.packb(["lock.inspect", name]))
            holders = info.get("holders", []) if info else []
            modes = [h["mode"] for h in holders]
            if modes.count("exclusive") > 1 or ("exclusive" in modes and len(modes) > 1):
                raise Violation(f"mutual exclusion broken on {name} at index {index}: {holders}")
            for h in holders:
                if h["mode"] == "exclusive":
                    last = self.last_exclusive_token.get(name, 0)
                    if h["token"] < last:
                        raise Violation(f"{name} token went back: {last} -> {h['token']}")
                    self.last_exclusive_token[name] = h["token"]

    def _check_held_keys(self, node: SimNode) -> None:
        """Never two live messages (ready, delayed or in flight) put with one held key. Read
        from the payloads, not from the part's own key table, so a table that forgets a key
        while its message lives is caught too."""
        assert node.host is not None
        part = node.host.state_machine.part("queues")
        for name in QUEUES:
            q = part.queues.get(name)
            if q is None:
                continue
            keys = [p[0].rsplit(b"/", 1)[1] for p in q.messages.values() if b"/h" in p[0]]
            if len(keys) != len(set(keys)):
                raise Violation(f"two live messages of {name} share a held key: {sorted(keys)}")

    def _check_priority(self, node: SimNode, entry: Entry, outcomes: list[Outcome]) -> None:
        """A ``queue.get`` served at once took the highest-priority ready message: nothing of a
        higher priority is left ready after it (checked once per index)."""
        if entry.index != self.checked_index or not entry.data:
            return
        client_id, _, _, body = decode_command(entry.data)
        is_get = bool(client_id) and msgpack.unpackb(body)[0] == "queue.get"
        for outcome in outcomes:
            msg = outcome.value
            if not outcome.ok or not isinstance(msg, dict) or "priority" not in msg:
                continue
            key = (outcome.client_id, outcome.seq)
            if key in self._gets_checked:
                continue  # a retry answered from the dedup table: an earlier delivery
            self._gets_checked.add(key)
            if not is_get or outcome.client_id != client_id:
                continue  # a waiter served by a put or a tick: served in its own order
            assert node.host is not None
            stats = node.host.state_machine.query(msgpack.packb(["queue.stats", msg["queue"]]))
            ready = [int(p) for p, n in stats["depth_by_priority"].items() if n]
            if ready and max(ready) > msg["priority"]:
                raise Violation(
                    f"priority order: delivered priority {msg['priority']} while priority "
                    f"{max(ready)} was ready (index {entry.index})"
                )

    def final_check(self) -> None:
        sim = self.sim
        assert sim is not None
        leader = self._leader()
        assert leader is not None and leader.host is not None
        machine = leader.host.state_machine
        remaining: set[int] = set()
        for name in QUEUES:
            if not self.puts:
                break  # nothing was ever put: the queue does not exist
            for group in ("queue.peek", "queue.dead_letters"):
                rows = machine.query(msgpack.packb([group, name, 1_000]))
                remaining |= {row.get("original_id", row["id"]) for row in rows}
            stats = machine.query(msgpack.packb(["queue.stats", name]))
            if stats and stats.get("in_flight"):
                raise Violation(f"{stats['in_flight']} messages still in flight after wind-down")
        lost = [mid for mid in self.puts.values() if mid not in self.acked and mid not in remaining]
        if lost:
            raise Violation(f"acknowledged puts lost: {sorted(lost)[:10]}")

    def check_history(self) -> tuple[int, int]:
        operations, states = self.cache.check()
        writes = [w for w in self.resource_writes if w[3]]
        operations += self.ratelimits.check()
        return operations + len(writes) + len(self.puts), states
