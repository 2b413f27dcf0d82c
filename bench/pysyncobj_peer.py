"""One PySyncObj node of the consensus benchmark's peer cluster, driven by ``bench_raft.py``.

PySyncObj has no client protocol: a replicated call is made inside a node's process. So each
node process also carries the load driver, and the orchestrator controls it with JSON lines on
stdin (answers on stdout; PySyncObj's own logging goes to stderr):

    {"cmd": "status"}                                   raft state, leader, commit/applied index
    {"cmd": "load", "concurrency": N, "warmup": s, "seconds": s}
        N replicated ``set(key16B, value100B)`` calls kept in flight (each completion issues the
        next one); answers ops/s and latency percentiles of the calls completed in the window
    {"cmd": "bg_start", "concurrency": N} / {"cmd": "bg_stop"}   background writer (failover)
    {"cmd": "probe_start", "interval_ms": x}            issue one replicated call every x ms
    {"cmd": "probe_result", "t_kill": t, "timeout": s}  first success of a probe issued at or
                                                        after monotonic instant t_kill; stops
    {"cmd": "quit"} or EOF on stdin                     exit

The replicated object is ``pysyncobj.batteries.ReplDict``; the call is ``ReplDict.set``.
Durability is configured with ``journalFile`` and ``fullDumpFile`` (see ``describe_durability``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import key, summarize_latencies, value
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict
from pysyncobj.version import VERSION

SUCCESS = FAIL_REASON.SUCCESS


def describe_durability() -> str:
    """What PySyncObj does with ``journalFile``, as read from its source (journal.py)."""
    return " ".join(
        [
            f"PySyncObj {VERSION} with journalFile + fullDumpFile: FileJournal copies each log",
            "entry into an mmap'd file with no msync/fsync on the write path (FileJournal.flush()",
            "exists but SyncObj never calls it; this version has no flushJournal option);",
            "term/vote go to a .meta file by write+rename without fsync before a vote is sent;",
            "the commit index is saved once a second; the full dump is written on log",
            "compaction. So its log survives kill -9 (the page cache survives) but not an OS",
            "crash or power loss; raftsync fsyncs before acknowledging.",
        ]
    )


class Driver:
    """Keeps ``concurrency`` replicated calls in flight; records calls completing in a window.

    Callbacks run on PySyncObj's tick thread; a successful completion issues the next call from
    there. A failed call is not re-issued from the callback (a synchronous error callback would
    recurse); the main thread re-issues it from ``retry``.
    """

    def __init__(self, d: ReplDict, concurrency: int, slot_base: int = 0) -> None:
        self.d = d
        self.concurrency = concurrency
        self.slot_base = slot_base
        self.values = [value(i) for i in range(64)]
        self.lock = threading.Lock()
        self.stopping = False
        self.inflight = 0
        self.counter = 0
        self.window = (float("inf"), float("inf"))  # perf_counter_ns bounds
        self.latencies: list[int] = []
        self.errors = 0
        self.retry: deque[int] = deque()

    def start(self) -> None:
        for slot in range(self.concurrency):
            self._issue(slot)

    def _issue(self, slot: int) -> None:
        with self.lock:
            if self.stopping:
                return
            self.inflight += 1
            self.counter += 1
            n = self.counter
        t0 = time.perf_counter_ns()
        self.d.set(
            key(self.slot_base + n),
            self.values[n % len(self.values)],
            callback=lambda res, err: self._done(slot, t0, err),
        )

    def _done(self, slot: int, t0: int, err: int) -> None:
        t1 = time.perf_counter_ns()
        with self.lock:
            self.inflight -= 1
            lo, hi = self.window
            if err == SUCCESS:
                if lo <= t1 <= hi:
                    self.latencies.append(t1 - t0)
            elif lo <= t1 <= hi:
                self.errors += 1
        if err == SUCCESS:
            self._issue(slot)
        else:
            self.retry.append(slot)

    def pump_retries(self) -> None:
        while self.retry:
            self._issue(self.retry.popleft())

    def stop(self, drain_timeout: float = 10.0) -> None:
        with self.lock:
            self.stopping = True
        deadline = time.monotonic() + drain_timeout
        while self.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.005)


class Prober:
    """Issues one replicated call every ``interval`` s; records (issued, succeeded) instants."""

    def __init__(self, d: ReplDict, interval: float, max_seconds: float = 120.0) -> None:
        self.d = d
        self.interval = interval
        self.max_seconds = max_seconds
        self.successes: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.payload = value(7)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        n = 0
        while not self.stop_event.is_set() and time.monotonic() < end:
            n += 1
            issued = time.monotonic()
            self.d.set(key(900_000 + n), self.payload, callback=self._callback(issued))
            self.stop_event.wait(self.interval)

    def _callback(self, issued: float) -> Any:
        def done(res: Any, err: int) -> None:
            if err == SUCCESS:
                with self.lock:
                    self.successes.append((issued, time.monotonic()))

        return done

    def first_success_after(self, t_kill: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                done = [t for issued, t in self.successes if issued >= t_kill]
            if done:
                return min(done)
            time.sleep(0.002)
        return None

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def status(obj: SyncObj) -> dict[str, Any]:
    st = obj.getStatus()
    return {
        "state": int(st["state"]),  # 0 follower, 1 candidate, 2 leader
        "leader": str(st["leader"]) if st["leader"] is not None else None,
        "commit_idx": st["commit_idx"],
        "last_applied": st["last_applied"],
        "term": st["raft_term"],
        "ready": obj.isReady(),
        "log_len": st["log_len"],
    }


def run_load(d: ReplDict, concurrency: int, warmup: float, seconds: float) -> dict[str, Any]:
    driver = Driver(d, concurrency)
    driver.start()
    start = time.perf_counter_ns() + int(warmup * 1e9)
    end = start + int(seconds * 1e9)
    driver.window = (start, end)
    while time.perf_counter_ns() < end:
        driver.pump_retries()
        time.sleep(0.001)
    driver.stop()
    with driver.lock:
        lat = list(driver.latencies)
        errors = driver.errors
    result = summarize_latencies(lat, seconds, errors)
    result["concurrency"] = concurrency
    result["left_in_flight"] = driver.inflight
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self", dest="self_addr", required=True, help="127.0.0.1:port")
    ap.add_argument("--partners", required=True, help="comma-separated host:port of the others")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch", choices=["on", "off"], default="on", help="appendEntriesUseBatch")
    args = ap.parse_args()

    # Keep stdout for the control channel only: anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(obj: Any) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    conf = SyncObjConf(
        journalFile=str(data / "journal.bin"),
        fullDumpFile=str(data / "dump.bin"),
        appendEntriesUseBatch=args.batch == "on",
    )
    d = ReplDict()
    obj = SyncObj(args.self_addr, args.partners.split(","), conf=conf, consumers=[d])
    answer(
        {
            "ready": True,
            "pid": os.getpid(),
            "conf": {
                k: getattr(conf, k)
                for k in (
                    "journalFile",
                    "fullDumpFile",
                    "appendEntriesUseBatch",
                    "appendEntriesPeriod",
                    "autoTickPeriod",
                    "raftMinTimeout",
                    "raftMaxTimeout",
                    "connectionRetryTime",
                    "logCompactionMinEntries",
                )
            },
        }
    )

    bg: Driver | None = None
    prober: Prober | None = None
    bg_pump_stop = threading.Event()

    def pump_bg() -> None:
        while not bg_pump_stop.wait(0.005):
            if bg is not None:
                bg.pump_retries()

    threading.Thread(target=pump_bg, daemon=True).start()

    for line in sys.stdin:
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            if cmd == "status":
                answer(status(obj))
            elif cmd == "load":
                answer(run_load(d, int(msg["concurrency"]), float(msg["warmup"]), msg["seconds"]))
            elif cmd == "bg_start":
                bg = Driver(d, int(msg["concurrency"]), slot_base=500_000)
                bg.start()
                answer({"ok": True})
            elif cmd == "bg_stop":
                if bg is not None:
                    bg.stop()
                bg = None
                answer({"ok": True})
            elif cmd == "probe_start":
                if prober is not None:
                    prober.stop()
                prober = Prober(d, float(msg.get("interval_ms", 3)) / 1000)
                answer({"ok": True, "t": time.monotonic()})
            elif cmd == "probe_result":
                t = None
                if prober is not None:
                    t = prober.first_success_after(float(msg["t_kill"]), float(msg["timeout"]))
                    prober.stop()
                    prober = None
                answer({"t_success": t})
            elif cmd == "quit":
                break
            else:
                answer({"error": f"unknown command {cmd!r}"})
        except Exception as exc:  # report, keep serving
            answer({"error": repr(exc)})
    bg_pump_stop.set()
    out.flush()
    os._exit(0)  # PySyncObj's tick thread is not a daemon; do not wait for it


if __name__ == "__main__":
    main()
