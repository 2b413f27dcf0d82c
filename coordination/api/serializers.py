"""Request validation against the documented limits (400 with field errors on violation)."""

from __future__ import annotations

from rest_framework import serializers

from coordination.primitives import limits


class SessionOpen(serializers.Serializer):
    ttl = serializers.FloatField(min_value=1, max_value=3600, default=10.0)
    label = serializers.CharField(max_length=limits.OWNER_MAX_BYTES, default="", allow_blank=True)


class LockAcquire(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)
    mode = serializers.ChoiceField(choices=["exclusive", "shared"], default="exclusive")
    owner = serializers.CharField(max_length=limits.OWNER_MAX_BYTES, default="", allow_blank=True)
    wait = serializers.FloatField(min_value=0, max_value=300, default=0)


class LockHolder(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)
    owner = serializers.CharField(max_length=limits.OWNER_MAX_BYTES, default="", allow_blank=True)


class QueuePut(serializers.Serializer):
    payload = serializers.CharField(max_length=limits.PAYLOAD_MAX_BYTES, allow_blank=True)
    priority = serializers.IntegerField(min_value=0, max_value=9, default=0)
    dedup_id = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)
    delay = serializers.FloatField(min_value=0, max_value=7 * 24 * 3600, default=0)
    # A held key (what @once uses): no other put with it is queued while this message is in the
    # queue; a duplicate answers the first message's id and tag.
    hold_key = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)
    tag = serializers.CharField(
        max_length=limits.OWNER_MAX_BYTES, required=False, allow_blank=True, default=""
    )


class QueueGet(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)
    wait = serializers.FloatField(min_value=0, max_value=300, default=0)
    # null: a session-held lease (no deadline; it ends by ack, nack or the session ending).
    visibility = serializers.FloatField(
        min_value=1, max_value=12 * 3600, default=30, allow_null=True
    )


class QueueAck(serializers.Serializer):
    session = serializers.IntegerField(min_value=1)


class QueueNack(QueueAck):
    requeue = serializers.BooleanField(default=True)
    delay = serializers.FloatField(min_value=0, max_value=7 * 24 * 3600, default=0)


class CacheSet(serializers.Serializer):
    value = serializers.CharField(max_length=limits.VALUE_MAX_BYTES, allow_blank=True)
    ttl = serializers.FloatField(
        min_value=0.001, max_value=30 * 24 * 3600, required=False, allow_null=True, default=None
    )


class CacheIncr(serializers.Serializer):
    delta = serializers.IntegerField(default=1)


class Transfer(serializers.Serializer):
    to = serializers.CharField(max_length=64)


class QueuePeek(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, default=20)
