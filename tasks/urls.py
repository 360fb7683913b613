"""URL routes of the task endpoints (trailing slash optional)."""

from ordinaut_site.api import Router

from .api import TaskViewSet

router = Router()
router.register("tasks", TaskViewSet, basename="task")
urlpatterns = router.urls
