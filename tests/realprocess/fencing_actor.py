"""A lock holder in its own process, for the pause-past-TTL trials of ``test_fenced_writes``.

Run as ``python fencing_actor.py CONFIG_JSON``; it reads one JSON command per line on stdin and
answers one JSON line on stdout. The test SIGSTOPs the stale holder ("a") between commands, so
its keepalives stop as they would in a GC pause or a VM freeze. Commands:

- ``acquire names``: per name, a session of ``ttl`` seconds and the exclusive lock; then a
  fenced write with the fresh token to the cache and to every SQL database (all accepted);
  answers the tokens and those outcomes.
- ``take names``: the successor ("b"): acquire each lock (waiting for the holder's session to
  expire) and write its token to every SQL database; answers the tokens.
- ``write names tokens``: fenced writes with the given (old) tokens: the cache through
  ``coord.fenced`` and every database through ``fenced_update``; answers each outcome.
- ``read names``: each trial's row per database (owner, token) and cache value.
- ``release``: release everything held.

With ``rows`` in its config, the process first creates the table in every database and that
many rows (ids 0..rows-1: trial ``n`` guards row ``n``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import django  # noqa: E402
from django.conf import settings  # noqa: E402

CONFIG = json.loads(sys.argv[1])
settings.configure(  # connections are per thread: the trials' databases are settings here
    DATABASES={
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        **CONFIG["databases"],
    },
    USE_TZ=True,
)
django.setup()

from fencing_support import FencedRow, create_table  # noqa: E402

from coordination.client import Coordinator  # noqa: E402
from coordination.exceptions import StaleToken  # noqa: E402

for alias in CONFIG["databases"]:
    if CONFIG.get("rows"):
        create_table(alias)
        FencedRow.objects.using(alias).bulk_create(
            FencedRow(id=i, owner="nobody") for i in range(CONFIG["rows"])
        )

addresses = [tuple(a) if isinstance(a, list) else a for a in CONFIG["addresses"]]  # JSON lists
coord = Coordinator(addresses, CONFIG["secret"], timeout=10)
held: list[Any] = []


def outcome(write: Any) -> str:
    try:
        write()
    except StaleToken:
        return "rejected"
    return "accepted"


def fenced_writes(name: str, token: int, who: str) -> dict[str, str]:
    """One trial's fenced writes, to the cache and each database (row id = the trial's)."""
    trial = int(name.rsplit("-", 1)[1])
    result = {"raftsync": outcome(lambda: coord.fenced(name, token).set(name, who.encode()))}
    for alias in CONFIG["databases"]:
        rows = FencedRow.objects.using(alias).filter(pk=trial)
        result[alias] = outcome(lambda rows=rows: rows.fenced_update(token, owner=who))
    return result


def acquire(name: str) -> tuple[int, dict[str, str]]:
    session = coord.session(ttl=CONFIG["ttl"])
    lock = coord.lock(name, session=session)
    assert lock.acquire(), name
    held.append(lock)
    return lock.token, fenced_writes(name, lock.token, "a-before-pause")


def take(name: str) -> int:
    lock = coord.lock(name, wait=30, session=coord.session(ttl=30))
    assert lock.acquire(), name
    held.append(lock)
    for alias in CONFIG["databases"]:  # the successor writes: the database learns its token
        assert (
            FencedRow.objects.using(alias)
            .filter(pk=int(name.rsplit("-", 1)[1]))
            .fenced_update(lock.token, owner="b")
        )
    return lock.token


def read(name: str) -> dict[str, Any]:
    trial = int(name.rsplit("-", 1)[1])
    found = {"raftsync": (coord.cache_get_versioned(name) or (b"",))[0].decode()}
    for alias in CONFIG["databases"]:
        row = FencedRow.objects.using(alias).get(pk=trial)
        found[alias] = [row.owner, row.fence_token]
    return found


def main() -> None:
    with ThreadPoolExecutor(16) as pool:
        for line in sys.stdin:
            command = json.loads(line)
            names = command.get("names", [])
            if command["cmd"] == "acquire":
                answer: Any = dict(zip(names, pool.map(acquire, names), strict=True))
            elif command["cmd"] == "take":
                answer = dict(zip(names, pool.map(take, names), strict=True))
            elif command["cmd"] == "write":
                old = [command["tokens"][n] for n in names]
                writes = pool.map(fenced_writes, names, old, ["a-stale"] * len(names))
                answer = dict(zip(names, writes, strict=True))
            elif command["cmd"] == "read":
                answer = {name: read(name) for name in names}
            else:
                for lock in held:
                    with contextlib.suppress(Exception):  # a's: gone with its session
                        lock.release()
                    lock.session.close()
                held.clear()
                answer = "released"
            print(json.dumps(answer), flush=True)


main()
