from django.apps import AppConfig


class MediaTasksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "media_tasks"
    verbose_name = "Media tasks"

    def ready(self) -> None:
        from media_tasks import checks  # noqa: F401 - registers the settings checks
