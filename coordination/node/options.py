"""Command-line options shared by the console script (``raftsync``) and the Django management
commands: each is defined once, with the ``COORDINATION`` key it overrides, so both paths accept
the same flags and a flag always wins over the environment and the settings (``coordination.conf``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    help: str
    key: str | None = None  # the COORDINATION key this flag overrides, if any
    type: Callable[[str], Any] | None = None
    default: Any = None
    action: str | None = None


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    for opt in options:
        kwargs: dict[str, Any] = {"dest": opt.dest, "help": opt.help}
        if opt.action:
            kwargs["action"] = opt.action
        else:
            kwargs["default"] = opt.default
            if opt.type is not None:
                kwargs["type"] = opt.type
        if opt.key and not opt.action:
            kwargs["help"] += f" (default: {opt.key} setting)"
        parser.add_argument(opt.flag, **kwargs)


def setting_overrides(opts: Mapping[str, Any], options: Iterable[Option]) -> dict[str, Any]:
    """``{KEY: value}`` for every given flag that stands for a ``COORDINATION`` key."""
    return {o.key: opts[o.dest] for o in options if o.key and opts.get(o.dest) is not None}
