"""raftsync's Django app: fenced locks, queues, a replicated cache and Celery on a Raft cluster.

Add ``"coordination"`` to ``INSTALLED_APPS`` (docs/integration.md). Importing this package also
makes ``raft://`` broker URLs resolve to raftsync's kombu transport: kombu looks transports up
only in ``kombu.transport.TRANSPORT_ALIASES`` (it has no entry point for them), so the alias is
added here, by every process that loads the app or runs the ``celery`` command (whose
``celery raftsync`` subcommand, found through Celery's ``celery.commands`` entry point, imports
this package).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raftsync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

TRANSPORT = "coordination.celery.transport:Transport"


def register_transport() -> None:
    """Make ``raft://`` URLs resolve to the raftsync transport (idempotent, cheap)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault("raft", TRANSPORT)


register_transport()
