"""Coordination primitives as deterministic replicated state machines.

No I/O, no clock, no randomness here: every input is a committed log entry, and time is the
leader-stamped log clock (``Ctx.now_ms``). ``machine.CoordinationMachine`` composes the parts
(sessions, locks, queues, cache) into the state machine the Raft node hosts.
"""
