"""``save_backup``: pull a consistent snapshot from a running cluster into a backup file.

The node side is ``raft_node.host.backup`` (request shapes in
``raft_node.transport.backup_protocol``): ``begin`` takes the image after a ReadIndex round, so
it holds every write acknowledged before the call, at a stated index; then the chunks are pulled
one request at a time (each answer fits a client frame), into a temp file that is checked
against the node's SHA-256 and renamed into place (``raft_node.storage.backup.write_backup``).
If the connection to the node drops mid-way, the image is gone with it (it lives in that node's
memory), so the whole backup starts again, up to ``attempts`` times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raft_node.client.errors import BadRequest, ClusterUnavailable, RaftError, Timeout
from raft_node.client.sync_client import RaftClient
from raft_node.storage.backup import BackupHeader, TransferCorrupt, write_backup
from raft_node.transport import backup_protocol as bp


class BackupClient(RaftClient):
    """A blocking client that can take backups (``begin``, then ``chunks``)."""

    def begin(self, *, leader: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Ask for an image (of the leader's state unless ``leader`` is False); the next
        ``chunks`` calls go to the node that took it."""
        with self._lock:
            spec = {"op": bp.BEGIN, "leader": leader}
            return self._call(bp.BACKUP, [spec], timeout, follow_leader=leader)

    def chunks(self, token: str, size: int, *, timeout: float | None = None) -> Iterator[bytes]:
        """The image's bytes, chunk by chunk, from the node that took it."""
        offset = 0
        while offset < size:
            with self._lock:
                spec = {"op": bp.CHUNK, "token": token, "offset": offset}
                chunk = self._call(bp.BACKUP, [spec], timeout, follow_leader=False)
            if not isinstance(chunk, bytes) or not chunk:
                raise BadRequest(f"backup {token}: no data at offset {offset} of {size}")
            offset += len(chunk)
            yield chunk

    def end(self, token: str) -> None:
        """Let the node drop the image early (after a failure on our side)."""
        with self._lock:
            self._call(bp.BACKUP, [{"op": bp.END, "token": token}], 2.0, follow_leader=False)


def save_backup(
    client: BackupClient,
    path: str | Path,
    *,
    leader: bool = True,
    attempts: int = 3,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Write a backup of the cluster ``client`` talks to into ``path``; returns what was
    written (index, term, size, sha256, the node it came from, timings)."""
    last: Exception | None = None
    for _ in range(max(1, attempts)):
        started = time.perf_counter()
        info = client.begin(leader=leader, timeout=timeout)
        took = time.perf_counter() - started
        header = BackupHeader(
            info["index"],
            info["term"],
            info["size"],
            info["sha256"],
            tuple(info["voters"]),
            tuple(info["learners"]),
            info["context"],
            {
                "node": info["node"],
                "state_machine": info["state_machine"],
                "log_time_ms": info["log_time_ms"],
                "created_ms": time.time_ns() // 1_000_000,
                "format": "raftsync-backup",
            },
        )
        try:
            write_backup(path, header, client.chunks(info["token"], info["size"], timeout=timeout))
        except (BadRequest, ClusterUnavailable, Timeout, TransferCorrupt) as exc:
            last = exc  # the node, or our connection to it, went away: the image is lost
            _quietly_end(client, info["token"])
            continue
        return {
            **header.to_dict(),
            "file": str(path),
            "snapshot_seconds": round(took, 3),
            "seconds": round(time.perf_counter() - started, 3),
        }
    assert last is not None
    raise last


def _quietly_end(client: BackupClient, token: str) -> None:
    with contextlib.suppress(RaftError, OSError):  # it drops it after its idle timeout anyway
        client.end(token)
