from nudge import appconfig  # the module, not the class: see nudge.appconfig
from nudge.conf import defaults_apply

# Before any model or service reads a setting: the host project sets only what it changes.
defaults_apply()


class MediaTasksConfig(appconfig.NudgeAppConfig):
    name = "media_tasks"
    verbose_name = "Media tasks"

    def ready(self) -> None:
        from media_tasks import checks  # noqa: F401 - registers the settings checks
