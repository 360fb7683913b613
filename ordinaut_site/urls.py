"""URL configuration: the agents' API at the root (no version prefix), docs, admin, health, metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiJsonRenderer2
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularSwaggerView

from . import health, metrics
from .agents_api import AgentViewSet
from .api import Router
from .audit_api import AuditLogViewSet

router = Router()
router.register("agents", AgentViewSet, basename="agent")
router.register("audit", AuditLogViewSet, basename="audit")

urlpatterns = [
    path("admin/", admin.site.urls),
    re_path(r"^health/?$", health.health, name="health"),
    re_path(r"^health/live/?$", health.live, name="health-live"),
    re_path(r"^health/ready/?$", health.ready, name="health-ready"),
    re_path(
        r"^openapi\.json/?$",
        # Plain application/json first (the OpenAPI media type stays available by Accept).
        SpectacularJSONAPIView.as_view(renderer_classes=[OpenApiJsonRenderer2, OpenApiJsonRenderer]),
        name="openapi",
    ),
    re_path(r"^docs/?$", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    # django-prometheus's series and Ordinaut's (ordinaut_site/metrics.py); docs/api.md: a trailing
    # slash is accepted too.
    re_path(r"^metrics/?$", metrics.metrics_view, name="prometheus-django-metrics"),
    path("", include(router.urls)),
    path("", include("tasks.urls")),
    path("", include("runs.urls")),
    path("", include("pipelines.urls")),
]

handler400 = "ordinaut_site.api.json_400"
handler403 = "ordinaut_site.api.json_403"
handler404 = "ordinaut_site.api.json_404"
handler500 = "ordinaut_site.api.json_500"
