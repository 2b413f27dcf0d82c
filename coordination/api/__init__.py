"""The REST API (``/api/``): thin DRF views over the coordination client."""
