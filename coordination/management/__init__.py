"""Management commands package (node process, cluster tools)."""
