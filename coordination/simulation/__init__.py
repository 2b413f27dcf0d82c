"""The Raft simulator running the coordination primitives (``python -m coordination.simulation``).

Same engine as ``raft_node.sim`` (network, disk and crash faults, Raft invariants after every
event); the workload runs sessions, fenced locks and queues with their own checkers.
"""
