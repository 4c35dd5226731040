from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    name = "projects"
    verbose_name = "Customers and projects"

    def ready(self) -> None:
        from projects import receivers  # noqa: F401  (audit of logins)
