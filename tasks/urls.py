"""URL routes of the task, schedule and event endpoints (trailing slash optional)."""

from django.urls import re_path

from ordinaut_site.api import Router

from .api import SchedulePreviewView, TaskViewSet
from .events_api import EventViewSet

router = Router()
router.register("tasks", TaskViewSet, basename="task")
router.register("events", EventViewSet, basename="event")
urlpatterns = [
    *router.urls,
    re_path(r"^schedules/preview/?$", SchedulePreviewView.as_view(), name="schedule-preview"),
]
