from django.urls import path

from accounts import views

urlpatterns = [
    path("orgs/<str:org>/switch/", views.switch_org, name="switch_org"),
]
