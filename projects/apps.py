from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    verbose_name = "Customers and projects"

    def ready(self) -> None:
        # Connects the receivers that audit logins; models are loaded only now.
        from projects import receivers  # noqa: F401, PLC0415 - app loading: ready() is the hook
