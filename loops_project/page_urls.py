"""The web pages (server-rendered, HTMX). Each app contributes its own URL module."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts import views as account_views
from runs import inbox_views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", account_views.home, name="home"),
    path("", include("accounts.urls")),
    path("loops/", include("loops.urls")),
    path("runs/", include("runs.urls")),
    path("inbox/", inbox_views.inbox, name="inbox"),
    path("inbox/count/", inbox_views.inbox_count, name="inbox_count"),
    path("inbox/decide/", inbox_views.inbox_decide, name="inbox_decide"),
    path("inbox/<str:run_id>/answer/", inbox_views.inbox_answer, name="inbox_answer"),
]
