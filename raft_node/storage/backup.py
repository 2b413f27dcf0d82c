"""Backup files: a cluster's state at one log index, and new data directories seeded from one.

File layout (``raft_snapshot save`` writes it, ``raft_snapshot restore`` reads it)::

    magic       8 bytes   b"RSBACKUP"
    version     u32 le    FILE_VERSION
    header_len  u32 le
    header_crc  u32 le    zlib.crc32 of the header bytes
    header      msgpack map: index, term, size, sha256 (hex, of the image), voters, learners,
                context (the configuration at ``index`` in the cluster it came from), node (the
                one that took it), state_machine, log_time_ms, created_ms, format
    image       ``size`` bytes: the host's ``Applier.snapshot()`` (dedup table, log clock and
                the state machine's snapshot), exactly what a node's own snapshot file holds

The header has its own CRC so a damaged header is told from a damaged image, and the image its
SHA-256 (computed by the node that took it, checked again by the client that wrote the file and
by every reader), so a corrupt or truncated file is refused before anything is written from it.
Files are written atomically: a temp file next to the target, fsync, rename, directory fsync.

**Restore** (``seed_data_dir``) writes a brand-new node data directory whose initial snapshot is
the image, at the backup's index and term, under a NEW configuration: the given cluster, all
voters, their addresses as the configuration's context. The nodes then start with
``run_raft_node`` on those directories and the same ``--cluster``, elect a leader among
themselves and go on from ``index + 1``. The old cluster's membership is not carried over on
purpose: a restore makes a new cluster, which must never talk to the old one's nodes.

A restored node's hard state has the backup's term and no vote; the first election moves past
it. Sessions in the image carry deadlines in the old cluster's log time, which may have passed by
the time it is restored; the first leader's grace command (``StateMachine.leader_command``)
extends every live session by one TTL before any tick can expire one, so clients resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from raft_node.core.messages import HardState, NodeId, Snapshot, SnapshotMeta
from raft_node.storage.durable import DurableStorage

MAGIC = b"RSBACKUP"
FILE_VERSION = 1
_FIXED = struct.Struct("<8sIII")  # magic, version, header length, header crc
MAX_HEADER = 1 << 20
READ_CHUNK = 1 << 20
_HEADER_KEYS = frozenset({"index", "term", "size", "sha256", "voters", "learners", "context"})


class BackupError(Exception):
    """A backup file that cannot be used (damaged, truncated, not a backup, wrong version) or
    a restore that must not happen (target directory in use, node not in the cluster). The
    message names the file or directory."""


class TransferCorrupt(BackupError):
    """The bytes received do not match what the node announced: nothing was written; the
    save starts again."""


@dataclass(frozen=True)
class BackupHeader:
    """What a backup file says about itself (see the module doc)."""

    index: int
    term: int
    size: int
    sha256: str
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    context: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # node, state_machine, times

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "index": self.index,
            "term": self.term,
            "size": self.size,
            "sha256": self.sha256,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "context": self.context,
        }

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> BackupHeader:
        if not isinstance(raw, dict):
            raise BackupError(f"{path}: corrupt header (not a map)")
        if missing := sorted(_HEADER_KEYS - set(raw)):
            raise BackupError(f"{path}: corrupt header (lacks {missing})")
        extra = {k: v for k, v in raw.items() if k not in _HEADER_KEYS}
        ints = [raw["index"], raw["term"], raw["size"]]
        if not all(type(v) is int and v >= 0 for v in ints) or not raw["index"]:
            raise BackupError(f"{path}: header index/term/size are not valid: {ints}")
        if not isinstance(raw["sha256"], str) or len(raw["sha256"]) != 64:
            raise BackupError(f"{path}: header sha256 is not a hex SHA-256")
        voters, learners = tuple(raw["voters"]), tuple(raw["learners"])
        if not all(isinstance(v, str) for v in (*voters, *learners)):
            raise BackupError(f"{path}: header voters and learners must be node ids")
        return cls(*ints[:2], ints[2], raw["sha256"], voters, learners, raw["context"], extra)


def encode_header(header: BackupHeader) -> bytes:
    body = msgpack.packb(header.to_dict(), use_bin_type=True)
    return _FIXED.pack(MAGIC, FILE_VERSION, len(body), zlib.crc32(body)) + body


def write_backup(path: str | Path, header: BackupHeader, chunks: Any) -> Path:
    """Write a backup file atomically from ``chunks`` (an iterable of image bytes); checks
    that they add up to ``header.size`` bytes with ``header.sha256`` before the rename, so a
    file at ``path`` is always whole. Returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest, size = hashlib.sha256(), 0
    try:
        with _writing(path), open(tmp, "wb") as f:
            f.write(encode_header(header))
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
            if size != header.size or digest.hexdigest() != header.sha256:
                raise TransferCorrupt(
                    f"{path}: received {size} bytes with sha256 {digest.hexdigest()}, the node "
                    f"announced {header.size} bytes with sha256 {header.sha256}; not written"
                )
            f.flush()
            os.fsync(f.fileno())
        with _writing(path):
            os.replace(tmp, path)
            _sync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_header(f: BinaryIO, path: Path) -> BackupHeader:
    fixed = f.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        raise BackupError(f"{path}: not a raftsync backup (file too short)")
    magic, version, length, crc = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise BackupError(f"{path}: not a raftsync backup (bad magic {magic!r})")
    if version != FILE_VERSION:
        raise BackupError(f"{path}: backup format version {version}, this raftsync reads 1")
    if length > MAX_HEADER:
        raise BackupError(f"{path}: corrupt header (length {length})")
    body = f.read(length)
    if len(body) != length or zlib.crc32(body) != crc:
        raise BackupError(f"{path}: corrupt header (CRC mismatch)")
    try:
        raw = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BackupError(f"{path}: corrupt header ({exc})") from None
    return BackupHeader.from_dict(raw, path)


def verify_backup(path: str | Path, *, load: bool = True) -> tuple[BackupHeader, bytes]:
    """The header and image of a backup file, checked: size and SHA-256 must match the header
    (``BackupError`` naming the file otherwise). ``load=False`` checks without keeping the
    image (``b""`` is returned), for a file bigger than you want in memory."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = read_header(f, path)
            digest, parts, size = hashlib.sha256(), [], 0
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if load:
                    parts.append(chunk)
    except OSError as exc:
        raise BackupError(f"{path}: cannot read: {exc}") from None
    if size != header.size:
        raise BackupError(
            f"{path}: corrupt or truncated: {size} image bytes, the header says {header.size}"
        )
    if digest.hexdigest() != header.sha256:
        raise BackupError(
            f"{path}: checksum mismatch: image sha256 {digest.hexdigest()}, "
            f"the header says {header.sha256}; the file is corrupt"
        )
    return header, b"".join(parts)


def seed_data_dir(
    data_dir: str | Path,
    header: BackupHeader,
    image: bytes,
    cluster: Mapping[NodeId, tuple[str, int]],
    *,
    fsync: bool = True,
) -> SnapshotMeta:
    """Write a new node data directory holding ``image`` as its initial snapshot at the
    backup's index, with ``cluster`` (all voters) as its configuration. Refuses a directory
    that already holds anything: restoring over a live node's log would mix two histories."""
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir}: not empty; restore writes only new data directories")
    # The context's shape is the membership's (``raft_node.host.members``): every address.
    addresses = {node: f"{host}:{port}" for node, (host, port) in sorted(cluster.items())}
    meta = SnapshotMeta(
        header.index, header.term, tuple(sorted(cluster)), (), {"addresses": addresses}
    )
    with DurableStorage(data_dir, fsync=fsync) as storage:
        storage.save(HardState(header.term, "", header.index), [], Snapshot(meta, image))
    return meta


def restore(
    path: str | Path,
    targets: Mapping[NodeId, str | Path],
    cluster: Mapping[NodeId, tuple[str, int]],
    *,
    check: Callable[[bytes], None] | None = None,
    fsync: bool = True,
) -> dict[str, Any]:
    """Verify the backup at ``path``, let ``check(image)`` try it (e.g. restore it into the
    configured state machine), then seed one data directory per node of ``targets``
    (node id -> directory; each must be in ``cluster``). Nothing is written unless the file
    verifies and every target is usable. Returns a report for people and scripts."""
    started = time.perf_counter()
    unknown = sorted(set(targets) - set(cluster))
    if unknown:
        raise BackupError(f"nodes {unknown} are not in the cluster {sorted(cluster)}")
    for node, directory in targets.items():
        d = Path(directory)
        if d.exists() and any(d.iterdir()):
            raise BackupError(f"{d} (node {node}): not empty; restore writes new directories")
    header, image = verify_backup(path)
    if check is not None:
        try:
            check(image)
        except Exception as exc:
            raise BackupError(f"{path}: the state machine cannot load this image: {exc}") from exc
    written = {}
    for node, directory in targets.items():
        seed_data_dir(directory, header, image, cluster, fsync=fsync)
        written[node] = str(directory)
    return {
        "file": str(path),
        "index": header.index,
        "term": header.term,
        "size": header.size,
        "sha256": header.sha256,
        "cluster": {n: f"{h}:{p}" for n, (h, p) in sorted(cluster.items())},
        "data_dirs": written,
        "seconds": round(time.perf_counter() - started, 3),
    }


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failure to write the file, as a ``BackupError`` naming it."""
    try:
        yield
    except OSError as exc:
        raise BackupError(f"{path}: cannot write: {exc}") from None


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
