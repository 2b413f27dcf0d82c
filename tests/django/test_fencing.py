"""``coordination.fencing``: ``fenced_update`` writes only where the stored token is not higher,
in one UPDATE statement, on SQLite and PostgreSQL (skipped without a server), answers False for
no matching row and raises ``FenceRejected`` (a ``StaleToken``) for a lower token."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from fencing_support import (
    FencedRow,
    connect,
    create_table,
    disconnect,
    postgres_available,
    postgres_database,
    postgres_settings,
    sqlite_settings,
)

from coordination.errors import CODES
from coordination.exceptions import StaleToken
from coordination.fencing import FencedQuerySet, FenceRejected, _fence_field


@pytest.fixture(params=["sqlite", "postgresql"])
def alias(request, tmp_path, django_db_blocker) -> Iterator[str]:
    name = f"fence_{request.param}"
    with django_db_blocker.unblock(), contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            connect(name, sqlite_settings(str(tmp_path / "fence.sqlite3")))
        else:
            reason = postgres_available()
            if reason:
                pytest.skip(reason)
            connect(name, postgres_settings(stack.enter_context(postgres_database())))
        try:
            create_table(name)
            yield name
        finally:
            disconnect(name)


def test_a_fenced_update_is_one_statement_and_refuses_a_lower_token(alias: str) -> None:
    rows = FencedRow.objects.using(alias)
    row = rows.create(owner="nobody")
    assert row.fence_token == 0
    with CaptureQueriesContext(connections[alias]) as queries:
        assert rows.filter(pk=row.pk).fenced_update(10, owner="a") is True
    assert len(queries) == 1
    sql = queries[0]["sql"].lower()
    assert sql.startswith("update") and "fence_token" in sql and "<=" in sql
    assert rows.filter(pk=row.pk).fenced_update(10, owner="a-again") is True  # equal: accepted
    assert rows.filter(pk=row.pk).fenced_update(12, owner="b") is True
    with pytest.raises(FenceRejected) as info:
        rows.filter(pk=row.pk).fenced_update(11, owner="stale")
    assert isinstance(info.value, StaleToken) and info.value.code == "stale_token"
    assert info.value.details == {"lock": "fencing_tests.FencedRow", "token": 11}
    assert CODES[info.value.code].status == 409
    row.refresh_from_db(using=alias)
    assert (row.owner, row.fence_token) == ("b", 12)
    assert rows.filter(pk=row.pk + 100).fenced_update(99, owner="x") is False  # no such row


def test_bad_tokens_and_fields_are_refused_before_any_sql(alias: str) -> None:
    rows = FencedRow.objects.using(alias)
    for token in (0, -1, True, "5"):
        with pytest.raises(ValueError):
            rows.fenced_update(token, owner="x")
    with pytest.raises(ValueError):
        rows.fenced_update(5, fence_token=7)


def test_the_fence_field_is_found_by_its_type() -> None:
    assert _fence_field(FencedRow) == "fence_token"
    assert issubclass(FencedRow.objects._queryset_class, FencedQuerySet)
    field = FencedRow._meta.get_field("fence_token")
    assert field.default == 0 and not field.editable
