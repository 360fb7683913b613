"""URL routes of the run and approval endpoints (trailing slash optional)."""

from ordinaut_site.api import Router

from .api import ApprovalViewSet, RunViewSet

router = Router()
router.register("runs", RunViewSet, basename="run")
router.register("approvals", ApprovalViewSet, basename="approval")
urlpatterns = router.urls
