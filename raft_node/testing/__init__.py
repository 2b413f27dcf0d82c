"""Helpers that run real node processes: the local-cluster launcher and a fault-injecting proxy.

Used by the real-process tests, the benchmarks and ``run_cluster``; not by a production node.
"""
