from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Connects the receiver of a new organization's trial; models are loaded only now.
        from billing import receivers  # noqa: F401, PLC0415 - app loading: ready() is the hook
