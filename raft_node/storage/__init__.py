"""Where a node's Raft state lives: the ``Storage`` contract, its memory twin and the durable store.

``protocol`` and ``memory`` are pure (the simulator's disk is a ``MemoryStorage``); ``durable*``
is the fsync'd segment store a real node runs on.
"""
