"""raftsync's consensus engine: a sans-I/O Raft core plus its storage and transport adapters.

This package never imports Django or ``coordination``. The core modules (``messages``, ``log``,
``progress``, ``quorum``, ``read_only``, ``ready``, ``raft``, ``rawnode``, ``storage``) import no
asyncio, socket, threading or time: time arrives as ``tick()`` calls and randomness as an
injected ``random.Random``.
"""

from raft_node.core.messages import Entry, EntryType, HardState, Message, MessageType, Snapshot
from raft_node.core.raft import Config, ProposalDropped
from raft_node.core.rawnode import RawNode, Status
from raft_node.core.read_only import ReadState
from raft_node.core.ready import Ready, Role, SoftState
from raft_node.storage.memory import MemoryStorage
from raft_node.storage.protocol import PersistentState, Storage

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
