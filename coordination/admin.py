"""The admin's live cluster pages: nodes, sessions, locks, queues, the cache, rate limits,
``@once`` keys and elections.

There are no tables to register. The pages hang off the unmanaged ``Coordination`` model (shown
as "Cluster") so they appear in the admin's app list and sit behind its login: ``admin_view``
lets in active staff only and sends everyone else to the login page. Any staff user may look;
the operator actions (requeue and purge dead letters, purge a queue, release a stuck fallback
``@once`` lock) change the cluster through Raft and need ``coordination.operate_cluster``. The
views are in ``admin_views``.
"""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import URLPattern, path

from coordination import admin_views as views
from coordination.models import Coordination


def _staff(request: HttpRequest) -> bool:
    return request.user.is_active and request.user.is_staff


@admin.register(Coordination)
class CoordinationAdmin(admin.ModelAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return _staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _staff(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        """Only the live pages: the model's own add/change/delete views would query a table
        that does not exist. The changelist (the app list's link) is the nodes page."""

        def page(view: Any) -> Any:
            bound = update_wrapper(partial(view, self), view)
            return self.admin_site.admin_view(bound)

        return [
            path("", page(views.nodes), name="coordination_coordination_changelist"),
            path("sessions/", page(views.sessions), name="coordination_sessions"),
            path("locks/", page(views.locks), name="coordination_locks"),
            path("queues/", page(views.queues), name="coordination_queues"),
            # Queue names may contain "/": the name is the rest of the path.
            path("queues/<path:name>/", page(views.queue), name="coordination_queue"),
            path("cache/", page(views.cache), name="coordination_cache"),
            path("ratelimits/", page(views.ratelimits), name="coordination_ratelimits"),
            path("once/", page(views.once_keys), name="coordination_once"),
            path("elections/", page(views.elections), name="coordination_elections"),
        ]
