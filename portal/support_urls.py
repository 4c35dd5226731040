from django.urls import path

from portal import support_views

app_name = "support"

urlpatterns = [
    path("view-as/<int:org_id>/", support_views.view_as_start, name="view_as_start"),
    path("view-as/stop/", support_views.view_as_stop, name="view_as_stop"),
    path("demos/", support_views.demo_start, name="demo_start"),
    path("demos/<int:org_id>/extend/", support_views.demo_extend, name="demo_extend"),
    path("demos/<int:org_id>/end/", support_views.demo_end, name="demo_end"),
]
