"""URL routes. Only the admin exists yet; the coordination API is mounted when it lands."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
