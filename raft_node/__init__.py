"""raftsync's consensus engine: a sans-I/O Raft core plus its storage and transport adapters.

This package never imports Django or ``coordination``. The core modules (``messages``, ``log``,
``progress``, ``quorum``, ``read_only``, ``ready``, ``raft``, ``rawnode``, ``storage``) import no
asyncio, socket, threading or time: time arrives as ``tick()`` calls and randomness as an
injected ``random.Random``.
"""

from raft_node.messages import Entry, EntryType, HardState, Message, MessageType, Snapshot
from raft_node.raft import Config, ProposalDropped
from raft_node.rawnode import RawNode, Status
from raft_node.read_only import ReadState
from raft_node.ready import Ready, Role, SoftState
from raft_node.storage import MemoryStorage, PersistentState, Storage

__all__ = [
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PersistentState",
    "ProposalDropped",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "Status",
    "Storage",
]
