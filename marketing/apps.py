from django.apps import AppConfig


class MarketingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "marketing"
    verbose_name = "Marketing data"

    def ready(self) -> None:
        from marketing import checks, receivers  # noqa: F401 (checks registers on import)

        receivers.connect()
