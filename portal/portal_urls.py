from django.urls import path

from portal import views

app_name = "portal"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("archive/", views.archive, name="archive"),
    path("archive/<int:project_id>/delete/", views.archive_delete, name="archive_delete"),
    path("account/security/", views.security, name="security"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
]
