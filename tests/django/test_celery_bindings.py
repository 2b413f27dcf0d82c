"""Binding lock names: any exchange, queue or routing key maps into the lock charset and back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordination.celery.bindings import PREFIX, escape, lock_name, unescape
from coordination.primitives.limits import NAME_PATTERN


@given(st.text(max_size=40))
def test_escape_round_trips_into_the_lock_charset_without_separators(part: str) -> None:
    escaped = escape(part)
    assert unescape(escaped) == part
    assert "/" not in escaped
    if escaped:
        assert NAME_PATTERN.fullmatch(escaped)


def test_lock_name_keeps_fields_apart() -> None:
    name = lock_name("celery.pidbox", "celery@host/1.celery.pidbox", "")
    assert name.startswith(PREFIX + "celery.pidbox/")
    queue, _, key = name[len(PREFIX + "celery.pidbox/") :].partition("/")
    assert unescape(queue) == "celery@host/1.celery.pidbox" and unescape(key) == ""
    assert NAME_PATTERN.fullmatch(name)
