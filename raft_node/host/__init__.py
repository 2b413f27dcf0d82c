"""Everything between ``RawNode`` and the outside world that is not sockets or disk.

The exactly-once applier, the client-request handler and the node's metrics. The asyncio server
(``raft_node.server``) wires this room to the real transport, storage and clock.
"""
