"""URL routes of the pipeline endpoints (trailing slash optional)."""

from django.urls import include, path, re_path

from ordinaut_site.api import Router

from .api import PipelineValidateView
from .tools_api import ToolServerViewSet, ToolViewSet

router = Router()
router.register("tools", ToolViewSet, basename="tool")
router.register("tool-servers", ToolServerViewSet, basename="tool-server")

urlpatterns = [
    re_path(r"^pipelines/validate/?$", PipelineValidateView.as_view(), name="pipeline-validate"),
    path("", include(router.urls)),
]
