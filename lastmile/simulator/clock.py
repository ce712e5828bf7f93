"""Simulation time: int64 milliseconds since the window start, rendered as +08:00 ISO 8601.

Keeping time as integers (not datetimes) lets whole columns of event times be sampled,
sorted and formatted with numpy, and keeps the run free of any wall-clock dependence. The
window start is local midnight (China Standard Time, no DST), so "local" arithmetic is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Literal

import numpy as np

from .config import UTC_OFFSET

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def _stamps(start: date, t_ms: np.ndarray | Sequence[int], unit: Literal["s", "ms"]) -> list[str]:
    arr = np.asarray(t_ms, dtype=np.int64)
    base = np.datetime64(start.isoformat(), "ms")
    text = np.datetime_as_string(base + arr.astype("timedelta64[ms]"), unit=unit)
    return [s + UTC_OFFSET for s in text.tolist()]


def iso_ms(start: date, t_ms: np.ndarray | Sequence[int]) -> list[str]:
    """Millisecond timestamps, e.g. ``2026-09-11T16:05:12.345+08:00``."""
    return _stamps(start, t_ms, "ms")


def iso_seconds(start: date, t_ms: np.ndarray | Sequence[int]) -> list[str]:
    """Whole-second timestamps, e.g. ``2026-09-11T16:05:00+08:00``."""
    return _stamps(start, t_ms, "s")
