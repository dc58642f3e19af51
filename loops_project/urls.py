from django.contrib import admin
from django.urls import include, path

from loops_project.api import api
from runs import scan_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("scan/<str:scan_id>", scan_views.scan_page, name="scan_page"),
    path("", include("loops_project.page_urls")),
]
