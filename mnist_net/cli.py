"""argparse pieces shared by every CLI: one-line errors with exit code 2, typed flag values."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T", int, float)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" unless the help text already states the default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Bad input -> one line on stderr and exit code 2, never a usage dump or traceback."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def fail(self, message: str) -> NoReturn:
        """For errors found after parsing (bad config file, unwritable folder...)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _checked(convert: Callable[[str], T], ok: Callable[[T], bool], must: str) -> Callable[[str], T]:
    """An argparse type: `convert(text)`, kept if ok(value); else "'text' is not an integer" (or
    "a number") or "'text' must ...", argparse's one-line error."""
    kind = "an integer" if convert is int else "a number"

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {must}")
        return value

    return parse


# NaN fails every comparison, so none of these accepts it; the floats' upper bounds turn infinity away.
positive_int = _checked(int, lambda v: v > 0, "must be a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "must be zero or positive")
non_negative_float = _checked(float, lambda v: 0 <= v < math.inf, "must be zero or a positive number")
positive_float = _checked(float, lambda v: 0 < v < math.inf, "must be a positive number")
unit_float = _checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")


COMPILE_MODE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")


def add_compile_mode(parser: argparse.ArgumentParser) -> None:
    """--compile-mode, the same on every CLI; compile_changes(args) turns it into TrainConfig fields."""
    parser.add_argument("--compile-mode", choices=COMPILE_MODE_CHOICES,
                        help="torch.compile the model: default, reduce-overhead (+ CUDA graphs: fewer "
                        "kernel launches per step on a GPU) or max-autotune-no-cudagraphs; off = eager "
                        "(default off: no GPU measurement has shown a gain yet, bench/gpu.sh measures it)")


def compile_changes(args: argparse.Namespace) -> dict:
    """TrainConfig changes for --compile-mode ({} when not given: the config's own setting)."""
    mode = getattr(args, "compile_mode", None)
    if mode is None:
        return {}
    if mode == "off":
        return {"compile": False}
    return {"compile": True, "compile_mode": mode}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h' or plain seconds -> seconds (argparse type: one-line errors)."""
    match = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+))\s*([smh]?)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds, or a number "
                                         "with s, m or h (90s, 20m, 1.5h)")
    seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration (e.g. 20m)")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"
