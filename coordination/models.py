"""No tables: the coordination state lives in the Raft cluster. This unmanaged model only
carries the permissions the REST API and admin actions check (assign them to users or groups),
and gives the admin's live cluster pages (``coordination.admin``) their place in the app list."""

from __future__ import annotations

from django.db import models


class Coordination(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        verbose_name = verbose_name_plural = "cluster"  # the admin's entry to the live pages
        permissions = (
            ("use_primitives", "Can take locks, use queues and sessions, and write the cache"),
            ("operate_cluster", "Can purge queues, requeue dead letters and move leadership"),
        )
