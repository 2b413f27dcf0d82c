"""Wire codec and framing: exact roundtrips; nothing but CodecError/FrameError on hostile bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_depth import examples

from raft_node.core.messages import (
    LOCAL_MESSAGES,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from raft_node.transport.codec import (
    CodecError,
    decode_message,
    decode_payload,
    encode_message,
    encode_payload,
)
from raft_node.transport.wire import (
    VERSION,
    FrameDecoder,
    FrameError,
    FrameKind,
    encode_frame,
    read_frame,
    read_frame_sync,
    send_frame_sync,
)

NETWORK_TYPES = [t for t in MessageType if t not in LOCAL_MESSAGES]
U64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL = st.integers(min_value=0, max_value=2**31)
IDS = st.text(max_size=8)

entries = st.builds(
    Entry,
    term=U64,
    index=U64,
    data=st.binary(max_size=64),
    type=st.sampled_from(list(EntryType)),
)
snapshots = st.builds(
    Snapshot,
    meta=st.builds(
        SnapshotMeta,
        index=U64,
        term=U64,
        voters=st.lists(IDS, max_size=5).map(tuple),
        learners=st.lists(IDS, max_size=2).map(tuple),
        context=st.none() | st.dictionaries(IDS, st.text(max_size=20), max_size=3),
    ),
    data=st.binary(max_size=256),
)
messages = st.builds(
    Message,
    type=st.sampled_from(NETWORK_TYPES),
    to=IDS,
    frm=IDS,
    term=U64,
    log_term=SMALL,
    index=U64,
    entries=st.lists(entries, max_size=8).map(tuple),
    commit=SMALL,
    reject=st.booleans(),
    reject_hint=SMALL,
    context=st.binary(max_size=16),
    snapshot=st.none() | snapshots,
)


def _fields(m: Message) -> tuple:
    return tuple(getattr(m, f) for f in Message.__slots__)


@given(messages)
def test_message_roundtrip(m: Message) -> None:
    out = decode_message(encode_message(m))
    assert out == m
    assert type(out.type) is MessageType
    assert all(type(e.type) is EntryType for e in out.entries)
    assert type(out.entries) is tuple
    assert _fields(out) == _fields(m)


@pytest.mark.parametrize("mtype", NETWORK_TYPES)
def test_every_network_type_roundtrips(mtype: MessageType) -> None:
    m = Message(
        type=mtype,
        to="n2",
        frm="n1",
        term=7,
        log_term=6,
        index=41,
        entries=(Entry(7, 42, b"x"), Entry(7, 43, b"", EntryType.NOOP)),
        commit=40,
        reject=True,
        reject_hint=39,
        context=b"ctx",
        snapshot=Snapshot(SnapshotMeta(40, 6, ("n1", "n2", "n3")), b"\x00image"),
    )
    assert decode_message(encode_message(m)) == m
    bare = Message(type=mtype, to="n2", frm="n1")
    assert decode_message(encode_message(bare)) == bare


def test_wire_shape_is_positional() -> None:
    m = Message(MessageType.APP, "b", "a", 3, 2, 9, (Entry(3, 10, b"d"),), 8)
    raw = msgpack.unpackb(encode_message(m))
    assert raw == [10, "b", "a", 3, 2, 9, [[3, 10, 0, b"d"]], 8, False, 0, b"", None]
    snap = Message(MessageType.SNAP, snapshot=Snapshot(SnapshotMeta(5, 2, ("a",)), b"s"))
    assert msgpack.unpackb(encode_message(snap))[11] == [5, 2, ["a"], b"s"]
    meta = SnapshotMeta(5, 2, ("a",), ("b",), {"addresses": {"b": "h:1"}})
    snap = Message(MessageType.SNAP, snapshot=Snapshot(meta, b"s"))
    context = b'{"addresses": {"b": "h:1"}}'
    assert msgpack.unpackb(encode_message(snap))[11] == [5, 2, ["a"], b"s", ["b"], context]


@pytest.mark.parametrize("mtype", sorted(LOCAL_MESSAGES))
def test_local_messages_never_encoded(mtype: MessageType) -> None:
    with pytest.raises(CodecError):
        encode_message(Message(type=mtype))


def test_unencodable_field_is_codec_error() -> None:
    with pytest.raises(CodecError):
        encode_message(Message(MessageType.APP, term=object()))  # type: ignore[arg-type]


# -- hostile input --------------------------------------------------------------------------------

GOOD = [10, "b", "a", 3, 2, 9, [[3, 10, 0, b"d"]], 8, False, 0, b"", None]


def _with(i: int, v: object) -> bytes:
    raw = list(GOOD)
    raw[i] = v
    return msgpack.packb(raw)


HOSTILE = [
    b"",
    b"\xc1",  # never-used byte
    b"\x90",  # empty array
    msgpack.packb(GOOD[:-1]),  # wrong length
    msgpack.packb([*GOOD, None]),
    msgpack.packb(GOOD) + b"\x00",  # trailing data
    msgpack.packb(GOOD)[:-1],  # truncated
    msgpack.packb({"type": 10}),
    _with(0, 1),  # local tag HUP
    _with(0, 99),  # unknown tag
    _with(0, True),  # bool is not a tag
    _with(0, 10.0),  # float is not a tag
    _with(0, "APP"),
    _with(1, b"b"),  # bytes instead of str
    _with(3, -1),  # negative term
    _with(5, -5),  # negative index
    _with(5, True),
    _with(7, -(2**63)),
    _with(8, 0),  # reject must be bool
    _with(10, "ctx"),
    _with(6, [[3, 10, 0]]),  # short entry
    _with(6, [[3, 10, 0, b"d", 1]]),
    _with(6, [[3, -10, 0, b"d"]]),
    _with(6, [[3, 10, 7, b"d"]]),  # unknown entry type
    _with(6, [[3, 10, True, b"d"]]),
    _with(6, [[3, 10, 0, "d"]]),
    _with(6, ["abcd"]),  # a 4-char string unpacks like a row
    _with(6, [b"\x01\x02\x03\x04"]),
    _with(6, [7]),
    _with(6, {"a": 1}),
    _with(6, "x"),
    _with(11, [1, 2, ["a"]]),
    _with(11, [1, 2, "a", b"s"]),
    _with(11, [1, 2, [1], b"s"]),
    _with(11, [-1, 2, [], b"s"]),
    _with(11, [1, 2, [], "s"]),
    _with(11, 5),
    b"\xdd\xff\xff\xff\xff",  # array of 4G elements in 5 bytes: must not allocate
    b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
    b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
    b"\xdf\xff\xff\xff\xff",  # map of 4G pairs
    b"\x91" * 100_000 + b"\xc0",  # nesting far beyond any stack
    b"\xd4\x01\x00",  # fixext 1
    b"\xc7\x00\x05",  # ext 8 of length 0
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp ext
    b"\xa2\xff\xfe",  # invalid UTF-8 str
    b"\x81\x01\x02",  # int map key
    msgpack.packb({"a": 1}),
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_message_bytes(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_message(data)


HOSTILE_PAYLOADS = [
    b"",
    b"\xc1",
    b"\x90\x00",  # trailing data
    b"\xdd\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\x91" * 100_000 + b"\xc0",
    b"\xd4\x01\x00",
    b"\xc7\x00\x05",
    b"\xd6\xff\x00\x00\x00\x00",
    b"\xa2\xff\xfe",
    b"\x81\x01\x02",
    b"\x81\x91\x01\x02",  # array as map key
]


@pytest.mark.parametrize("data", HOSTILE_PAYLOADS)
def test_hostile_payload_bytes(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_payload(data)


def test_decode_rejects_non_bytes() -> None:
    for bad in (None, "str", 5, [1]):
        with pytest.raises(CodecError):
            decode_message(bad)  # type: ignore[arg-type]
        with pytest.raises(CodecError):
            decode_payload(bad)  # type: ignore[arg-type]
    assert decode_message(bytearray(encode_message(Message(MessageType.VOTE)))).term == 0


@settings(max_examples=examples(quick=150, deep=400), suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_only_codec_error(data: bytes) -> None:
    for decode in (decode_message, decode_payload):
        with contextlib.suppress(CodecError):
            decode(data)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=13) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=examples(quick=100, deep=300))
@given(msgpack_values)
def test_random_msgpack_structures_only_codec_error(v: object) -> None:
    data = msgpack.packb(v)
    try:
        m = decode_message(data)
    except CodecError:
        return
    assert decode_message(encode_message(m)) == m


@settings(max_examples=examples(quick=100, deep=300))
@given(messages, st.data())
def test_mutated_encodings_only_codec_error(m: Message, data: st.DataObject) -> None:
    b = bytearray(encode_message(m))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(b)))
    for candidate in (bytes(b), bytes(b[:cut])):
        try:
            out = decode_message(candidate)
        except CodecError:
            continue
        assert decode_message(encode_message(out)) == out


# -- payloads --------------------------------------------------------------------------------------


@given(msgpack_values)
def test_payload_roundtrip(v: object) -> None:
    assert decode_payload(encode_payload(v)) == v


def test_payload_depth_limit() -> None:
    v: list = []
    for _ in range(40):
        v = [v]
    with pytest.raises(CodecError, match="deeper"):
        decode_payload(encode_payload(v))
    assert decode_payload(encode_payload(v), max_depth=41) == v
    with pytest.raises(CodecError):
        decode_payload(encode_payload({"a": {"b": [1]}}), max_depth=2)


def test_payload_unencodable() -> None:
    for bad in (object(), {1, 2}, 2**70, {"k": object()}):
        with pytest.raises(CodecError):
            encode_payload(bad)


def test_payload_non_string_keys_refused() -> None:
    with pytest.raises(CodecError):
        decode_payload(msgpack.packb({1: "x"}))


# -- framing ---------------------------------------------------------------------------------------


def test_frame_layout() -> None:
    f = encode_frame(FrameKind.RAFT, b"abc")
    assert f == struct.pack(">IBB", 5, VERSION, 1) + b"abc"
    with pytest.raises(FrameError):
        encode_frame(FrameKind.RAFT, b"x" * 100, max_frame_bytes=50)


def test_decoder_splits_and_joins() -> None:
    frames = [encode_frame(FrameKind.RAFT, bytes([i]) * i) for i in range(30)]
    stream = b"".join(frames)
    for step in (1, 3, 7, 1000):
        d = FrameDecoder()
        got = []
        for i in range(0, len(stream), step):
            got += d.feed(stream[i : i + step])
        assert got == [(1, bytes([i]) * i) for i in range(30)]
        assert d.pending == 0


@pytest.mark.parametrize(
    "header",
    [
        struct.pack(">I", 5 * 1024 * 1024),  # over the limit
        struct.pack(">I", 0xFFFFFFFF),
        struct.pack(">I", 1),  # shorter than version + kind
        struct.pack(">IBB", 5, 2, 1),  # unknown version
        struct.pack(">IBB", 5, 1, 99),  # unknown kind
    ],
)
def test_decoder_rejects_bad_header_without_body(header: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(header)


def test_read_frame_rejects_oversize_before_reading_body() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">I", 1 << 30))  # no body ever arrives, no EOF
        with pytest.raises(FrameError, match="exceeds"):
            await asyncio.wait_for(read_frame(reader, 1024), 1.0)
        ok = asyncio.StreamReader()
        ok.feed_data(encode_frame(FrameKind.CLIENT_REQUEST, b"hi"))
        assert await read_frame(ok, 1024) == (FrameKind.CLIENT_REQUEST, b"hi")
        ok.feed_eof()
        with pytest.raises(EOFError):
            await read_frame(ok, 1024)
        cut = asyncio.StreamReader()
        cut.feed_data(encode_frame(FrameKind.RAFT, b"abcdef")[:-2])
        cut.feed_eof()
        with pytest.raises(FrameError):
            await read_frame(cut, 1024)

    asyncio.run(main())


def test_sync_frames() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(2.0)
        send_frame_sync(a, FrameKind.CLIENT_REQUEST, b"payload")
        assert read_frame_sync(b, 1024) == (FrameKind.CLIENT_REQUEST, b"payload")
        a.sendall(struct.pack(">I", 1 << 30))  # declared length only; body never sent
        with pytest.raises(FrameError, match="exceeds"):
            read_frame_sync(b, 1024)
        a.close()
        with pytest.raises(EOFError):
            read_frame_sync(b, 1024)
