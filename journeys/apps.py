from django.apps import AppConfig

from nudge.conf import defaults_apply

# Before any model or service reads a setting: the host project sets only what it changes.
defaults_apply()


class JourneysConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "journeys"

    def ready(self) -> None:
        from journeys import receivers

        receivers.connect()
