"""Running a node of the product: settings to ``NodeConfig`` and the coordination state machine.

``runtime`` builds a node from resolved settings (no Django), ``node_settings`` adapts a Django
project's ``COORDINATION`` setting to it, ``node_runner`` and ``options`` are shared by
``manage.py run_raft_node`` and the ``raftsync`` console script, ``status_report`` prints
``raft_status``, ``devcluster`` starts a local cluster for ``run_cluster``, and ``redis_mirror``
is the leader-side plugin that mirrors the cache to Redis.
"""
