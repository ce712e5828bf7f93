"""Every knob of the cold-chain job in one frozen dataclass, with the defaults we stand behind.

Why these defaults:

* ``excursion_min_minutes = 15``: food-safety practice (and the simulator) counts a
  temperature excursion only once a compartment has been out of range for a quarter of an
  hour; a door opened for a pickup warms a compartment for a few minutes and must not cost
  anyone a claim.
* ``out_of_orderness_s + allowed_lateness_s``: lockers buffer readings over flaky 4G and
  flush them late. Two minutes of disorder is normal, ten more minutes of lateness is
  tolerated; a reading later than that goes to ``coldchain_late_readings`` with its reason.
* ``silence_after_s = 900``: three missed readings at the usual 5-minute cadence. A silent
  compartment may be a power cut without battery: we cannot see its temperature, so it is
  an incident of its own (for a person to look at, never an automatic payout).
* Ranges: chilled 0–4 °C and frozen <= -18 °C are the cold-chain norms (GB 31605 / EU
  practice); ambient goods (tea, grain, snacks) are judged by a <= 30 °C storage limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

#: product_class -> (lowest allowed, highest allowed) in °C; None means unbounded on that side.
DEFAULT_RANGES: dict[str, tuple[float | None, float | None]] = {
    "chilled": (0.0, 4.0),
    "frozen": (None, -18.0),
    "ambient": (None, 30.0),
}


@dataclass(frozen=True)
class CompensationPolicy:
    """How much a standard temperature claim pays, as a share of the order total.

    Tiers follow how much damage an excursion can do: a short, mild one (minor) spoils
    texture, a long one (major) spoils dairy and meat, a very long or deep one (severe)
    spoils everything in the compartment, so the whole order is refunded.
    """

    minor_rate: float = 0.3
    major_rate: float = 0.6
    severe_rate: float = 1.0
    #: An excursion at least this long is major...
    major_after_minutes: int = 60
    #: ... and at least this long, severe.
    severe_after_minutes: int = 240
    #: Degrees beyond the range that make an excursion major / severe whatever its length.
    major_deviation_c: float = 4.0
    severe_deviation_c: float = 10.0
    #: No compensation below this amount (CNY), unless the order itself costs less.
    minimum_cny: float = 5.0
    #: Orders above this total are not standard: the claim goes to a person.
    auto_approve_max_cny: float = 500.0


@dataclass(frozen=True)
class ColdChainConfig:
    """Knobs of the telemetry job. Build variants with :meth:`with_options`."""

    #: Bounded out-of-orderness of readings (seconds) before a window may be considered on time.
    out_of_orderness_s: int = 120
    #: Further lateness tolerated (seconds); later readings go to the late table.
    allowed_lateness_s: int = 600
    #: Minutes out of range that make an excursion (observed span of out-of-range readings).
    excursion_min_minutes: int = 15
    #: No reading for longer than this (seconds) is a silence incident.
    silence_after_s: int = 900
    #: A door-open reading stands for at most this many seconds of open door.
    door_open_credit_s: int = 300
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    #: Goods are put into the compartment this long before the pickup slot starts.
    loading_lead_minutes: int = 60
    #: Goods never picked up are cleared out this long after the pickup slot ends.
    uncollected_cleared_after_hours: int = 48
    compensation: CompensationPolicy = field(default_factory=CompensationPolicy)
    #: Flink parallelism (the mini-cluster's task slots). One file is read by one reader.
    parallelism: int = 2

    def __post_init__(self) -> None:
        if self.out_of_orderness_s < 0 or self.allowed_lateness_s < 0:
            raise ValueError("out_of_orderness_s and allowed_lateness_s must be >= 0")
        if self.excursion_min_minutes < 1:
            raise ValueError("excursion_min_minutes must be >= 1")
        if self.silence_after_s < 60:
            raise ValueError("silence_after_s must be >= 60")
        for cls, (low, high) in self.ranges.items():
            if low is not None and high is not None and low > high:
                raise ValueError(f"range of {cls} is empty: {low} > {high}")

    @property
    def watermark_delay_s(self) -> int:
        """How far the watermark trails the newest reading: disorder plus allowed lateness."""
        return self.out_of_orderness_s + self.allowed_lateness_s

    def with_options(self, **options: Any) -> "ColdChainConfig":
        """A copy with some knobs changed (unknown names are an error, not ignored)."""
        unknown = set(options) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown cold-chain option(s): {', '.join(sorted(unknown))}")
        return replace(self, **options)
