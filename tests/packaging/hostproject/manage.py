#!/usr/bin/env python
"""A shop's own Django project, with Nudge installed from its wheel (tests/packaging)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
