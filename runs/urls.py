from django.urls import path

from runs import bulk_views, patch_views, views

app_name = "runs"
urlpatterns = [
    path("", views.run_list, name="list"),
    # Before "<run_id>/…": "bulk" is no run's id.
    path("bulk/", bulk_views.bulk_start, name="bulk_start"),
    path("bulk/new/", bulk_views.bulk_preview, name="bulk_preview"),
    path("bulk/<str:job_id>/", bulk_views.bulk_detail, name="bulk_detail"),
    path("bulk/<str:job_id>/abort/", bulk_views.bulk_abort, name="bulk_abort"),
    path("<str:run_id>/", views.detail, name="detail"),
    path("<str:run_id>/row/", views.run_row, name="row"),
    path("<str:run_id>/card/", views.run_card, name="card"),
    path("<str:run_id>/value/", views.run_value, name="value"),
    path("<str:run_id>/restart/", views.restart, name="restart"),
    path("<str:run_id>/resume/", views.resume, name="resume"),
    path("<str:run_id>/cancel/", views.cancel, name="cancel"),
    path("<str:run_id>/respond/", views.respond, name="respond"),
    path("<str:run_id>/save-input/", views.save_test_input, name="save_input"),
    path(
        "<str:run_id>/steps/<str:step_id>/save-output/", views.save_step_output, name="save_output"
    ),
    path("<str:run_id>/send-event/", patch_views.send_event, name="send_event"),
    path("<str:run_id>/steps/<str:step_id>/retry-from/", patch_views.retry_from, name="retry_from"),
    path("<str:run_id>/steps/<str:step_id>/complete/", patch_views.complete_step, name="complete"),
    path("<str:run_id>/steps/<str:step_id>/fire/", patch_views.fire_step, name="fire"),
]
