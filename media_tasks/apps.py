from django.apps import AppConfig


class MediaTasksConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "media_tasks"
    verbose_name = "Media tasks"
