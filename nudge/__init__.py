"""Nudge's core: what its apps (marketing, journeys, media_tasks) share.

Settings defaults (`nudge.conf`), database helpers (`nudge.db`), admin base classes
(`nudge.admin`), the URLs a host project includes (`nudge.urls`) and the project's templates.
"""
