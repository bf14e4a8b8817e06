"""Top-level routes: the API, operations, schema and docs, admin, and the browser client."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from enigmo import ops

urlpatterns = [
    path("api/health", ops.HealthApi.as_view(), name="health"),
    path("api/stats", ops.StatsApi.as_view(), name="stats"),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="docs"),
    path("api/v1/", include("keys.urls")),
    path("api/v1/", include("messaging.urls")),
    path("admin/", admin.site.urls),
    path("", include("enigmo.web")),
]

# Drop-in compatibility (docs/compat.md): the routes exist only when their flag is on.
if settings.COMPAT_ENIGMA_V03:
    urlpatterns.insert(0, path("", include("enigmo.compat.urls")))

handler400 = "enigmo.middleware.json_400"
handler403 = "enigmo.middleware.json_403"
handler404 = "enigmo.middleware.json_404"
handler500 = "enigmo.middleware.json_500"
