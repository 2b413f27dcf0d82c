"""raftsync's Django app: fenced locks, queues, a replicated cache and Celery on a Raft cluster.

Add ``"coordination"`` to ``INSTALLED_APPS`` (docs/integration.md). Importing this package also
prepares Celery, in every process that loads the app, runs the ``celery`` command (whose
``celery raftsync`` subcommand, found through Celery's ``celery.commands`` entry point, imports
this package) or imports anything of raftsync:

- ``raft://`` broker URLs resolve to raftsync's kombu transport. kombu looks transports up only
  in ``kombu.transport.TRANSPORT_ALIASES`` (it has no entry point for them), so the alias is
  added here.
- Every Celery task honours the ``distributed_lock`` option (``coordination.celery.lock_option``):
  a task with it takes its lock or raises, whatever app or base class it has.
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
from coordination.celery import lock_option  # noqa: E402, F401  (after __version__: no cycle)
