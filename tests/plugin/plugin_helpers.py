"""Helpers of the plugin tests (imported by them and by their conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, fail the test with its output."""
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into the checkout, no project settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAFTSYNC_", "DJANGO_"))}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def pip_for(bin_dir: Path) -> list[str]:
    """pip (this interpreter's) acting on the venv of ``bin_dir`` (``pip --python``)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--python",
        str(bin_dir / "python"),
    ]
