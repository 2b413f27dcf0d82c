"""A real ``celery worker`` subprocess on ``bench/celery_app.py``, for the runs that need one: the
Celery benchmark (``bench_celery.py``) and the soak (``soak.py``).

It runs in a process group of its own, so its pool processes can be stopped with it, and it
takes its whole configuration from one JSON document in the environment (``CONFIG_ENV``), the
same dict the orchestrator gives ``celery_app.make_app``: the two sides cannot disagree. It is
ready once its ``worker_ready`` signal has left a ``ready-<pid>`` file in ``marks_dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from celery_app import CONFIG_ENV

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


class Worker:
    """One ``celery worker --pool prefork`` with ``concurrency`` pool processes."""

    def __init__(
        self, config: dict[str, Any], name: str, log_path: Path, concurrency: int = 2
    ) -> None:
        self.config = config
        self.marks_dir = Path(config["marks_dir"])
        argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker"]
        argv += ["--pool", "prefork", "--concurrency", str(concurrency)]
        argv += ["-Q", config["queue"], "-n", f"bench-{name}@%h", "--loglevel", "WARNING"]
        argv += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        self.argv = argv
        env = {
            **os.environ,
            CONFIG_ENV: json.dumps(config),
            "PYTHONPATH": os.pathsep.join(
                [str(BENCH), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited during start-up (rc={self.proc.returncode})")
            if (self.marks_dir / f"ready-{self.proc.pid}").exists():
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker not ready within {timeout:.0f}s")

    def pids(self) -> list[int]:
        """The main process and its pool processes."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *(int(c) for c in children)]

    def stop(self, grace: float = 20.0) -> None:
        """Warm shutdown (SIGTERM: profile samples are written), then SIGKILL the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print("worker did not stop in time; SIGKILL", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftover pool processes of our group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()
