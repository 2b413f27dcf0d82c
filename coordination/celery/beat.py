"""A Celery beat scheduler of which exactly one copy sends: ``ElectedScheduler``.

    celery -A proj beat -S coordination.celery.beat:ElectedScheduler     # on several hosts
    app.conf.beat_scheduler = "coordination.celery.beat:ElectedScheduler" # or in the settings

Running one beat is a single point of failure; running two with the stock schedulers sends
every periodic task twice (and a lock taken once at start-up, as some beat locks do, has two
owners after a pause: redbeat#127). Here every beat process campaigns in one election
(``coordination.client.election``) on a session of its own: the one elected is **active** and
runs the schedule; the others **stand by**, waiting in the election's queue (a leader-served
wait, no polling), and the next one is elected as soon as the active one's session ends:
closed on shutdown (at once), or expired one session TTL after it died or stalled.

**Before each send** the active scheduler checks, by a linearizable read, that its fencing
token is still the election's current grant. A beat paused past its TTL (SIGSTOP, a VM
freeze, a long GC) therefore does not fire when it resumes: it finds its leadership gone,
sends nothing, and goes back to standing by on a new session. The check and the publish are
two steps, so a pause that falls between them (a window of about a millisecond) can still
let one message through; a consumer that must be exact can fence on the token.

Settings (Celery config, or the environment):

- ``beat_election_ttl`` / ``RAFTSYNC_BEAT_ELECTION_TTL``: the session TTL, seconds (default
  10): how long a dead or frozen active beat keeps the others waiting.
- ``beat_election_name`` / ``RAFTSYNC_BEAT_ELECTION_NAME``: the election (default
  ``celery-beat.<app name>``); beats of one schedule must share it.

The cluster is the ``raft://`` broker's (its ``broker_transport_options["secret"]``), else
this Django project's ``COORDINATION`` settings. The schedule is kept in memory
(``celery.beat.Scheduler``): a standby that takes over starts its entries' intervals from
its own start, so an interval entry fires at once on takeover (once) and then on its period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from typing import Any

from celery.beat import Scheduler

from coordination.celery.connect import SCHEME, coordinator_for, hosts_from_urls
from coordination.client.coordinator import Coordinator, Session
from coordination.client.election import Election
from coordination.exceptions import CoordinationError
from raft_node.client import RaftError

logger = logging.getLogger(__name__)

DEFAULT_TTL = 10.0
RETRY_AFTER = 1.0  # seconds before a standby retries after the cluster could not be reached

__all__ = ["ElectedScheduler", "election_name", "election_ttl"]


def election_ttl(app: Any) -> float:
    """The beat session's TTL in seconds (``beat_election_ttl``, else the environment)."""
    value = app.conf.get("beat_election_ttl") or os.environ.get("RAFTSYNC_BEAT_ELECTION_TTL")
    return float(value) if value else DEFAULT_TTL


def election_name(app: Any) -> str:
    """The election the beats of ``app`` share (``beat_election_name``, else the environment,
    else ``celery-beat.<app name>`` with characters a name may not hold replaced)."""
    name = app.conf.get("beat_election_name") or os.environ.get("RAFTSYNC_BEAT_ELECTION_NAME")
    if name:
        return str(name)
    return "celery-beat." + re.sub(r"[^A-Za-z0-9_.:-]", "_", app.main or "celery")


def _coordinator(app: Any, ttl: float, label: str) -> Coordinator:
    """A client of the broker's cluster if the broker is ``raft://``, else of the settings'."""
    url = app.conf.broker_url or ""
    urls = list(url) if isinstance(url, (list, tuple)) else str(url).split(";")
    raft = [u for u in urls if u.strip().startswith(f"{SCHEME}://")]
    options = dict(app.conf.broker_transport_options or {}) if raft else {}
    return coordinator_for(hosts_from_urls(raft), options, session_ttl=ttl, name=label)


class ElectedScheduler(Scheduler):
    """``celery.beat.Scheduler`` that runs its schedule only while it holds the beat election
    and checks its fencing token before every send (module doc)."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.election_ttl = election_ttl(app)
        self.election_name = election_name(app)
        self.value = f"{socket.gethostname()}:{os.getpid()}"
        self._coord: Coordinator | None = None
        self._session: Session | None = None
        self._election: Election | None = None
        super().__init__(app, *args, **kwargs)

    # -- the election ---------------------------------------------------------------------------

    @property
    def coord(self) -> Coordinator:
        if self._coord is None:
            self._coord = _coordinator(self.app, self.election_ttl, f"beat-{self.value}")
        return self._coord

    @property
    def active(self) -> bool:
        """Elected, as far as this process knows without asking (its session not known lost)."""
        return (
            self._election is not None
            and self._election.leadership is not None
            and self._session is not None
            and not self._session.lost
        )

    def _campaign(self) -> float:
        """Stand by: wait (in the election's queue, up to one TTL) to be elected; the delay
        before the next tick (0: tick at once, elected or not)."""
        try:
            if self._session is None or self._session.lost:
                self._drop_session()
                self._session = self.coord.session(self.election_ttl, label=f"beat-{self.value}")
                self._election = self.coord.election(self.election_name, session=self._session)
            assert self._election is not None
            leadership = self._election.campaign(self.value, wait=max(1.0, self.election_ttl))
        except (CoordinationError, RaftError, OSError) as exc:
            logger.warning("beat: election %s unreachable (%s); retrying", self.election_name, exc)
            self._drop_session()
            return RETRY_AFTER
        if leadership is not None:
            logger.info(
                "beat: elected in %s (token %s): sending the schedule",
                self.election_name,
                leadership.token,
            )
        return 0.0

    def _still_leader(self) -> bool:
        """The fencing check before a send: is our token still the current grant?"""
        if not self.active:
            return False
        assert self._election is not None
        try:
            return self._election.is_leader()
        except (CoordinationError, RaftError, OSError) as exc:
            logger.warning("beat: could not confirm leadership (%s)", exc)
            return False  # unverifiable: a send could be a duplicate

    def _step_down(self, why: str) -> None:
        logger.warning("beat: %s; standing by", why)
        self._drop_session()

    def _drop_session(self) -> None:
        """Forget the election and close the session (releasing anything it still holds)."""
        session, self._session, self._election = self._session, None, None
        if session is not None:
            # best effort: the cluster may have ended it already
            with contextlib.suppress(CoordinationError, RaftError, OSError):
                session.close()

    # -- celery.beat.Scheduler hooks ------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass: stand by (campaign) unless elected; elected, the stock pass."""
        if not self.active:
            return self._campaign()
        return super().tick(*args, **kwargs)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        """Send ``entry`` only if our leadership is still current (the fence: module doc)."""
        if not self._still_leader():
            self._step_down(f"lost the election {self.election_name}; not sending {entry.name}")
            return
        super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        """Resign (the next standby is elected at once), then close as usual."""
        try:
            super().close()
        finally:
            if self._election is not None and self.active:
                with contextlib.suppress(CoordinationError, RaftError, OSError):
                    self._election.resign()
            self._drop_session()
            if self._coord is not None:
                self._coord.close()
                self._coord = None

    @property
    def info(self) -> str:
        return f"    . election -> {self.election_name} (session TTL {self.election_ttl:g} s)"
