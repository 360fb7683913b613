"""URL routes of the task and schedule endpoints (trailing slash optional)."""

from django.urls import re_path

from ordinaut_site.api import Router

from .api import SchedulePreviewView, TaskViewSet

router = Router()
router.register("tasks", TaskViewSet, basename="task")
urlpatterns = [
    *router.urls,
    re_path(r"^schedules/preview/?$", SchedulePreviewView.as_view(), name="schedule-preview"),
]
