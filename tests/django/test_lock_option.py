"""The ``distributed_lock`` task option never fails open, and lock key templates are checked when
they are written. No cluster is needed: a coordinator aimed at a closed port stands for a cluster
that cannot be reached."""

from __future__ import annotations

import socket

import pytest
from celery import Celery, Task

from coordination.celery.decorators import current_lock, distributed_lock
from coordination.celery.lock_option import LockedTask
from coordination.client import Coordinator
from coordination.exceptions import ClusterUnavailable, LockKeyError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable():
    coord = Coordinator(f"127.0.0.1:{_closed_port()}", b"x" * 32, timeout=0.5)
    yield coord
    coord.close()


def test_an_app_without_task_cls_runs_no_locked_task_without_its_lock(unreachable):
    """The bug: ``current_lock()`` was None and the body ran. Now the body never runs: taking the
    lock fails with ``ClusterUnavailable``."""
    app = Celery("no-task-cls", broker="memory://", backend="cache+memory://")
    ran = []

    @app.task(shared=False, distributed_lock={"key": "k:{n}", "coordinator": unreachable})
    def job(n):
        ran.append(current_lock())
        return n

    result = job.apply(args=(1,), throw=False)
    assert result.state == "FAILURE"
    assert isinstance(result.result, ClusterUnavailable)
    assert ran == []
    with pytest.raises(ClusterUnavailable):
        job(2)  # a direct call too


def test_any_base_registered_at_any_time_takes_the_lock(unreachable):
    app = Celery("late", broker="memory://", backend="cache+memory://")
    app.finalize()

    class Plain(Task):
        pass

    @app.task(shared=False, base=Plain, distributed_lock={"key": "k", "coordinator": unreachable})
    def job():
        return "ran"

    assert job.apply(throw=False).state == "FAILURE"


def test_a_bad_key_template_fails_when_the_decorator_is_applied():
    with pytest.raises(LockKeyError, match=r"'report:\{missing\}' names \{missing\}.*customer_id"):

        @distributed_lock(key="report:{missing}")
        def report(customer_id):
            pass

    with pytest.raises(LockKeyError, match="positional field"):
        distributed_lock(key="report:{0}")(lambda customer_id: None)
    with pytest.raises(LockKeyError, match="malformed"):
        distributed_lock(key="report:{customer_id")(lambda customer_id: None)
    # attribute and index fields name their root argument
    distributed_lock(key="order:{order.id}:{items[0]}")(lambda order, items: None)


def test_a_bad_key_template_in_a_task_option_fails_at_registration():
    """(``shared=False``: a shared task is registered again with every app finalized later in
    the process, and would raise there too, which is right for a project but not for a test.)"""
    app = Celery("bad-option", broker="memory://")
    app.finalize()
    with pytest.raises(LockKeyError, match=r"names \{missing\}"):

        @app.task(shared=False, distributed_lock={"key": "r:{missing}"})
        def report(customer_id):
            pass

    with pytest.raises(LockKeyError, match=r"names \{missing\}"):

        @app.task(shared=False, bind=True, base=LockedTask, distributed_lock={"key": "r:{missing}"})
        def bound_report(self, customer_id):
            pass


def test_kwargs_fields_are_checked_per_call(unreachable):
    @distributed_lock(key="k:{tenant}", coordinator=unreachable)
    def handler(**fields):
        return fields

    with pytest.raises(LockKeyError, match="no value for 'tenant'"):
        handler(other=1)
    with pytest.raises(ClusterUnavailable):  # the key was made; taking the lock failed
        handler(tenant="acme")
