"""Celery on the cluster: the ``raft://`` kombu transport (``transport``, with exchange bindings
shared through the cluster in ``bindings``), the result backend, and the worker hooks that open
and close each worker process's coordination session (``worker``).

Nothing here is imported by ``coordination`` itself: Celery loads the transport and the result
backend by name, and the Django app connects the worker hooks in ``ready()``.
"""
