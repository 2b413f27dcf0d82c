"""Django app exposing raftsync's coordination primitives (locks, queue, cache)."""
