from django.urls import path

from loops import views

app_name = "loops"
urlpatterns = [
    path("", views.loop_list, name="list"),
    path("<slug:slug>/", views.overview, name="overview"),
]
