"""Views of the admin's live cluster pages (routed and guarded in ``coordination.admin``).

Thin on purpose: read through ``coordination.inspection`` (which asks the cluster through the
process's ``Coordinator``), render, and for the operator actions check the permission, call the
client (which proposes through Raft) and report the outcome with a message. When the cluster
cannot answer, a page says so with status 503 instead of failing with a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse

from coordination import inspection, recipe_inspection, semaphore_inspection
from coordination.celery.once_fallback import LOCK_PREFIX as ONCE_LOCK_PREFIX
from coordination.client import operations as ops
from coordination.client.coordinator import Coordinator
from coordination.exceptions import NotHolder, RaftError, Rejected, Timeout, UnknownQueue
from coordination.models import Coordination
from coordination.node.membership import Membership
from coordination.primitives.queues_state import DLQ_SUFFIX
from coordination.shared_coordinator import coordinator

log = logging.getLogger(__name__)

OPERATE = "coordination.operate_cluster"
PAGES = [  # (url name, tab label), in tab order
    ("coordination_coordination_changelist", "Nodes"),
    ("coordination_sessions", "Sessions"),
    ("coordination_locks", "Locks"),
    ("coordination_queues", "Queues"),
    ("coordination_cache", "Cache"),
    ("coordination_ratelimits", "Rate limits"),
    ("coordination_once", "Once keys"),
    ("coordination_elections", "Elections"),
]


class Unavailable(Exception):
    """The cluster could not be asked: unreachable, no quorum, or not configured."""


def _ask(read: Callable[[], Any]) -> Any:
    """``read()``, with every way of not getting an answer made ``Unavailable`` (ValueError is
    how the settings adapter reports a missing cluster secret or a bad CLUSTER). Rejections
    (``Rejected`` and its typed subclasses, e.g. ``UnknownQueue``) pass through: they are
    answers."""
    try:
        return read()
    except Rejected:
        raise
    except (RaftError, OSError, ValueError) as exc:
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc


def _render(
    model_admin: Any,
    request: HttpRequest,
    template: str,
    title: str,
    read: Callable[[], dict[str, Any]],
    *,
    tab: str | None = None,
    **context: Any,
) -> TemplateResponse:
    status, error, data = 200, None, {}
    try:
        data = _ask(read)
    except Unavailable as exc:
        status, error = 503, str(exc)
    return TemplateResponse(
        request,
        f"admin/coordination/{template}",
        {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.model._meta,
            "title": title,
            "pages": PAGES,
            "tab": tab or title,
            "cluster_error": error,
            "can_operate": request.user.has_perm(OPERATE),
            **data,
            **context,
        },
        status=status,
    )


def nodes(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Every node's own status; one that does not answer is shown with its error. Below it, the
    membership in force (voters, learners and how far behind each is), with the operator's
    actions: add a learner, promote one, remove a member (POST: ``_change_membership``)."""
    if request.method == "POST":
        return _change_membership(request)
    return _render(
        model_admin,
        request,
        "nodes.html",
        "Nodes",
        lambda: {**inspection.cluster(), "membership": inspection.membership(coordinator())},
    )


def _change_membership(request: HttpRequest) -> HttpResponse:
    """One single-server change (``coordination.node.membership``), recorded in the admin's
    history. An add only makes a learner: promote it once the page shows it caught up."""
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied(
            "membership changes need the coordination.operate_cluster permission"
        )
    action, node = request.POST.get("action", ""), request.POST.get("node", "").strip()
    address = request.POST.get("address", "").strip()
    changes: dict[str, Callable[[Membership], Any]] = {
        "add": lambda members: members.add(node, address, wait=False),
        "promote": lambda members: members.promote(node),
        "remove": lambda members: members.remove(node),
    }
    change = changes.get(action)
    if change is None or not node:
        messages.error(request, "Unknown membership action, or no node given.")
        return redirect("admin:coordination_coordination_changelist")
    try:
        _ask(lambda: change(inspection.membership_client(coordinator())))
    except Unavailable as exc:
        _unavailable(request, exc)
    except Rejected as exc:  # member_exists, last_voter, change_pending, member_unreachable...
        messages.error(request, f"Refused: {exc}")
    else:
        done = {
            "add": f"Added {node} ({address}) as a learner.",
            "promote": f"Promoted {node}.",
            "remove": f"Removed {node}.",
        }[action]
        log.info("admin membership %s %s by %s", action, node, request.user)
        _history(request, f"member:{node}", done)
        messages.success(request, done)
    return redirect("admin:coordination_coordination_changelist")


def sessions(model_admin: Any, request: HttpRequest) -> HttpResponse:
    return _render(
        model_admin,
        request,
        "sessions.html",
        "Sessions",
        lambda: inspection.sessions(coordinator()),
    )


def locks(model_admin: Any, request: HttpRequest) -> HttpResponse:
    prefix = request.GET.get("prefix", "")
    return _render(
        model_admin,
        request,
        "locks.html",
        "Locks",
        lambda: {
            **inspection.locks(coordinator(), prefix),
            **semaphore_inspection.semaphores(coordinator(), prefix),
        },
        prefix=prefix,
    )


def queues(model_admin: Any, request: HttpRequest) -> HttpResponse:
    return _render(
        model_admin,
        request,
        "queues.html",
        "Queues",
        lambda: {"queues": inspection.queues(coordinator())},
    )


# action -> (what it does to which queue, message on success)
ACTIONS: dict[str, tuple[Callable[[Coordinator, str], int], str]] = {
    "requeue_dead": (
        lambda coord, name: coord.queue(name).requeue_dead(),
        "Re-queued {n} dead letter(s) into {name}.",
    ),
    "purge_dead": (
        lambda coord, name: coord.queue(name + DLQ_SUFFIX).purge(),
        "Purged {n} dead letter(s) of {name}.",
    ),
    "purge": (
        lambda coord, name: coord.queue(name).purge(),
        "Purged {n} ready or delayed message(s) from {name}; messages in flight stay leased.",
    ),
}


def queue(model_admin: Any, request: HttpRequest, name: str) -> HttpResponse:
    """One queue; POST runs an operator action on it (``ACTIONS``), then shows it again."""
    if request.method == "POST":
        return _act(request, name)
    try:
        response = _render(
            model_admin,
            request,
            "queue.html",
            f"Queue {name}",
            lambda: inspection.queue(coordinator(), name),
            tab="Queues",
            name=name,
        )
    except UnknownQueue as exc:
        raise Http404(f"no queue {name!r}") from exc
    return response


def _act(request: HttpRequest, name: str) -> HttpResponse:
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied("requeue and purge need the coordination.operate_cluster permission")
    action = ACTIONS.get(request.POST.get("action", ""))
    if action is None:
        messages.error(request, "Unknown action.")
        return redirect("admin:coordination_queue", name=name)
    run, done = action
    try:
        count = _ask(lambda: run(coordinator(), name))
    except Unavailable as exc:
        _unavailable(request, exc)
    except Rejected as exc:  # e.g. unknown_queue
        messages.error(request, f"Refused by the cluster: {exc}")
    else:
        log.info(
            "admin %s on queue %r by %s: %d", request.POST["action"], name, request.user, count
        )
        _history(request, f"queue:{name}", done.format(n=count, name=name))
        messages.success(request, done.format(n=count, name=name))
    return redirect("admin:coordination_queue", name=name)


def _unavailable(request: HttpRequest, exc: Unavailable) -> None:
    if isinstance(exc.__cause__, Timeout):  # the proposal may still commit: say we do not know
        messages.error(request, f"No answer in time; the action may or may not have run: {exc}")
    else:
        messages.error(request, f"Not done, the cluster is unavailable: {exc}")


def cache(model_admin: Any, request: HttpRequest) -> HttpResponse:
    prefix = request.GET.get("prefix", "")
    return _render(
        model_admin,
        request,
        "cache.html",
        "Cache",
        lambda: inspection.cache(coordinator(), prefix),
        prefix=prefix,
    )


def ratelimits(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Rate-limit buckets still refilling (key, rate, burst, tokens now); full ones are
    dropped by the cluster, so a key not listed has its whole burst available."""
    prefix = request.GET.get("prefix", "")
    return _render(
        model_admin,
        request,
        "ratelimits.html",
        "Rate limits",
        lambda: inspection.ratelimits(coordinator(), prefix),
        prefix=prefix,
    )


def once_keys(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """``@once`` keys held right now: held keys of queue messages (``raft://``) and the
    fallback locks of other brokers. POST releases a fallback lock (``_release_once``); a
    held key has no release here, since it is freed only by removing its message."""
    if request.method == "POST":
        return _release_once(request)
    prefix = request.GET.get("prefix", "")
    return _render(
        model_admin,
        request,
        "once.html",
        "Once keys",
        lambda: recipe_inspection.once_keys(coordinator(), prefix),
        prefix=prefix,
    )


def _release_once(request: HttpRequest) -> HttpResponse:
    """Release one fallback lock ``once:<key>`` for its producer, exactly as the worker does
    when the task ends (``once_fallback.release``: the hold of that session and task id, no
    other). For a key stuck because its worker was killed: the next ``delay()`` is accepted,
    so a task still queued on the broker may then run twice. Recorded in the admin's history."""
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied("releasing needs the coordination.operate_cluster permission")
    lock, owner = request.POST.get("lock", ""), request.POST.get("owner", "")
    try:
        session = int(request.POST.get("session", ""))
    except ValueError:
        session = 0
    if not lock.startswith(ONCE_LOCK_PREFIX) or session <= 0:
        messages.error(request, "Only a held once: lock can be released here.")
        return redirect("admin:coordination_once")
    try:
        _ask(lambda: coordinator().run(ops.lock_release(session, lock, owner)))
    except Unavailable as exc:
        _unavailable(request, exc)
    except NotHolder:
        messages.warning(request, f"{lock} was no longer held by task {owner}: nothing to release.")
    except Rejected as exc:  # e.g. the producer's session ended meanwhile
        messages.error(request, f"Refused by the cluster: {exc}")
    else:
        key = lock[len(ONCE_LOCK_PREFIX) :]
        log.info("admin released once lock %r (task %s) by %s", lock, owner, request.user)
        _history(request, lock, f"Released once key {key} of task {owner} (session {session}).")
        messages.success(request, f"Released once key {key} (task {owner}).")
    return redirect("admin:coordination_once")


def _history(request: HttpRequest, object_id: str, message: str) -> None:
    """An entry in the admin's history ("Recent actions", ``LogEntry``) for an operator action
    on the cluster: there is no row to attach it to, so it names the cluster model and the
    object acted on (there is no change page to link, so Django shows it unlinked)."""
    LogEntry.objects.create(
        user_id=request.user.pk,
        content_type=ContentType.objects.get_for_model(Coordination),
        object_id=object_id,
        object_repr=object_id[:200],
        action_flag=CHANGE,
        change_message=message,
    )


def elections(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """Each election's leader (value, fencing token, session) and its candidates in order, the
    ``celery beat`` elections first and marked."""
    prefix = request.GET.get("prefix", "")
    return _render(
        model_admin,
        request,
        "elections.html",
        "Elections",
        lambda: recipe_inspection.elections(coordinator(), prefix),
        prefix=prefix,
    )
