"""The demo project's own environment parsing, kept free of Django so it can be unit tested.

Only the demo's Django settings live here (``RAFTSYNC_DEBUG`` and friends, see ``settings.py``).
The ``COORDINATION`` keys and their ``RAFTSYNC_<KEY>`` variables belong to the plugin
(``coordination/conf.py``), so they work the same in any project.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordination.conf import Invalid, boolean


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """Parse a boolean variable, rejecting anything that is not clearly yes or no."""
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return boolean(raw)  # the same words as the plugin's RAFTSYNC_* booleans
    except Invalid:
        expected = "expected one of 1/0, true/false, yes/no, on/off"
        raise ValueError(f"{name}={raw!r}: {expected}") from None
