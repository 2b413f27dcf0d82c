"""nox sessions for what the default test run does not cover.

``nox -s lowest``: the new-project test (wheel built, installed into a fresh venv, a project
made by ``django-admin startproject`` and set up by docs/integration.md) with the lowest
supported dependency versions (requirements-lowest.txt) instead of the pinned newest ones.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lowest"]


@nox.session(python=False)
def lowest(session: nox.Session) -> None:
    """Run the plugin test against requirements-lowest.txt (uses the project's .venv to drive
    it; the project under test gets its own fresh venv with the lowest versions)."""
    session.run(
        ".venv/bin/python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "tests/plugin/test_new_project.py",
        env={"RAFTSYNC_PLUGIN_CONSTRAINTS": "requirements-lowest.txt"},
    )
