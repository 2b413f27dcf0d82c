"""No database models: locks, queues and cache entries are replicated by Raft, not stored in SQL.

The module exists because Django expects it for app discovery.
"""
