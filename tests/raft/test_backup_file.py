"""Backup files (``raft_node.storage.backup``) and the BACKUP request shapes, without a cluster:
a file round-trips, any damage is refused naming the file, and a seeded data directory opens as
a node's storage with the image as its snapshot under the new configuration."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from raft_node.storage.backup import (
    BackupError,
    BackupHeader,
    TransferCorrupt,
    restore,
    verify_backup,
    write_backup,
)
from raft_node.storage.durable import DurableStorage
from raft_node.transport import backup_protocol as bp

IMAGE = bytes(range(256)) * 4000  # ~1 MB, several read chunks' worth of varied bytes
NEW = {"a": ("127.0.0.1", 7001), "b": ("127.0.0.1", 7002), "c": ("127.0.0.1", 7003)}


def _header(image: bytes = IMAGE) -> BackupHeader:
    digest = hashlib.sha256(image).hexdigest()
    return BackupHeader(42, 7, len(image), digest, ("n1", "n2", "n3"), (), None, {"node": "n1"})


def _saved(tmp_path: Path) -> Path:
    chunks = [IMAGE[i : i + 300_000] for i in range(0, len(IMAGE), 300_000)]
    return write_backup(tmp_path / "b.rsb", _header(), iter(chunks))


def test_a_file_round_trips_and_names_its_index(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    header, image = verify_backup(path)
    assert (header.index, header.term, header.voters) == (42, 7, ("n1", "n2", "n3"))
    assert header.extra == {"node": "n1"} and image == IMAGE
    assert verify_backup(path, load=False)[1] == b""
    assert [p.name for p in tmp_path.iterdir()] == ["b.rsb"]  # no temp file left


def test_bytes_that_do_not_match_the_announced_checksum_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(TransferCorrupt, match="sha256"):
        write_backup(tmp_path / "b.rsb", _header(), [IMAGE[:-1] + b"\0"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda n: n - 10, "checksum mismatch"),  # in the image
        (lambda n: 30, "corrupt header"),  # in the header
        (lambda n: 0, "not a raftsync backup"),  # the magic
    ],
)
def test_a_damaged_file_is_refused_naming_it(tmp_path: Path, where, message: str) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[where(len(data))] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=message) as caught:
        verify_backup(path)
    assert str(path) in str(caught.value)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(BackupError, match="truncated"):
        verify_backup(path)


def test_restore_seeds_a_data_directory_per_node_under_the_new_configuration(
    tmp_path: Path,
) -> None:
    path = _saved(tmp_path)
    checked: list[bytes] = []
    report = restore(path, {n: tmp_path / n for n in NEW}, NEW, check=checked.append, fsync=False)
    assert checked == [IMAGE] and report["index"] == 42 and set(report["data_dirs"]) == set(NEW)
    with DurableStorage(tmp_path / "b", fsync=False) as storage:
        state = storage.load()
    meta = state.snapshot.meta
    assert (meta.index, meta.term, meta.voters, meta.learners) == (42, 7, ("a", "b", "c"), ())
    addresses = {"a": "127.0.0.1:7001", "b": "127.0.0.1:7002", "c": "127.0.0.1:7003"}
    assert meta.context == {"addresses": addresses}
    assert state.snapshot.data == IMAGE and state.entries == ()
    assert (state.hard_state.term, state.hard_state.vote, state.hard_state.commit) == (7, "", 42)


def test_restore_refuses_a_used_directory_or_a_stranger_before_writing(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "LOCK").write_text("")
    with pytest.raises(BackupError, match="not empty"):
        restore(path, {n: tmp_path / n for n in NEW}, NEW, fsync=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(BackupError, match="not in the cluster"):
        restore(path, {"z": tmp_path / "z"}, NEW, fsync=False)


def test_restore_refuses_an_image_the_state_machine_cannot_load(tmp_path: Path) -> None:
    def refuse(image: bytes) -> None:
        raise ValueError("unknown snapshot version 9")

    with pytest.raises(BackupError, match="cannot load this image: unknown snapshot version"):
        restore(_saved(tmp_path), {"a": tmp_path / "a"}, NEW, check=refuse, fsync=False)
    assert not (tmp_path / "a").exists()


def test_backup_request_shapes() -> None:
    assert bp.parse_backup([8, 1, {"op": "begin"}]) == bp.Backup(1, "begin", True)
    assert bp.parse_backup([8, 2, {"op": "begin", "leader": False}]).leader is False
    chunk = bp.parse_backup([8, 3, {"op": "chunk", "token": "t", "offset": 5}])
    assert (chunk.token, chunk.offset) == ("t", 5)
    assert bp.parse_backup([8, 4, {"op": "end", "token": "t"}]).op == "end"
    for bad in (
        [8, 1],
        [8, -1, {"op": "begin"}],
        [8, 1, {"op": "begin", "leader": 1}],
        [8, 1, {"op": "chunk", "token": "t"}],
        [8, 1, {"op": "chunk", "token": "", "offset": 0}],
        [8, 1, {"op": "chunk", "token": "t", "offset": -1}],
        [8, 1, {"op": "drop"}],
        [8, 1, "begin"],
    ):
        with pytest.raises(bp.BackupRequestError):
            bp.parse_backup(bad)
