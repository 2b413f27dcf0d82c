"""The pure Raft core: messages, log, progress, quorum, roles, ``RawNode`` and ``Ready``.

Sans-I/O: no sockets, event loops, threads, clocks or global randomness (checked by
``tests/raft/test_core_purity.py``). Time arrives as ``tick()`` calls, randomness as an injected
``random.Random``, and everything to send or persist leaves as a ``Ready``. The only thing the
core reads from outside its room is the storage contract (``raft_node.storage.protocol``).
"""
