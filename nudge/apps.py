from nudge import appconfig  # the module, not the class: see nudge.appconfig
from nudge.conf import defaults_apply

defaults_apply()


class NudgeConfig(appconfig.NudgeAppConfig):
    """Nudge's core: no models; its templates (the project's top-level `templates/`, shipped
    inside the package by the wheel) and the settings defaults."""

    name = "nudge"
    verbose_name = "Nudge"
