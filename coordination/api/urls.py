"""Routes of ``/api/``. Names accept the primitives' key charset (see the README's limits)."""

from __future__ import annotations

from django.urls import path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from coordination.api import views as v


class _Name:
    regex = r"[A-Za-z0-9_.:@+=#{}\[\]-]+"  # as limits.NAME_PATTERN, without "/"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(_Name, "name")

urlpatterns = [
    path("cluster/", v.ClusterView.as_view()),
    path("cluster/transfer/", v.TransferView.as_view()),
    path("sessions/", v.SessionsView.as_view()),
    path("sessions/<int:session>/", v.SessionView.as_view()),
    path("sessions/<int:session>/keepalive/", v.KeepaliveView.as_view()),
    path("locks/<name:name>/", v.LockView.as_view()),
    path("locks/<name:name>/acquire/", v.LockAcquireView.as_view()),
    path("locks/<name:name>/release/", v.LockReleaseView.as_view()),
    path("locks/<name:name>/renew/", v.LockRenewView.as_view()),
    path("locks/<name:name>/check/", v.LockCheckView.as_view()),
    path("queues/<name:name>/", v.QueueView.as_view()),
    path("queues/<name:name>/messages/", v.QueueMessagesView.as_view()),
    path("queues/<name:name>/get/", v.QueueGetView.as_view()),
    path("queues/<name:name>/messages/<int:msg_id>/ack/", v.QueueAckView.as_view()),
    path("queues/<name:name>/messages/<int:msg_id>/nack/", v.QueueNackView.as_view()),
    path("queues/<name:name>/dead-letters/", v.QueueDeadLettersView.as_view()),
    path("queues/<name:name>/purge/", v.QueuePurgeView.as_view()),
    path("queues/<name:name>/requeue-dead/", v.QueueRequeueDeadView.as_view()),
    path("cache/<name:key>/", v.CacheView.as_view()),
    path("cache/<name:key>/incr/", v.CacheIncrView.as_view()),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema")),
]
