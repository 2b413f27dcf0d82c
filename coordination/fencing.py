"""Fencing tokens for resources outside raftsync: a Django model field and a queryset method that
refuse a write whose token is lower than the one already stored, in one SQL statement.

    from coordination.fencing import FencedQuerySet, FencingTokenField

    class Invoice(models.Model):
        status = models.CharField(max_length=20)
        fence_token = FencingTokenField()            # 0 until a fenced write stores one
        objects = FencedQuerySet.as_manager()

    with coord.lock(f"invoice:{pk}") as lock:
        Invoice.objects.filter(pk=pk).fenced_update(lock.token, status="paid")

Why: a lock holder can pause (GC, VM freeze, swap) past its session's TTL; the cluster then
grants the lock to someone else, and the first holder wakes up believing it still holds it. A
check before the write (``require_token``) leaves a gap in which the lock can move; the resource
itself must refuse the stale write. Fencing tokens strictly increase per lock (they are Raft
indexes), so the resource keeps the highest token it has seen and refuses lower ones.

``fenced_update(token, **fields)`` runs one statement::

    UPDATE invoice SET status = 'paid', fence_token = 17
     WHERE id = 42 AND fence_token <= 17

The comparison and the write are one atomic statement in the database itself:

- **PostgreSQL** (READ COMMITTED, its default): an UPDATE takes the row lock, and if another
  transaction changed the row meanwhile, re-checks the WHERE clause against the committed row
  before writing, so a concurrent write with a higher token makes this one match nothing.
- **SQLite**: a write holds the database's write lock for the whole statement.

It answers True when the rows were written. If rows match the filter but none was written, the
stored token is higher: ``FenceRejected`` (a ``StaleToken``). If no row matches the filter at
all, it answers False (nothing to write; creating a row is not a fenced write). An equal token
is accepted: the same holder may write several times. Rows whose token is higher are never
written, also when the filter matches several rows and others were written.

What this does not do: refuse a stale holder's write that comes *before* any newer holder wrote
(the database has not seen the newer token yet). Where that matters, keep the data in raftsync
and use ``coord.fenced(lock)``, which checks that the token is the lock's *current* grant.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models

from coordination.exceptions import CoordinationError, StaleToken

__all__ = ["FenceRejected", "FencedQuerySet", "FencingTokenField"]

_M = TypeVar("_M", bound=models.Model)


class FencingTokenField(models.PositiveBigIntegerField):
    """The highest fencing token a row has been written with (0: never by a fenced write).
    Tokens are Raft log indexes: positive, below 2**63, so a ``bigint`` holds them."""

    description = "Fencing token (the highest lock token the row was written with)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", 0)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)


class FenceRejected(StaleToken):
    """A fenced write found a higher token already stored: a newer lock holder wrote since.
    Code ``stale_token`` like every ``StaleToken`` (HTTP 409)."""

    def __init__(self, label: str, token: int) -> None:
        message = f"token {token} is lower than the fencing token stored in {label}"
        CoordinationError.__init__(self, "stale_token", message, {"lock": label, "token": token})
        self.args = (label, token)


class FencedQuerySet(models.QuerySet[_M]):
    """A queryset with ``fenced_update`` (module doc); ``FencedQuerySet.as_manager()``."""

    def fenced_update(self, token: int, *, fence_field: str | None = None, **fields: Any) -> bool:
        """Update the rows with ``fields`` and ``token``, only where the stored token is not
        higher, in one statement: True if written, False if no row matches the filter,
        ``FenceRejected`` if rows match but a higher token is stored."""
        if not isinstance(token, int) or isinstance(token, bool) or token < 1:
            raise ValueError(f"a fencing token is a positive integer, got {token!r}")
        name = fence_field or _fence_field(self.model)
        if name in fields:
            raise ValueError(f"{name} is set by fenced_update itself")
        written = self.filter(**{f"{name}__lte": token}).update(**fields, **{name: token})
        if written:
            return True
        if self.exists():  # after the fact, only to tell the caller why nothing was written
            raise FenceRejected(self.model._meta.label, token)
        return False


def _fence_field(model: type[models.Model]) -> str:
    names = [f.name for f in model._meta.get_fields() if isinstance(f, FencingTokenField)]
    if len(names) != 1:
        raise ValueError(
            f"{model._meta.label} has {len(names)} FencingTokenField fields; name one with "
            "fence_field="
        )
    return names[0]
