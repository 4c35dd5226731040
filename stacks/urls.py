from django.urls import path

from stacks import views, views_live

app_name = "stacks"

urlpatterns = [
    path("catalog/", views.catalog, name="catalog"),
    # --- projects, environments and their actions (stacks/views.py) ---
    path("projects/new/", views.project_new, name="project_new"),
    path("projects/<int:project_id>/", views.project_detail, name="project"),
    path("environments/<int:environment_id>/", views.environment_detail, name="environment"),
    path("environments/<int:environment_id>/scale/", views.environment_scale, name="environment_scale"),
    path("environments/<int:environment_id>/upgrade/", views.environment_upgrade, name="environment_upgrade"),
    path(
        "environments/<int:environment_id>/rollback/", views.environment_rollback, name="environment_rollback"
    ),
    path("environments/<int:environment_id>/domains/", views.domain_add, name="domain_add"),
    path(
        "environments/<int:environment_id>/domains/<int:domain_id>/check/",
        views.domain_check,
        name="domain_check",
    ),
    path(
        "environments/<int:environment_id>/domains/<int:domain_id>/remove/",
        views.domain_remove,
        name="domain_remove",
    ),
    path(
        "environments/<int:environment_id>/domains/<int:domain_id>/hsts/",
        views.domain_hsts,
        name="domain_hsts",
    ),
    path("environments/<int:environment_id>/variables/", views.variable_set, name="variable_set"),
    path(
        "environments/<int:environment_id>/variables/delete/", views.variable_delete, name="variable_delete"
    ),
    path("environments/<int:environment_id>/content/upload/", views.content_upload, name="content_upload"),
    path("environments/<int:environment_id>/content/git/", views.content_git, name="content_git"),
    path("environments/<int:environment_id>/deploy-key/", views.deploy_key_rotate, name="deploy_key_rotate"),
    path(
        "environments/<int:environment_id>/ssh-host-keys/forget/",
        views.ssh_host_keys_forget,
        name="ssh_host_keys_forget",
    ),
    path("environments/<int:environment_id>/stop/", views.environment_stop, name="environment_stop"),
    path("environments/<int:environment_id>/start/", views.environment_start, name="environment_start"),
    path(
        "environments/<int:environment_id>/redeploy/", views.environment_redeploy, name="environment_redeploy"
    ),
    path("environments/<int:environment_id>/destroy/", views.environment_destroy, name="environment_destroy"),
    path("operations/<int:operation_id>/", views.operation_detail, name="operation"),
    path("environments/<int:environment_id>/backups/", views.environment_backups, name="environment_backups"),
    path("environments/<int:environment_id>/backup/", views.environment_backup, name="environment_backup"),
    path("backups/<int:backup_id>/restore/", views.backup_restore, name="backup_restore"),
    path("environments/<int:environment_id>/backups/upload/", views.backup_upload, name="backup_upload"),
    path("backups/<int:backup_id>/download/", views.backup_download, name="backup_download"),
    path("operations/<int:operation_id>/restore/", views.restore_settle, name="restore_settle"),
    path(
        "environments/<int:environment_id>/old-data/<int:operation_id>/delete/",
        views.old_data_delete,
        name="old_data_delete",
    ),
    # --- end projects ---
    # --- logs, resource charts (stacks/views_live.py) ---
    path(
        "environments/<int:environment_id>/components/<slug:component>/logs/",
        views_live.component_logs,
        name="component_logs",
    ),
    path(
        "environments/<int:environment_id>/components/<slug:component>/logs/download/",
        views_live.component_logs_download,
        name="component_logs_download",
    ),
    path(
        "environments/<int:environment_id>/components/<slug:component>/metrics/",
        views_live.component_metrics,
        name="component_metrics",
    ),
    path(
        "environments/<int:environment_id>/components/<slug:component>/metrics/data/",
        views_live.component_metrics_data,
        name="component_metrics_data",
    ),
    # --- end live ---
]
