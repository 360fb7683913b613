"""URL routes of the run endpoints (trailing slash optional)."""

from ordinaut_site.api import Router

from .api import RunViewSet

router = Router()
router.register("runs", RunViewSet, basename="run")
urlpatterns = router.urls
