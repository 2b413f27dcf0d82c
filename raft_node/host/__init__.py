"""Everything between ``RawNode`` and the outside world that is not sockets or disk.

``NodeHost`` (``node_host``): the Ready loop, the tick and grace policy, snapshots and plugin
hooks, with the exactly-once ``applier`` and the request ``waiters``; the wire-facing request
handler (``requests``), the node's ``config`` and ``metrics``. The asyncio server
(``raft_node.server``) wires a ``NodeHost`` to the real transport, storage and clock; the
simulator (``raft_node.sim``) wires it to simulated ones.
"""
