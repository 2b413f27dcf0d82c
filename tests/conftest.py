"""Root conftest: marks tests/ as the rootdir for shared fixtures.

It deliberately imports nothing from Django: the Raft engine's tests must not depend on the web
layer, and pytest-django configures settings from pyproject.toml on its own.
"""
