from django.urls import path

from projects import views

app_name = "projects"

urlpatterns = [
    path("orgs/new/", views.organization_create, name="organization_create"),
    path("orgs/switch/", views.organization_switch, name="organization_switch"),
    path("orgs/<int:org_id>/", views.organization_detail, name="organization"),
    path("orgs/<int:org_id>/invite/", views.member_invite, name="member_invite"),
    path(
        "orgs/<int:org_id>/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("orgs/<int:org_id>/members/<int:member_id>/role/", views.member_role, name="member_role"),
    path("orgs/<int:org_id>/members/<int:member_id>/remove/", views.member_remove, name="member_remove"),
    path("orgs/<int:org_id>/audit/", views.audit_log, name="audit_log"),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
    path("account/tokens/", views.api_tokens, name="api_tokens"),
    path("account/tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api_token_revoke"),
]
