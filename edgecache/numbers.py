"""What counts as a number in configuration and request fields."""

from __future__ import annotations

import math
import sys
from typing import Any


def is_number(value: Any) -> bool:
    """A finite int or float that float arithmetic can take; True and False do not count.

    JSON integers are unbounded: 10**400 arrives as an int that `math.isfinite` and
    `value / 1000.0` raise OverflowError on, so an int must also fit in a float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= sys.float_info.max
    return isinstance(value, float) and math.isfinite(value)


def is_positive(value: Any) -> bool:
    """A number above zero: a TTL in seconds, an expiry time."""
    return is_number(value) and value > 0
