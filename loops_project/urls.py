from django.contrib import admin
from django.urls import include, path

from loops_project.api import api
from runs import scan_views
from runs.trigger_statement import trigger_url

urlpatterns = [
    path("admin/", admin.site.urls),
    # The trigger URL's common case is one statement; the rest is the API's operation.
    path("api/loop/<str:org>/<str:loop>", trigger_url),
    path("api/", api.urls),
    path("scan/<str:scan_id>", scan_views.scan_page, name="scan_page"),
    path("", include("loops_project.page_urls")),
]
