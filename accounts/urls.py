from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("orgs/<str:org>/switch/", views.switch_org, name="switch_org"),
    path("settings/members/", views.members, name="members"),
    path("settings/members/<str:membership_id>/role/", views.member_role, name="member_role"),
    path("settings/members/<str:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("settings/tokens/", views.tokens, name="tokens"),
    path("settings/tokens/<str:token_id>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("settings/webhooks/", views.webhooks, name="webhooks"),
    path("settings/webhooks/<str:hook_id>/", views.webhook_detail, name="webhook"),
    path(
        "settings/webhooks/<str:hook_id>/deliveries/<str:delivery_id>/redeliver/",
        views.webhook_redeliver,
        name="redeliver",
    ),
]
