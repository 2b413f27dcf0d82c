"""Routes of the API, mounted by the project: ``path("api/", include("coordination.api.urls"))``.
Names accept the primitives' key charset (see the README's limits)."""

from __future__ import annotations

from django.urls import path, register_converter

from coordination.api import election_views as ev
from coordination.api import member_views as mv
from coordination.api import ratelimit_views as rl
from coordination.api import schema
from coordination.api import semaphore_views as sv
from coordination.api import views as v
from coordination.api import watch_views as wv

app_name = "raftsync-api"


class _Name:
    regex = r"[A-Za-z0-9_.:@+=#{}\[\]-]+"  # as limits.NAME_PATTERN, without "/"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(_Name, "name")

urlpatterns = [
    path("", v.ApiRootView.as_view(), name="root"),
    path("cluster/", v.ClusterView.as_view(), name="cluster"),
    path("cluster/transfer/", v.TransferView.as_view()),
    path("cluster/members/", mv.MembersView.as_view(), name="members"),
    path("cluster/members/replace/", mv.MemberReplaceView.as_view()),
    path("cluster/members/<name:node>/", mv.MemberView.as_view()),
    path("cluster/members/<name:node>/promote/", mv.MemberPromoteView.as_view()),
    path("sessions/", v.SessionsView.as_view(), name="sessions"),
    path("sessions/<int:session>/", v.SessionView.as_view()),
    path("sessions/<int:session>/keepalive/", v.KeepaliveView.as_view()),
    path("locks/<name:name>/", v.LockView.as_view()),
    path("locks/<name:name>/acquire/", v.LockAcquireView.as_view()),
    path("locks/<name:name>/release/", v.LockReleaseView.as_view()),
    path("locks/<name:name>/renew/", v.LockRenewView.as_view()),
    path("locks/<name:name>/check/", v.LockCheckView.as_view()),
    path("semaphores/<name:name>/", sv.SemaphoreView.as_view()),
    path("semaphores/<name:name>/acquire/", sv.SemaphoreAcquireView.as_view()),
    path("semaphores/<name:name>/release/", sv.SemaphoreReleaseView.as_view()),
    path("semaphores/<name:name>/check/", sv.SemaphoreCheckView.as_view()),
    path("elections/<name:name>/", ev.ElectionView.as_view()),
    path("elections/<name:name>/campaign/", ev.ElectionCampaignView.as_view()),
    path("elections/<name:name>/resign/", ev.ElectionResignView.as_view()),
    path("elections/<name:name>/check/", ev.ElectionCheckView.as_view()),
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
    path("ratelimits/", rl.RateLimitListView.as_view(), name="ratelimits"),
    path("watch/", wv.WatchView.as_view(), name="watch"),
    path("ratelimits/<name:key>/", rl.RateLimitView.as_view()),
    path("ratelimits/<name:key>/take/", rl.RateLimitTakeView.as_view()),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
    path("docs/", schema.SwaggerView.as_view(), name="docs"),
]
