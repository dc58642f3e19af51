from django.urls import path

from runs import views

app_name = "runs"
urlpatterns = [
    path("<str:run_id>/", views.detail, name="detail"),
]
