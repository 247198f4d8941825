"""Checks of numeric arguments that raise a ValueError naming the argument, its value and the accepted values."""

from __future__ import annotations

import math
from typing import Any


def _is_finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_positive(argument: str, value: Any, allow_none: bool = False) -> None:
    """A finite number > 0 (or None when `allow_none`)."""
    if value is None and allow_none:
        return
    if not (_is_finite_number(value) and value > 0):
        accepted = "None or a finite number > 0" if allow_none else "a finite number > 0"
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: {accepted}")


def check_non_negative(argument: str, value: Any) -> None:
    """A finite number >= 0."""
    if not (_is_finite_number(value) and value >= 0):
        raise ValueError(f"{argument}={value!r} is not supported; accepted values: a finite number >= 0")
