"""argparse pieces shared by every CLI: one-line errors with exit code 2, typed flag values."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or positive")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or a positive number")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


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
