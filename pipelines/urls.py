"""URL routes of the pipeline endpoints (trailing slash optional)."""

from django.urls import re_path

from .api import PipelineValidateView

urlpatterns = [
    re_path(r"^pipelines/validate/?$", PipelineValidateView.as_view(), name="pipeline-validate"),
]
