"""Argument checks and constants shared by every part of exprfast: one wording for one mistake."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

# Image files that datasets, photo editing and the commands read.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_int(value, minimum: int | None = None) -> bool:
    """A Python or NumPy integer (not a bool), at least ``minimum`` when given."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def is_number(value) -> bool:
    """An int or float (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_power_of_two(value) -> bool:
    return is_int(value, 1) and value & (value - 1) == 0


def check_positive_int(value, name: str) -> None:
    if not is_int(value, 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def positive_int_arg(text: str) -> int:
    """``argparse`` type of a flag that takes a positive integer."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def check_img_size(value, name: str = "img_size", minimum: int = 2) -> None:
    """A power of two >= ``minimum`` (networks halve the side down to their smallest map)."""
    if not (is_power_of_two(value) and value >= minimum):
        raise ValueError(f"{name} must be a power of two >= {minimum}, got {value!r}")


def check_choice(value, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_attr_names(attrs: Sequence[str] | str, name: str = "attrs") -> tuple[str, ...]:
    """Distinct non-empty attribute names, as a tuple (a single string is one name)."""
    if isinstance(attrs, str):
        attrs = (attrs,)
    try:
        attrs = tuple(attrs)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of attribute names, got {attrs!r}") from None
    if not attrs:
        raise ValueError(f"{name} must name at least one attribute, got an empty sequence")
    if not all(isinstance(a, str) and a for a in attrs):
        raise ValueError(f"{name} must be non-empty strings, got {attrs!r}")
    repeated = sorted({a for a in attrs if attrs.count(a) > 1})
    if repeated:
        raise ValueError(f"{name} must not repeat names, got {', '.join(repeated)} twice")
    return attrs


def flag(name: str) -> str:
    """The command-line flag of an option name: ``img_size`` -> ``--img-size``."""
    return "--" + name.replace("_", "-")


def one_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (or its type's name)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
