from django.urls import path

from loops import views
from runs import views as run_views

app_name = "loops"
urlpatterns = [
    path("", views.loop_list, name="list"),
    path("new/", views.loop_new, name="new"),
    path("<slug:slug>/", views.overview, name="overview"),
    path("<slug:slug>/trigger/", views.trigger, name="trigger"),
    path("<slug:slug>/pause/", views.pause, name="pause"),
    path("<slug:slug>/settings/", views.loop_settings, name="settings"),
    path("<slug:slug>/editor/", views.editor, name="editor"),
    path("<slug:slug>/test/", views.test_run, name="test"),
    path("<slug:slug>/versions/", views.versions, name="versions"),
    path("<slug:slug>/versions/<int:number>/rollback/", views.rollback, name="rollback"),
    path("<slug:slug>/runs/", run_views.run_list, name="runs"),
    path("<slug:slug>/logs/", views.logs, name="logs"),
    path("<slug:slug>/schedules/", views.schedules, name="schedules"),
    path("<slug:slug>/schedules/preview/", views.cron_preview, name="cron_preview"),
    path("<slug:slug>/schedules/<str:schedule_id>/toggle/", views.schedule_toggle,
         name="schedule_toggle"),
    path("<slug:slug>/schedules/<str:schedule_id>/delete/", views.delete_schedule,
         name="schedule_delete"),
    path("<slug:slug>/test-inputs/<str:input_id>/delete/", views.test_input_delete,
         name="test_input_delete"),
]  # fmt: skip
