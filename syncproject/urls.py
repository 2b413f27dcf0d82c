"""URL routes: the admin, and the coordination REST API with its OpenAPI schema (/api/schema/)
and Swagger UI (/api/docs/)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("coordination.api.urls")),
]
