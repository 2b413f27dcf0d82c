"""``raft://`` result backend: Celery task results in the cluster's ``results`` primitive.

    CELERY_RESULT_BACKEND = "raft://"                                   # COORDINATION cluster
    result_backend = "raft://10.0.0.1:7001;raft://10.0.0.2:7001"        # or these members
    result_backend_transport_options = {"secret": "..."}                # else the settings'

What differs from the Redis backend, and why:

- **Waiting is done by the leader.** ``AsyncResult.get()`` is one ``result.wait`` entry that the
  leader answers when the result is stored (the storing entry completes it), or empty when the
  wait runs out; no client sleeps and polls, and there is no pub/sub connection to keep.
  Timeouts longer than ``wait_chunk`` (default 80% of the client's request timeout, so that a
  wait ends before the node's own request timeout would make the client re-send it after a
  back-off) are waited in several such entries; ``timeout=`` raises Celery's
  ``TimeoutError``. ``GroupResult.get()``/``join_native`` read every result once, then wait
  on the missing ones together (one wait answers with whatever became final). A chained
  result also waits on its unfinished parents, so a parent's failure surfaces at once.
- **Writes are atomic on the cluster.** A SUCCESS is stored with ``keep``: no later write
  replaces it (Celery's rule against a lost duplicate overwriting a success), decided in the
  log instead of by a read before the write. Chord parts are counted by ``result.incr`` once
  per ``task_id:group_index``, so a redelivered header task never counts twice; the part whose
  increment completes the chord joins the header and sends the callback, then marks the
  counter done. Exactly one part completes a chord; the callback is sent again only if the
  worker that completed it dies before sending it and its task is redelivered (at least once,
  never zero times, in that window).
- **Limits.** One result is at most ``RESULT_VALUE_MAX_BYTES`` (512 KiB) encoded; a larger one
  raises ``ResultTooLarge`` (a ``LimitExceeded``, naming the task and the limit) before anything
  is sent, which the worker records as the task's FAILURE. The store as a whole is bounded too
  (records, bytes): a full store refuses writes with ``LimitExceeded`` rather than evicting.
- **Expiry** is by log time (``result_expires``, ``result_failure_expires``; None or 0 = never),
  removed by the cluster itself: no ``celery.backend_cleanup`` needed.
- Keys are Celery's (``celery-task-meta-<id>``...), replaced by a digest when a task id has
  characters or a length the cluster's names do not allow.

Fork safety: each process (a prefork child included) gets its own client, keyed by pid, shared
by the threads and backend instances of that process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.canvas import maybe_signature
from celery.exceptions import ChordError, ImproperlyConfigured
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, GroupResult, allow_join_result
from kombu.utils.encoding import bytes_to_str, ensure_bytes

from coordination.celery import connect
from coordination.client.results import MAX_VALUE_BYTES, Results
from coordination.exceptions import ResultTooLarge
from coordination.primitives import limits
from raft_node.client import ClusterUnavailable, Timeout

log = logging.getLogger("coordination.celery.backend")

FIRED = "#fired"  # the member that marks a chord's callback as sent
FIRED_TTL = 86_400.0  # how long a done chord is remembered when chords never expire
_READY = states.READY_STATES
TRACEBACK_TAIL = 16 * 1024  # characters of a traceback kept when a failure must be slimmed

_clients: dict[tuple[Any, ...], Results] = {}
_clients_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_reset_after_fork)


def results_client(hosts: list[str], options: dict[str, Any]) -> Results:
    """This process's client for the cluster named by ``hosts`` (or the settings') and
    ``options``: created on first use, again after a fork (sockets are never shared)."""
    key = (
        os.getpid(),
        tuple(hosts),
        tuple(options.get("addresses") or ()),
        options.get("secret"),
        options.get("timeout"),
        _settings_cluster(hosts, options),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            kwargs: dict[str, Any] = {"name": f"results-{os.getpid()}"}
            if options.get("timeout") is not None:
                kwargs["timeout"] = float(options["timeout"])
            client = _clients[key] = Results(connect.coordinator_for(hosts, options, **kwargs))
        return client


def _settings_cluster(hosts: list[str], options: dict[str, Any]) -> Any:
    """What the settings contribute (cluster, secret) when the URL and options do not name
    both: part of the client's identity, so a settings change gets a new client."""
    if (hosts or options.get("addresses")) and options.get("secret") is not None:
        return None
    from coordination.node import node_settings

    conf = node_settings.coordination()
    return (conf.get("CLUSTER"), conf.get("CLUSTER_SECRET"))


def cluster_key(key: str) -> str:
    """Celery's key when the cluster accepts it as a name; else a readable digest."""
    if len(key.encode()) <= limits.NAME_MAX_BYTES and limits.NAME_PATTERN.fullmatch(key):
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_.:-]', '_', key)[:40]}#{digest}"


def _seconds(value: float | None) -> float | None:
    """A Celery expiry (seconds; None or 0 = never) as a TTL for the cluster."""
    return float(value) if value else None


class RaftBackend(KeyValueStoreBackend):
    supports_autoexpire = True  # the cluster removes expired results by log time
    supports_native_join = True  # get_many waits on the cluster
    supports_result_compression = True  # values are bytes, stored unchanged
    supports_failure_expires = True
    implements_incr = True
    key_t = str

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app=app, url=url, **kwargs)
        conf = self.app.conf
        self._options = dict(conf.get("result_backend_transport_options") or {})
        self._hosts = connect.hosts_from_urls([url])
        failure = conf.get("result_failure_expires")
        self.failure_expires = self.expires if failure is None else self.prepare_expires(failure)
        chunk = self._options.get("wait_chunk")
        if chunk is not None and not 0 < float(chunk) <= limits.WAIT_MS[1] / 1000:
            raise ImproperlyConfigured(f"wait_chunk must be in (0, {limits.WAIT_MS[1] / 1000}]")
        self._wait_chunk = None if chunk is None else float(chunk)
        self._client: tuple[int, Results] | None = None  # (pid, this process's client)

    def as_uri(self, include_password: bool = False) -> str:
        """The URL as given (``raft://a;raft://b`` or ``raft://a,b``: kombu's parser takes one
        host), with any password masked unless ``include_password``."""
        url = self.url or "raft://"
        if include_password:
            return url
        return re.sub(r"://([^:@/;,]*):[^@/;,]*@", r"://\1:**@", url)

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        return super().__reduce__(args, {**(kwargs or {}), "url": self.url})

    @property
    def results(self) -> Results:
        """This process's client (a forked child makes its own on first use)."""
        pid, client = self._client or (None, None)
        if pid != os.getpid() or client is None:
            client = results_client(self._hosts, self._options)
            self._client = (os.getpid(), client)
        return client

    @property
    def wait_chunk(self) -> float:
        if self._wait_chunk is not None:
            return self._wait_chunk
        return max(0.5, 0.8 * self.results.coord.timeout)

    @property
    def chord_ttl(self) -> float | None:
        """How long a chord's counter lives: ``result_chord_expires``, else ``result_expires``
        (computed here: Celery's own property of this exists only from 5.6)."""
        raw = self.app.conf.get("result_chord_expires")
        return self.expires if raw is None else self.prepare_expires(raw, type=int)

    @property
    def chord_results_ttl(self) -> float:
        """How long header results and the saved header outlive ``result_expires`` until the
        chord joins (0: no expiry involved), never less than ``result_expires``."""
        chord, results = self.chord_ttl, self.expires
        return 0 if not chord or not results else max(chord, results)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """With ``result_backend_always_retry``: a call with no answer (Timeout: writes are
        exactly-once, so the retry is safe) or no reachable node."""
        return isinstance(exc, (Timeout, ClusterUnavailable))

    # -- the key/value interface of KeyValueStoreBackend ------------------------------------

    def get(self, key: str) -> bytes | None:
        record = self.results.get(cluster_key(key))
        return None if record is None else _as_bytes(record.value)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        names = [cluster_key(k) for k in keys]
        found = self.results.get_many(names)
        return [_as_bytes(found[n].value) if n in found else None for n in names]

    def set(self, key: str, value: Any, expires: float | None = None) -> None:
        ttl = _seconds(self.expires if expires is None else expires)
        self.results.set(cluster_key(key), ensure_bytes(value), ttl=ttl)

    def delete(self, key: str) -> None:
        self.results.delete(cluster_key(key))

    def incr(self, key: str) -> int:
        return self.results.incr(cluster_key(key), ttl=_seconds(self.chord_ttl)).value

    def expire(self, key: str, value: float | None) -> None:
        self.results.expire(cluster_key(key), _seconds(value))

    # -- storing ------------------------------------------------------------------------------

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        task_id = bytes_to_str(task_id)
        meta["task_id"] = task_id
        value = ensure_bytes(self.encode(meta))
        if len(value) > MAX_VALUE_BYTES and state in states.EXCEPTION_STATES:
            value = self._slim_failure(meta, task_id, len(value))
        if len(value) > MAX_VALUE_BYTES:
            raise ResultTooLarge(task_id, len(value), MAX_VALUE_BYTES)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.results.set(
            cluster_key(self.get_key_for_task(task_id)),
            value,
            ttl=_seconds(expires),
            final=state in _READY,
            keep=state == states.SUCCESS,  # nothing replaces a success (atomic on the cluster)
        )
        return result

    def _slim_failure(self, meta: dict[str, Any], task_id: str, size: int) -> bytes:
        """A failure is always recorded: without the extended args/kwargs, with the tail of the
        traceback, and if the exception itself is too large, as a ``ResultTooLarge``."""
        slim = {**meta, **{k: None for k in ("args", "kwargs") if k in meta}}
        trace = slim.get("traceback")
        if isinstance(trace, str) and len(trace) > TRACEBACK_TAIL:
            slim["traceback"] = f"[truncated to fit the result store]\n{trace[-TRACEBACK_TAIL:]}"
        value = ensure_bytes(self.encode(slim))
        if len(value) <= MAX_VALUE_BYTES:
            return value
        slim["result"] = self.prepare_exception(ResultTooLarge(task_id, size, MAX_VALUE_BYTES))
        return ensure_bytes(self.encode(slim))

    def _save_group(self, group_id: str, result: Any, expires: float | None = None) -> Any:
        value = ensure_bytes(self.encode({"result": result.as_tuple()}))
        if len(value) > MAX_VALUE_BYTES:
            raise ResultTooLarge(group_id, len(value), MAX_VALUE_BYTES, "group")
        ttl = _seconds(self.expires if expires is None else expires)
        self.results.set(cluster_key(self.get_key_for_group(group_id)), value, ttl=ttl, final=True)
        return result

    # -- waiting on the cluster -------------------------------------------------------------

    def _finals(
        self, waiting: dict[str, Any], timeout: float | None, on_interval: Any = None
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Yield ``(waiting[name], meta)`` as the results at those cluster keys become final,
        until all have; each round is one leader-served wait on up to 1,000 of them. Raises
        Celery's ``TimeoutError`` once ``timeout`` seconds pass without all of them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = dict(waiting)
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            chunk = self.wait_chunk if left is None else min(self.wait_chunk, left)
            try:
                found = self.results.wait(list(waiting)[: limits.BATCH_MAX], chunk)
            except Timeout:
                found = {}  # no answer in time (e.g. an election): ask again, same deadline
            for name, record in found.items():
                yield waiting.pop(name), self.decode_result(record.value)
            if found:
                continue
            if on_interval is not None:
                on_interval()
            if deadline is not None and time.monotonic() >= deadline:
                raise CeleryTimeoutError(f"The operation timed out ({timeout}).")

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        """Wait for the task's result on the cluster (served by the leader, no polling)."""
        self._ensure_not_eager()
        cached = self._cache.get(task_id)
        if cached is not None and cached["status"] in _READY:
            return cached
        name = cluster_key(self.get_key_for_task(task_id))
        for _, meta in self._finals({name: task_id}, timeout, on_interval):
            return meta
        raise AssertionError("unreachable: _finals yields or raises")

    def wait_for_pending(
        self,
        result: Any,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        callback: Any = None,
        propagate: bool = True,
    ) -> Any:
        """``AsyncResult.get()``: one wait on the task and on its parents whose outcome is not
        known yet, so a failed parent is reported as soon as it is stored."""
        self._ensure_not_eager()
        if on_message is not None:
            raise ImproperlyConfigured("Backend does not support on_message callback")
        waiting: dict[str, Any] = {cluster_key(self.get_key_for_task(result.id)): result}
        for parent in result._parents():  # a chord's parent is its header (a GroupResult)
            if isinstance(parent, AsyncResult) and parent._cache is None:
                waiting[cluster_key(self.get_key_for_task(parent.id))] = parent
        for node, meta in self._finals(waiting, timeout, on_interval):
            node._maybe_set_cache(meta)
            if node is result:
                return result.maybe_throw(propagate=propagate, callback=callback)
            if on_interval is not None:
                on_interval()  # re-raises the parent's failure when following parents
        raise AssertionError("unreachable: the task's own key is always waited on")

    def get_many(
        self,
        task_ids: Any,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        max_iterations: int | None = None,
        READY_STATES: frozenset[str] = _READY,  # Celery's signature
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(task_id, meta)`` of every task as it is ready: the cached ones, then one read of
        all the others, then leader-served waits on the missing ones (``max_iterations``: the
        read only)."""
        ids = set(task_ids)
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield bytes_to_str(task_id), cached
        waiting = {cluster_key(self.get_key_for_task(t)): t for t in ids}
        found = self.results.get_many(waiting) if waiting else {}
        for name, record in found.items():
            meta = self.decode_result(record.value)
            if meta["status"] in READY_STATES:
                yield self._got(waiting.pop(name), meta, on_message)
        if max_iterations:
            return
        for task_id, meta in self._finals(waiting, timeout, on_interval):
            yield self._got(task_id, meta, on_message)

    def _got(self, task_id: Any, meta: dict[str, Any], on_message: Any) -> tuple[str, Any]:
        self._cache[task_id] = meta
        if on_message is not None:
            on_message(meta)
        return bytes_to_str(task_id), meta

    # -- chords ---------------------------------------------------------------------------------

    def _apply_chord_incr(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """``apply_chord``: save the header's GroupResult (what the completing part joins), for
        as long as its results are kept, in one entry (a save and an expire in Celery's)."""
        self.ensure_chords_allowed()
        header = self.app.GroupResult(*header_result_args)
        self._save_group(header.id, header, expires=self.chord_results_ttl)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """``Task.add_to_chord``: one more part to wait for (counted apart from the parts)."""
        self.results.incr(self._extra_key(group_id), ttl=_seconds(self.chord_ttl))

    def _extra_key(self, group_id: str) -> str:
        return cluster_key(self.get_key_for_chord(group_id, ".t"))

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        """Count this part once (``task_id:group_index``); the part whose increment completes
        the chord joins the header and sends the callback, then marks the counter done."""
        gid, tid = request.group, request.id
        if not gid or not tid:
            return
        app = self.app
        member = f"{tid}:{request.group_index}"
        key = cluster_key(self.get_key_for_chord(gid))
        count = self.results.incr(key, ttl=_seconds(self.chord_ttl), member=member)
        if count.last == FIRED or (not count.counted and count.last != member):
            return  # done already, or a repeat of a part that did not complete the chord
        callback = maybe_signature(request.chord, app=app)
        deps = GroupResult.restore(gid, backend=self)
        if deps is None:
            self._chord_error(callback, f"GroupResult {gid} no longer exists")
            return
        size = (request.chord or {}).get("chord_size") or len(deps)
        if count.value >= size:
            extra = self.results.get(self._extra_key(gid))  # Task.add_to_chord
            size += extra.value if extra is not None else 0
        if count.value < size:
            self._keep_header_results(gid, tid)
            return
        if count.value > size:
            log.warning("Chord counter incremented too many times for %r", gid)
            return
        try:
            with allow_join_result():
                timeout = app.conf.result_chord_join_timeout
                joined = deps.join_native(timeout=timeout, propagate=True)
        except Exception as exc:
            culprit = next(deps._failed_join_report(), None)
            reason = repr(exc) if culprit is None else f"Dependency {culprit.id} raised {exc!r}"
            log.exception("Chord %r raised: %r", gid, reason)
            self._chord_error(callback, reason, exc)
        else:
            try:
                _publish(app, callback, joined)
            except Exception as exc:
                log.exception("Chord %r raised: %r", gid, exc)
                self._chord_error(callback, f"Callback error: {exc!r}", exc)
        finally:
            ttl = _seconds(self.chord_ttl) or FIRED_TTL
            self.results.incr(key, ttl=ttl, member=FIRED)  # later repeats see it done
            deps.delete()
            if self._header_results_kept():
                for dep in deps.results:
                    self.expire(self.get_key_for_task(dep.id), self.expires)

    def _chord_error(self, callback: Any, message: str, cause: BaseException | None = None) -> None:
        """Fail the chord's callback (Celery takes the error from the current stack)."""
        try:
            raise ChordError(message) from cause
        except ChordError as exc:
            self.chord_error_from_stack(callback, exc)

    def _header_results_kept(self) -> bool:
        """Whether header results must outlive ``result_expires`` until the chord joins."""
        return bool(self.chord_results_ttl) and self.chord_results_ttl > (self.expires or 0)

    def _keep_header_results(self, gid: str, tid: str) -> None:
        if self._header_results_kept():
            self.expire(self.get_key_for_task(tid), self.chord_results_ttl)
            self.expire(self.get_key_for_group(gid), self.chord_results_ttl)


def _publish(app: Any, callback: Any, joined: Any) -> None:
    """Send the chord's callback, retried on connection errors where Celery offers it (5.6+)."""
    retry_publish = getattr(app.amqp, "_retry_publish", None)
    if retry_publish is not None:
        retry_publish(callback.delay, joined)
    else:
        callback.delay(joined)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


__all__ = ["RaftBackend", "ResultTooLarge", "cluster_key", "results_client"]
