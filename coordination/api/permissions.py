"""Reads need a login; writes need ``coordination.use_primitives``; operator actions (purge,
requeue dead letters, leadership transfer) need ``coordination.operate_cluster``."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission


class UsePrimitives(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return request.method in SAFE_METHODS or user.has_perm("coordination.use_primitives")


class OperateCluster(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and user.has_perm("coordination.operate_cluster")
        )
