from django.urls import path

from stacks import views

app_name = "stacks"

urlpatterns = [
    path("catalog/", views.catalog, name="catalog"),
]
