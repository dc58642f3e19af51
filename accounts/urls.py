from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("orgs/<str:org>/switch/", views.switch_org, name="switch_org"),
    path("settings/members/", views.members, name="members"),
    path("settings/members/<str:membership_id>/role/", views.member_role, name="member_role"),
    path("settings/members/<str:membership_id>/remove/", views.member_remove, name="member_remove"),
    path(
        "settings/members/invitations/<str:invitation_id>/revoke/",
        views.invitation_revoke_view,
        name="invitation_revoke",
    ),
    path("invitations/", views.invitations, name="invitations"),
    path(
        "invitations/<str:invitation_id>/accept/",
        views.invitation_accept_view,
        name="invitation_accept",
    ),
    path(
        "invitations/<str:invitation_id>/decline/",
        views.invitation_decline_view,
        name="invitation_decline",
    ),
    path("invite/<str:secret>/", views.invitation_link, name="invitation_link"),
    path("settings/tokens/", views.tokens, name="tokens"),
    path("settings/audit/", views.audit, name="audit"),
    path("settings/tokens/<str:token_id>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("settings/webhooks/", views.webhooks, name="webhooks"),
    path("settings/webhooks/<str:hook_id>/", views.webhook_detail, name="webhook"),
    path(
        "settings/webhooks/<str:hook_id>/enable/",
        views.webhook_set_active_view,
        {"active": True},
        name="webhook_enable",
    ),
    path(
        "settings/webhooks/<str:hook_id>/disable/",
        views.webhook_set_active_view,
        {"active": False},
        name="webhook_disable",
    ),
    path("settings/webhooks/<str:hook_id>/test/", views.webhook_test_view, name="webhook_test"),
    path(
        "settings/webhooks/<str:hook_id>/delete/", views.webhook_delete_view, name="webhook_delete"
    ),
    path(
        "settings/webhooks/<str:hook_id>/deliveries/<str:delivery_id>/redeliver/",
        views.webhook_redeliver,
        name="redeliver",
    ),
]
