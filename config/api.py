"""API-wide behaviour shared by every DRF view: Nudge's own (`nudge.api`), named in
REST_FRAMEWORK["EXCEPTION_HANDLER"] so that the site's other views answer the same way."""

from nudge.api import exception_handler

__all__ = ["exception_handler"]
