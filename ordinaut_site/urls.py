"""URL configuration: the agents' API at the root (no version prefix), admin, health, metrics."""

from django.contrib import admin
from django.urls import include, path, re_path

from . import health

urlpatterns = [
    path("admin/", admin.site.urls),
    re_path(r"^health/?$", health.health, name="health"),
    re_path(r"^health/live/?$", health.live, name="health-live"),
    re_path(r"^health/ready/?$", health.ready, name="health-ready"),
    path("", include("django_prometheus.urls")),
    path("", include("tasks.urls")),
    path("", include("runs.urls")),
]

handler400 = "ordinaut_site.api.json_400"
handler403 = "ordinaut_site.api.json_403"
handler404 = "ordinaut_site.api.json_404"
handler500 = "ordinaut_site.api.json_500"
