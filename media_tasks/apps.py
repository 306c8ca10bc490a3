from django.apps import AppConfig

from nudge.conf import defaults_apply

# Before any model or service reads a setting: the host project sets only what it changes.
defaults_apply()


class MediaTasksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "media_tasks"
    verbose_name = "Media tasks"

    def ready(self) -> None:
        from media_tasks import checks  # noqa: F401 - registers the settings checks
