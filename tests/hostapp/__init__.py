"""A host project's own app, for the tests: a shop's Order, which Nudge knows only through
NUDGE_HOST_EVENTS."""
