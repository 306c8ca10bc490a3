from nudge import appconfig  # the module, not the class: see nudge.appconfig
from nudge.conf import defaults_apply

# Before any model or service reads a setting: the host project sets only what it changes.
defaults_apply()


class JourneysConfig(appconfig.NudgeAppConfig):
    name = "journeys"

    def ready(self) -> None:
        from journeys import checks, receivers  # noqa: F401 (checks registers itself)

        receivers.connect()
