"""msgpack encoding of the core's values, and strict decoding of untrusted bytes.

Wire shapes (positional arrays, never maps; tags are the ``IntEnum`` values of
``raft_node.core.messages``, which are part of the wire format and never renumbered)::

    message  = [type, to, frm, term, log_term, index, [entry...], commit, reject, reject_hint,
                context, snapshot | nil]
    entry    = [term, index, type, data]
    snapshot = [index, term, [voter...], data]                        (before learners)
             | [index, term, [voter...], data, [learner...], context]   context: JSON bin

The protocol version lives in the frame header (``raft_node.transport.wire``), not here.

A snapshot on a TCP peer connection is streamed (``raft_node.transport.snapstream``); its header
frame is ``snapshot_header = [stream_id, total_bytes, chunk_bytes, message]``, where ``message``
is the ``encode_message`` bytes of the ``SNAP`` message with empty snapshot data, so the snapshot
meta travels in exactly the encoding above (whatever fields it grows).

Decoding is the attack surface of the whole node, so ``decode_message``/``decode_payload`` raise
``CodecError`` (a ``ValueError``) and nothing else, whatever the input: msgpack runs with every
container and string limit set from the input's own length (a 5-byte input cannot make it allocate
a 4-billion-slot list), map keys must be strings, ext types are refused, strings must be UTF-8,
and every field is type-checked (``bool`` is not an ``int`` here, ``1.0`` is not a tag), range-
checked (no negative term or index) and tag-checked (only network ``MessageType``s).

Speed: this is the replication hot path. Encoding builds one tuple per value and lets msgpack's C
packer do the rest. Decoding validates with a handful of ``type(x) is T`` tests per value and then
builds the frozen dataclasses directly through their slot descriptors, which is what their
generated ``__init__`` does minus the per-field call overhead (about 2x faster for entries). That
shortcut is only taken if the dataclasses still have exactly the fields it knows and no
``__post_init__``; otherwise the regular constructors are used, so a change in ``messages.py``
cannot silently produce half-built values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from raft_node.core.conf import decode_context, encode_context
from raft_node.core.messages import (
    LOCAL_MESSAGES,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

__all__ = [
    "MAX_PAYLOAD_DEPTH",
    "CodecError",
    "decode_message",
    "decode_payload",
    "decode_snapshot_header",
    "encode_message",
    "encode_payload",
    "encode_snapshot_header",
]

MAX_PAYLOAD_DEPTH = 32
"""Deepest container nesting ``decode_payload`` accepts (the client protocol needs a few)."""


class CodecError(ValueError):
    """Bytes that are not a valid encoding (or a value that cannot be encoded)."""


_NETWORK_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType if t not in LOCAL_MESSAGES}
_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_new = object.__new__


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} is not allowed")


def _unpack(b: bytes, use_list: bool) -> Any:
    """msgpack-decode ``b`` with every limit derived from its length; only ``CodecError``."""
    if type(b) is not bytes:
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise CodecError(f"expected bytes, got {type(b).__name__}")
        b = bytes(b)
    n = len(b)
    try:
        return _unpackb(
            b,
            use_list=use_list,
            raw=False,
            strict_map_key=True,
            max_bin_len=n,
            max_str_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except CodecError:
        raise
    except Exception as e:  # msgpack raises ValueError subclasses, TypeError, MemoryError...
        raise CodecError(f"invalid msgpack: {type(e).__name__}: {e}") from None


# -- fast construction of the frozen dataclasses ----------------------------------------------


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_FAST = (
    _field_names(Entry) == ("term", "index", "data", "type")
    and _field_names(Message)
    == (
        "type",
        "to",
        "frm",
        "term",
        "log_term",
        "index",
        "entries",
        "commit",
        "reject",
        "reject_hint",
        "context",
        "snapshot",
    )
    and not hasattr(Entry, "__post_init__")
    and not hasattr(Message, "__post_init__")
    and "__slots__" in Entry.__dict__
    and "__slots__" in Message.__dict__
)

if _FAST:
    _e_term = Entry.term.__set__  # type: ignore[attr-defined]
    _e_index = Entry.index.__set__  # type: ignore[attr-defined]
    _e_data = Entry.data.__set__  # type: ignore[attr-defined]
    _e_type = Entry.type.__set__  # type: ignore[attr-defined]
    _m_setters = tuple(getattr(Message, name).__set__ for name in _field_names(Message))


def _decode_entries(rows: Any) -> tuple[Entry, ...]:
    if type(rows) is not tuple:
        raise CodecError("entries must be an array")
    out: list[Entry] = []
    append = out.append
    types = _ENTRY_TYPES
    new, cls = _new, Entry
    try:
        if _FAST:
            set_term, set_index, set_data, set_type = _e_term, _e_index, _e_data, _e_type
            for term, index, etype, data in rows:
                if (
                    type(term) is not int
                    or type(index) is not int
                    or type(etype) is not int
                    or type(data) is not bytes
                    or (term | index) < 0
                ):
                    raise CodecError(_BAD_ENTRY)
                e = new(cls)
                set_term(e, term)
                set_index(e, index)
                set_data(e, data)
                set_type(e, types[etype])
                append(e)
        else:  # pragma: no cover - only if messages.py changes shape
            for term, index, etype, data in rows:
                if (
                    type(term) is not int
                    or type(index) is not int
                    or type(etype) is not int
                    or type(data) is not bytes
                    or (term | index) < 0
                ):
                    raise CodecError(_BAD_ENTRY)
                append(cls(term, index, data, types[etype]))
    except CodecError:
        raise
    except KeyError as e:
        raise CodecError(f"unknown entry type {e.args[0]!r}") from None
    except (TypeError, ValueError):  # row not a 4-element array
        raise CodecError("an entry must be a 4-element array") from None
    return tuple(out)


_BAD_ENTRY = "entry fields must be [uint term, uint index, uint type, bin]"


def _decode_snapshot(s: Any) -> Snapshot:
    if type(s) is not tuple or len(s) not in (4, 6):
        raise CodecError("snapshot must be a 4- or 6-element array or nil")
    index, term, voters, data = s[:4]
    learners, context = s[4:] if len(s) == 6 else ((), b"")
    if type(index) is not int or type(term) is not int or (index | term) < 0:
        raise CodecError("snapshot index/term must be unsigned integers")
    for names in (voters, learners):
        if type(names) is not tuple or not all(type(v) is str for v in names):
            raise CodecError("snapshot voters and learners must be arrays of strings")
    if type(data) is not bytes or type(context) is not bytes:
        raise CodecError("snapshot data and context must be bin")
    meta = SnapshotMeta(index, term, voters, learners, _decode_context(context))
    return Snapshot(meta, data)


def _decode_context(raw: bytes) -> Any:
    try:
        return decode_context(raw)
    except ValueError as e:
        raise CodecError(f"bad configuration context: {e}") from None


def _snapshot_fields(s: Snapshot) -> tuple[Any, ...]:
    """The 4-element form while there is nothing else to say (a peer of the version before
    learners reads it), the 6-element form otherwise."""
    m = s.meta
    if not m.learners and m.context is None:
        return (m.index, m.term, m.voters, s.data)
    return (m.index, m.term, m.voters, s.data, m.learners, encode_context(m.context))


# -- messages ------------------------------------------------------------------------------------


def encode_message(m: Message) -> bytes:
    """Encode a network ``Message``; ``CodecError`` for local types or unencodable fields."""
    mtype = m.type
    if mtype not in _NETWORK_TYPES:
        raise CodecError(f"message type {mtype!r} is local or unknown; it never goes on the wire")
    s = m.snapshot
    try:
        return _packb(
            (
                mtype,
                m.to,
                m.frm,
                m.term,
                m.log_term,
                m.index,
                [(e.term, e.index, e.type, e.data) for e in m.entries],
                m.commit,
                m.reject,
                m.reject_hint,
                m.context,
                None if s is None else _snapshot_fields(s),
            )
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode message: {e}") from None


def decode_message(b: bytes) -> Message:
    """Decode bytes from ``encode_message``. Raises ``CodecError`` (only) on any invalid input."""
    v = _unpack(b, use_list=False)
    if type(v) is not tuple or len(v) != 12:
        raise CodecError("a message must be a 12-element array")
    mtype, to, frm, term, log_term, index, entries, commit, reject, hint, context, snap = v
    if type(mtype) is not int or mtype not in _NETWORK_TYPES:
        raise CodecError(f"unknown or local message type {mtype!r}")
    if (
        type(to) is not str
        or type(frm) is not str
        or type(term) is not int
        or type(log_term) is not int
        or type(index) is not int
        or type(commit) is not int
        or type(hint) is not int
        or type(reject) is not bool
        or type(context) is not bytes
    ):
        raise CodecError("message field of the wrong type")
    if (term | log_term | index | commit | hint) < 0:
        raise CodecError("negative term, index, commit or hint")
    ents = _decode_entries(entries) if entries else ()
    snapshot = None if snap is None else _decode_snapshot(snap)
    values = (
        _NETWORK_TYPES[mtype],
        to,
        frm,
        term,
        log_term,
        index,
        ents,
        commit,
        reject,
        hint,
        context,
        snapshot,
    )
    if not _FAST:  # pragma: no cover - only if messages.py changes shape
        return Message(*values)
    m = _new(Message)
    for setter, value in zip(_m_setters, values, strict=True):
        setter(m, value)
    return m


# -- generic payloads (client protocol) ---------------------------------------------------------


def encode_payload(obj: Any) -> bytes:
    """msgpack of dict/list/tuple/str/bytes/int/float/bool/None; ``CodecError`` otherwise."""
    try:
        return _packb(obj, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode payload: {e}") from None


def decode_payload(b: bytes, max_depth: int = MAX_PAYLOAD_DEPTH) -> Any:
    """Decode a client-protocol payload: plain msgpack (lists, str-or-bin-keyed maps, str, bin,
    int, float, bool, nil) nested at most ``max_depth`` containers. Only ``CodecError``."""
    v = _unpack(b, use_list=True)
    if type(v) in (list, dict):
        _check_depth(v, max_depth)
    return v


def _check_depth(root: list | dict, max_depth: int) -> None:
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        obj, depth = pop()
        if depth > max_depth:
            raise CodecError(f"payload nested deeper than {max_depth}")
        for child in obj.values() if type(obj) is dict else obj:
            if type(child) in (list, dict):
                push((child, depth + 1))


# -- the header of a streamed snapshot (raft_node.transport.snapstream) -----------------------


def encode_snapshot_header(stream_id: int, total_bytes: int, chunk_bytes: int, m: Message) -> bytes:
    """The header of a streamed ``SNAP`` message: its fields and snapshot meta, without the data
    (which follows in chunk frames). The meta is encoded by ``encode_message`` itself, so a field
    added to ``SnapshotMeta`` travels here without a change."""
    if m.type != MessageType.SNAP or m.snapshot is None:
        raise CodecError("only a SNAP message with a snapshot has a snapshot header")
    bare = dataclasses.replace(m, snapshot=dataclasses.replace(m.snapshot, data=b""))
    try:
        return _packb((stream_id, total_bytes, chunk_bytes, encode_message(bare)))
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode snapshot header: {e}") from None


def decode_snapshot_header(b: bytes) -> tuple[int, int, int, Message]:
    """``(stream_id, total_bytes, chunk_bytes, message)`` from ``encode_snapshot_header``; the
    message's snapshot has empty data. Raises ``CodecError`` (only) on any invalid input."""
    v = _unpack(b, use_list=False)
    if type(v) is not tuple or len(v) != 4:
        raise CodecError("a snapshot header must be a 4-element array")
    stream_id, total, chunk, body = v
    if type(stream_id) is not int or type(total) is not int or type(chunk) is not int:
        raise CodecError("snapshot header sizes must be integers")
    if stream_id < 0 or total < 0 or chunk < 1 or type(body) is not bytes:
        raise CodecError("snapshot header: negative id or size, or a message that is not bin")
    m = decode_message(body)
    if m.type != MessageType.SNAP or m.snapshot is None or m.snapshot.data:
        raise CodecError("a snapshot header must carry a SNAP message with empty data")
    return stream_id, total, chunk, m
