from django.urls import path

from stacks import views

app_name = "stacks"

urlpatterns = [
    path("catalog/", views.catalog, name="catalog"),
    # --- projects, environments and their actions (stacks/views.py) ---
    # --- end projects ---
    # --- logs, resource charts (stacks/views_live.py) ---
    # --- end live ---
]
