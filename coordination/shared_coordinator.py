"""The process's one ``Coordinator``, shared by the REST API and the admin pages.

It lives apart from both so that importing the admin (which Django does at start-up in every
process, a node's included) does not import Django REST framework: a node process starts
about a third faster, and so does every ``manage.py`` command.
"""

from __future__ import annotations

import threading

from coordination import conf
from coordination.client.coordinator import Coordinator
from coordination.node import node_settings

_coord: Coordinator | None = None
_coord_lock = threading.Lock()


def coordinator() -> Coordinator:
    """The process's coordinator (from ``COORDINATION``), created on first use.

    Its timeout is ``API_REQUEST_TIMEOUT`` (``REQUEST_TIMEOUT`` unless set)."""
    global _coord
    with _coord_lock:
        if _coord is None:
            timeout = conf.api_request_timeout(node_settings.coordination())
            _coord = Coordinator.from_settings(timeout=timeout)
        return _coord


def reset_coordinator() -> None:
    """Forget the process's coordinator (tests that point it at another cluster)."""
    global _coord
    with _coord_lock:
        if _coord is not None:
            _coord.close()
        _coord = None
