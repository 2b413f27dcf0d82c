"""No tables: the coordination state lives in the Raft cluster. This unmanaged model only
carries the permissions the REST API and admin actions check (assign them to users or groups)."""

from __future__ import annotations

from django.db import models


class Coordination(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = (
            ("use_primitives", "Can take locks, use queues and sessions, and write the cache"),
            ("operate_cluster", "Can purge queues, requeue dead letters and move leadership"),
        )
