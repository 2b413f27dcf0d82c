"""Helpers that run real nodes: the local-cluster launcher (processes), the in-process cluster
(nodes in one background event loop) and a fault-injecting proxy.

Used by the real-process tests, the benchmarks and ``run_cluster``; not by a production node.
"""
