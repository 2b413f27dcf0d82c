"""Bytes on disk for ``raft_node.storage.durable``: record framing, record payloads, file names.

Everything here is pure (no file handles): it turns values into bytes and bytes back into values
or a precise complaint. ``durable.py`` owns the files, the fsyncs and the recovery decisions; the
format and the rules are described in its module docstring.

Framing (segments and snapshot files alike)::

    record = length:u32le  crc:u32le  payload[length]
    crc    = zlib.crc32(payload, zlib.crc32(length bytes))

The CRC covers the length too, so a flipped bit in a length that still points inside the file is
caught as a CRC mismatch instead of silently re-framing the rest of the segment.

Payloads are msgpack arrays whose first element is a tag (never pickle; never maps)::

    CHECKPOINT = [0, version, seq, hard_state, snapshot_meta, first_index, last_index]
    SAVE       = [1, reset_meta | nil, hard_state | nil, first_index, [[term, type, data]...]]
    SNAPSHOT   = [2, snapshot_meta]                          (host snapshot taken; entries kept)
    hard_state = [term, vote, commit]      snapshot_meta = [index, term, [voter...]]

A SAVE's entries are consecutive, so only the first index is stored.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from raft_node.core.conf import decode_context, encode_context
from raft_node.core.messages import Entry, EntryType, HardState, Snapshot, SnapshotMeta
from raft_node.storage.protocol import StorageError

FORMAT_VERSION = 1
HEADER = struct.Struct("<II")
MAX_RECORD = 64 * 1024 * 1024
"""Largest log record payload. Bigger saves are split; a single bigger entry is refused."""
MAX_SNAPSHOT_RECORD = 2**32 - 1
"""Largest snapshot file payload: what a u32 length can describe."""

TAG_CHECKPOINT = 0
TAG_SAVE = 1
TAG_SNAPSHOT = 2

SNAPSHOT_MAGIC = "raftsync-snapshot"
ENTRY_OVERHEAD = 32
"""Upper bound on msgpack bytes per entry beyond its data (array, term, type, bin header)."""

_SEGMENT_RE = re.compile(r"^(\d{20})-(\d{20})\.seg$")
_SNAPSHOT_RE = re.compile(r"^(\d{20})-(\d{20})\.snap$")
_ENTRY_TYPES = {int(t): t for t in EntryType}


class CorruptStorage(StorageError):
    """The files on disk are damaged somewhere other than a torn tail: refuse to start."""


# -- names -------------------------------------------------------------------------------------


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:020d}-{first_index:020d}.seg"


def parse_segment_name(name: str) -> int | None:
    """The sequence number of a segment file name, or None for any other file."""
    m = _SEGMENT_RE.match(name)
    return int(m.group(1)) if m else None


def snapshot_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}.snap"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    m = _SNAPSHOT_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


# -- framing -----------------------------------------------------------------------------------


def frame(payload: bytes, limit: int = MAX_RECORD) -> bytes:
    if len(payload) > limit:
        raise StorageError(f"record of {len(payload)} bytes exceeds the {limit}-byte limit")
    length = len(payload).to_bytes(4, "little")
    return length + zlib.crc32(payload, zlib.crc32(length)).to_bytes(4, "little") + payload


@dataclass(slots=True)
class Scan:
    """The valid records of one file, and where (and why) the valid part ends if it is torn.

    ``valid_end`` is where the next record goes. With ``tail_ok``, zeros after it are free space
    (a preallocated segment), not damage: ``torn`` stays None and nothing needs repair."""

    records: list[tuple[int, memoryview]]
    valid_end: int
    torn: str | None = None


def scan(buf: bytes, path: Path, *, tail_ok: bool, limit: int = MAX_RECORD) -> Scan:
    """Split ``buf`` into records. With ``tail_ok`` a damaged *final* record is reported as torn
    (the caller truncates it) and an all-zero tail as free space; any other damage raises
    ``CorruptStorage``."""
    view, n, off = memoryview(buf), len(buf), 0
    records: list[tuple[int, memoryview]] = []
    while off < n:
        problem, end = _check_record(buf, off, limit)
        if problem is None:
            records.append((off, view[off + HEADER.size : end]))
            off = end
            continue
        if tail_ok and _zeros_from(buf, off):
            return Scan(records, off)
        if tail_ok and _is_tail(buf, off, end, problem):
            return Scan(records, off, f"{problem} at byte offset {off}")
        raise CorruptStorage(f"{path}: {problem} at byte offset {off}")
    return Scan(records, off)


def _check_record(buf: bytes, off: int, limit: int) -> tuple[str | None, int]:
    """(None, end) for a sound record at ``off``; otherwise (what is wrong, claimed end)."""
    n = len(buf)
    if n - off < HEADER.size:
        return "short header", n
    length, crc = HEADER.unpack_from(buf, off)
    end = off + HEADER.size + length
    if length > limit:
        return f"record length {length} exceeds the limit", end
    if end > n:
        return "short payload", end
    actual = zlib.crc32(memoryview(buf)[off + HEADER.size : end], zlib.crc32(buf[off : off + 4]))
    if actual != crc:
        return "crc mismatch", end
    return None, end


def _zeros_from(buf: bytes, off: int) -> bool:
    return off >= len(buf) or buf.count(0, off) == len(buf) - off


def _is_tail(buf: bytes, off: int, end: int, problem: str) -> bool:
    """Could this damage at ``off`` be an interrupted final write? Only if nothing but zeros
    follows the record's claimed end. Then: the file ends inside the record (short header or
    payload), or the bad record is exactly the last one (CRC mismatch), or it sits in
    preallocated space whose rest was never written (CRC mismatch, zeros after it).

    Three shapes are not a torn write even though nothing follows them: a complete length above
    the limit (we never write one), and a short payload or a record inside preallocated space
    whose bytes, trailing zeros left out, hold a complete msgpack value that ends before the
    claimed length. msgpack is self-delimiting, so a proper prefix of our payload never decodes
    completely; if the bytes do, the length field was corrupted to point past the record, and
    treating that as torn would silently drop an acknowledged record (and, in a file that
    grows, the records after it).
    """
    if problem.startswith("record length") or not _zeros_from(buf, end):
        return False
    if problem == "crc mismatch" and end == len(buf):
        return True
    payload = bytes(buf[off + HEADER.size : min(end, len(buf))]).rstrip(b"\0")
    return not _ends_before(payload, end - off - HEADER.size)


def _ends_before(data: bytes, length: int) -> bool:
    """Do ``data``'s first bytes hold a complete msgpack value shorter than ``length``?"""
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return False
    except Exception:  # garbage rather than a prefix of our bytes: sectors lost in the crash
        return False
    return unpacker.tell() < length


# -- log records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """First record of every segment: the whole log state except the entries' contents."""

    seq: int
    hard_state: HardState
    snapshot: SnapshotMeta
    first_index: int
    last_index: int


@dataclass(frozen=True, slots=True)
class SaveRecord:
    reset: SnapshotMeta | None
    hard_state: HardState | None
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class SnapshotMark:
    meta: SnapshotMeta


Record = Checkpoint | SaveRecord | SnapshotMark


def _hs(hs: HardState) -> tuple[int, str, int]:
    return (hs.term, hs.vote, hs.commit)


def _meta(m: SnapshotMeta) -> tuple[Any, ...]:
    """``(index, term, voters)``, plus ``learners`` and the JSON context once there are any
    (files written before learners existed have three fields)."""
    if not m.learners and m.context is None:
        return (m.index, m.term, tuple(m.voters))
    return (m.index, m.term, tuple(m.voters), tuple(m.learners), encode_context(m.context))


def encode_checkpoint(cp: Checkpoint) -> bytes:
    return frame(
        msgpack.packb(
            (
                TAG_CHECKPOINT,
                FORMAT_VERSION,
                cp.seq,
                _hs(cp.hard_state),
                _meta(cp.snapshot),
                cp.first_index,
                cp.last_index,
            )
        )
    )


def encode_save(
    hard_state: HardState | None, entries: Sequence[Entry], reset: SnapshotMeta | None
) -> list[bytes]:
    """Framed SAVE records for one ``save()``: one record unless the entries exceed the record
    limit, in which case the reset rides on the first chunk and the hard state on the last."""
    chunks = _chunk(entries)
    out = []
    for i, chunk in enumerate(chunks):
        payload = msgpack.packb(
            (
                TAG_SAVE,
                _meta(reset) if reset is not None and i == 0 else None,
                _hs(hard_state) if hard_state is not None and i == len(chunks) - 1 else None,
                chunk[0].index if chunk else 0,
                [(e.term, int(e.type), e.data) for e in chunk],
            )
        )
        out.append(frame(payload))
    return out


def _chunk(entries: Sequence[Entry]) -> list[Sequence[Entry]]:
    budget = MAX_RECORD - 64
    chunks: list[Sequence[Entry]] = []
    start, size = 0, 0
    for i, e in enumerate(entries):
        cost = len(e.data) + ENTRY_OVERHEAD
        if cost > budget:
            raise StorageError(
                f"entry {e.index} of {len(e.data)} bytes exceeds the {MAX_RECORD}-byte record limit"
            )
        if size + cost > budget:
            chunks.append(entries[start:i])
            start, size = i, 0
        size += cost
    chunks.append(entries[start:])
    return chunks


def encode_snapshot_mark(meta: SnapshotMeta) -> bytes:
    return frame(msgpack.packb((TAG_SNAPSHOT, _meta(meta))))


def decode_record(payload: memoryview) -> Record:
    """Decode a CRC-checked payload. Raises ValueError on any surprise (the caller adds where)."""
    try:
        rec = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
        tag = rec[0]
        if tag == TAG_SAVE:
            reset = None if rec[1] is None else _read_meta(rec[1])
            hs = None if rec[2] is None else _read_hs(rec[2])
            return SaveRecord(reset, hs, _read_entries(rec[3], rec[4]))
        if tag == TAG_CHECKPOINT:
            if rec[1] != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {rec[1]!r}")
            first, last = _int(rec[5]), _int(rec[6])
            return Checkpoint(_int(rec[2]), _read_hs(rec[3]), _read_meta(rec[4]), first, last)
        if tag == TAG_SNAPSHOT:
            return SnapshotMark(_read_meta(rec[1]))
        raise ValueError(f"unknown record tag {tag!r}")
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as e:
        raise ValueError(f"undecodable record: {e}") from e


def _int(x: Any) -> int:
    if type(x) is not int or x < 0:
        raise ValueError(f"expected a non-negative int, got {x!r}")
    return x


def _read_hs(x: Any) -> HardState:
    term, vote, commit = x
    if type(vote) is not str:
        raise ValueError(f"vote must be a str, got {vote!r}")
    return HardState(_int(term), vote, _int(commit))


def _read_meta(x: Any) -> SnapshotMeta:
    index, term, voters = x[:3]
    learners, context = x[3:] if len(x) == 5 else ((), b"")
    if not all(type(v) is str for v in (*voters, *learners)):
        raise ValueError(f"voters and learners must be strs, got {voters!r} {learners!r}")
    if type(context) is not bytes:
        raise ValueError("configuration context must be bytes")
    meta = SnapshotMeta(_int(index), _int(term), tuple(voters), tuple(learners))
    return dataclasses.replace(meta, context=decode_context(context))


def _read_entries(first: Any, raw: list[Any]) -> list[Entry]:
    """Entries ``first, first+1, ...`` from ``[[term, type, data]...]``.

    Startup time is dominated by this loop, so the fields are not re-validated one by one: the
    record passed its CRC and was written by ``encode_save``. The shape still is (unpacking and
    the type lookup raise on a surprise).
    """
    return _build_entries(_int(first), raw)


def _make_entry_builder() -> Callable[[int, list[Any]], list[Entry]]:
    """Build entries through their slot descriptors (about 3x faster than the frozen
    dataclass's ``__init__``, which goes through ``object.__setattr__`` per field), but only
    while ``Entry`` still has exactly the fields this knows; otherwise use the constructor."""
    types = _ENTRY_TYPES
    known = tuple(f.name for f in dataclasses.fields(Entry)) == ("term", "index", "data", "type")
    if not known or hasattr(Entry, "__post_init__") or "__slots__" not in vars(Entry):

        def slow(index: int, raw: list[Any]) -> list[Entry]:
            return [Entry(t, i, d, types[ty]) for i, (t, ty, d) in enumerate(raw, index)]

        return slow

    new = object.__new__
    set_term, set_index = Entry.term.__set__, Entry.index.__set__  # type: ignore[attr-defined]
    set_data, set_type = Entry.data.__set__, Entry.type.__set__  # type: ignore[attr-defined]

    def fast(index: int, raw: list[Any]) -> list[Entry]:
        out = []
        for i, (term, typ, data) in enumerate(raw, index):
            e = new(Entry)
            set_term(e, term)
            set_index(e, i)
            set_data(e, data)
            set_type(e, types[typ])
            out.append(e)
        return out

    return fast


_build_entries = _make_entry_builder()


# -- snapshot files ----------------------------------------------------------------------------


def encode_snapshot_file(snapshot: Snapshot) -> bytes:
    m = snapshot.meta
    fields = [SNAPSHOT_MAGIC, FORMAT_VERSION, m.index, m.term, list(m.voters), snapshot.data]
    if m.learners or m.context is not None:
        fields += [list(m.learners), encode_context(m.context)]
    payload = msgpack.packb(fields)
    return frame(payload, MAX_SNAPSHOT_RECORD)


def decode_snapshot_file(buf: bytes, path: Path) -> Snapshot:
    """The snapshot in a file that must be whole: any damage is ``CorruptStorage``."""
    found = scan(buf, path, tail_ok=False, limit=MAX_SNAPSHOT_RECORD)
    if len(found.records) != 1:
        raise CorruptStorage(f"{path}: expected one record, found {len(found.records)}")
    try:
        fields = msgpack.unpackb(found.records[0][1], raw=False)
        magic, version, index, term, voters, data = fields[:6]
        if magic != SNAPSHOT_MAGIC or version != FORMAT_VERSION or type(data) is not bytes:
            raise ValueError("not a raftsync snapshot of this version")
        meta = _read_meta((index, term, voters, *fields[6:8]))
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptStorage(f"{path}: undecodable snapshot at byte offset 0: {e}") from e
    return Snapshot(meta, data)
