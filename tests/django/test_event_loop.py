"""EVENT_LOOP picks the node's loop: uvloop for 'auto' when installed and TLS is off."""

from __future__ import annotations

import asyncio
import builtins

import pytest

from coordination import conf
from coordination.node.node_runner import loop_factory


def test_auto_takes_uvloop_without_tls_and_asyncio_with_tls():
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto", tls=False) is uvloop.new_event_loop
    assert loop_factory("auto", tls=True) is asyncio.new_event_loop
    assert loop_factory("asyncio", tls=False) is asyncio.new_event_loop
    assert loop_factory("uvloop", tls=True) is uvloop.new_event_loop


def test_missing_uvloop_falls_back_for_auto_and_fails_loudly_when_asked_for(monkeypatch):
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert loop_factory("auto", tls=False) is asyncio.new_event_loop
    with pytest.raises(ValueError, match=r"raftsync\[speed\]"):
        loop_factory("uvloop", tls=False)


def test_the_setting_refuses_other_loops():
    assert conf.event_loop(" UVLoop ") == "uvloop"
    with pytest.raises(conf.Invalid, match="auto, uvloop, asyncio"):
        conf.event_loop("trio")
