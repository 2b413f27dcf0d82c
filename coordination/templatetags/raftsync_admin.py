"""Formatting for the admin's live cluster pages: the primitives speak milliseconds and ratios."""

from __future__ import annotations

from django import template

register = template.Library()

NONE = "—"


@register.filter
def ms(value: int | None) -> str:
    """A duration in milliseconds, in the unit a person reads: ``850 ms``, ``4.2 s``, ``12 min``.
    Anything that is not a number (a template's missing field: a node that has not reported it
    yet, such as a learner just added) shows as unknown rather than failing the page."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return NONE
    if value < 1000:
        return f"{value} ms"
    if value < 120_000:
        return f"{value / 1000:.1f} s"
    if value < 2 * 3_600_000:
        return f"{value / 60_000:.0f} min"
    return f"{value / 3_600_000:.1f} h"


@register.filter
def percent(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f} %"
