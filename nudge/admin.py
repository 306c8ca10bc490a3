"""Admin base classes shared by Nudge's apps."""

from __future__ import annotations

from django.contrib import admin


class LargeTableAdmin(admin.ModelAdmin):
    """The list of a table that reaches millions of rows (customers, carts, payments, events,
    sends), cheap to open: newest first by primary key (an index; the model's ordering, by a
    date without an index, sorted the whole table for each page); no date hierarchy (it runs
    SELECT DISTINCT date_trunc(...) over the whole table: the date filter does its job); one
    COUNT(*), not a second one for the unfiltered total. At a million rows each list took
    1.3-3.0 s to open, most of it in those queries."""

    ordering = ("-pk",)
    date_hierarchy = None
    show_full_result_count = False
