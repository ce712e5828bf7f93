"""Cold-chain physics of every compartment: normal noise, excursions and door spikes.

Produces, for the whole window at once (numpy arrays, one row per compartment), the
temperature, humidity, door and power state every reading will report, plus the ground
truth of what happened. Incident curves are shaped so the truth is exact, not approximate:

* a real excursion is one contiguous run of out-of-range readings whose first and last
  readings are at least ``excursion_min_minutes`` apart (``truth/excursions.jsonl``);
* a door spike is at most ``ceil(min / cadence) - 1`` out-of-range readings, so even
  "count readings x cadence" stays under the minimum (``truth/door_spikes.jsonl``);
* a power cut or fault that would leave a compartment out of range only briefly is clipped
  to a near miss (warm but in range), so every out-of-range reading in the telemetry belongs
  to exactly one recorded excursion or spike. Ambient compartments have no range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.signal import lfilter

from .config import TEMPERATURE_RANGES, SimulationConfig
from .world import World

POWER_STATES = ("mains", "battery", "off")

#: class -> (mean, daily amplitude, noise sd, clip low, clip high) for normal operation.
_TEMP_MODEL = {
    "chilled": (2.0, 0.3, 0.35, 0.5, 3.5),
    "frozen": (-20.0, 0.4, 0.5, -22.5, -18.7),
    "ambient": (21.0, 2.0, 1.0, 14.0, 28.0),
}
_HUMIDITY_MODEL = {"chilled": (86.0, 3.0, 70.0, 97.0), "frozen": (62.0, 4.0, 45.0, 80.0), "ambient": (55.0, 6.0, 30.0, 85.0)}
#: Ambient goods are never warmer than this, so no reading breaks a <= 30 °C storage limit.
_AMBIENT_MAX = 29.0
#: Margin (°C) that keeps readings clearly on one side of a range bound after rounding.
_MARGIN = 0.3


@dataclass
class ColdChain:
    """Readings for every compartment and reading step, plus the ground truth."""

    cadence_s: int
    temperature: np.ndarray  # (compartments, steps) °C
    humidity: np.ndarray  # (compartments, steps) %
    door_open: np.ndarray  # (compartments, steps) bool
    power: np.ndarray  # (lockers, steps) index into POWER_STATES
    phase_ms: np.ndarray  # (lockers,) offset of each locker's readings within the cadence
    excursions: list[dict[str, Any]] = field(default_factory=list)
    door_spikes: list[dict[str, Any]] = field(default_factory=list)

    def step_ms(self, locker_index: int, step: int) -> int:
        """Reading time (ms since window start) of ``step`` on a locker's clock."""
        return step * self.cadence_s * 1000 + int(self.phase_ms[locker_index])


def _upper(product_class: str) -> float:
    """Upper bound of a cold class's range (cold incidents only ever push temperatures up)."""
    hi = TEMPERATURE_RANGES[product_class][1]
    if hi is None:
        raise ValueError(f"{product_class} compartments have no upper temperature bound")
    return hi


class _Planner:
    def __init__(self, world: World, cfg: SimulationConfig) -> None:
        self.world = world
        self.cfg = cfg
        self.rng = cfg.rng("cold_chain")
        self.cad = cfg.telemetry_every_s
        self.n_steps = cfg.telemetry_steps
        min_s = cfg.excursion_min_minutes * 60
        self.k_min = math.ceil(min_s / self.cad) + 1  # readings spanning >= min from first to last
        self.k_spike = max(1, math.ceil(min_s / self.cad) - 1)  # readings x cadence < min
        self.pad = max(6, math.ceil(3600 / self.cad))
        self.busy: list[list[tuple[int, int]]] = [[] for _ in world.compartments]
        self.chain = self._baseline()

    # -- normal operation -------------------------------------------------------------------

    def _baseline(self) -> ColdChain:
        world, rng, n = self.world, self.rng, self.n_steps
        n_c = len(world.compartments)
        hours = (np.arange(n) * self.cad / 3600.0) % 24.0
        daily = np.sin(2 * np.pi * (hours - 9.0) / 24.0)  # warmest mid-afternoon
        phi = 0.85
        noise = lfilter([math.sqrt(1 - phi * phi)], [1.0, -phi], rng.standard_normal((n_c, n)), axis=1)
        hnoise = lfilter([math.sqrt(1 - phi * phi)], [1.0, -phi], rng.standard_normal((n_c, n)), axis=1)
        temp = np.empty((n_c, n))
        hum = np.empty((n_c, n))
        for c in world.compartments:
            mean, amp, sd, lo, hi = _TEMP_MODEL[c.product_class]
            offset = rng.uniform(-0.3, 0.3)
            temp[c.index] = np.clip(mean + offset + amp * daily + sd * noise[c.index], lo, hi)
            hmean, hsd, hlo, hhi = _HUMIDITY_MODEL[c.product_class]
            hum[c.index] = np.clip(hmean + hsd * hnoise[c.index] + 1.5 * daily, hlo, hhi)
        phase_ms = rng.integers(0, min(self.cad, 60), len(world.lockers)) * 1000
        return ColdChain(self.cad, temp, hum, np.zeros((n_c, n), dtype=bool),
                         np.zeros((len(world.lockers), n), dtype=np.int8), phase_ms)

    # -- scheduling ---------------------------------------------------------------------------

    def _free(self, comps: list[int], a: int, b: int) -> bool:
        a, b = a - self.pad, b + self.pad
        return all(e <= a or s >= b for c in comps for s, e in self.busy[c])

    def _place(self, comps: list[int], length: int) -> int | None:
        """A start step where ``length`` steps fit on all ``comps`` without touching other incidents."""
        lo, hi = self.pad, self.n_steps - length - self.pad
        if hi <= lo:
            return None
        for _ in range(30):
            start = int(self.rng.integers(lo, hi))
            if self._free(comps, start, start + length):
                for c in comps:
                    self.busy[c].append((start, start + length))
                return start
        return None

    # -- incident shapes ------------------------------------------------------------------------

    def _settle(self, c: int, start: int, seg: np.ndarray, cause: str) -> None:
        """Write a temperature segment; record it as an excursion if it really is one."""
        comp = self.world.compartments[c]
        seg = seg[: self.n_steps - start]
        hi = TEMPERATURE_RANGES[comp.product_class][1]
        if hi is None:  # ambient: no cold-chain range; stays under a 30 °C storage limit anyway
            self.chain.temperature[c, start:start + len(seg)] = np.minimum(seg, _AMBIENT_MAX)
            return
        out = seg > hi
        k = int(out.sum())
        if 0 < k < self.k_min:  # too brief to be an excursion: make it a near miss
            seg = np.minimum(seg, hi - _MARGIN)
            out[:] = False
            k = 0
        seg = np.where(out, np.maximum(seg, hi + _MARGIN), np.minimum(seg, hi - _MARGIN))
        self.chain.temperature[c, start:start + len(seg)] = seg
        if k:
            first = int(np.argmax(out))
            if not out[first:first + k].all():
                raise AssertionError("excursion readings must be contiguous")
            self._record(self.chain.excursions, c, start + first, start + first + k - 1, cause,
                         float(seg[out].max()))

    def _record(self, into: list[dict[str, Any]], c: int, first: int, last: int, cause: str | None, peak: float) -> None:
        comp = self.world.compartments[c]
        row: dict[str, Any] = {
            "locker_id": comp.locker_id, "compartment_id": comp.compartment_id, "community_id": comp.community_id,
            "product_class": comp.product_class,
            "start_ms": self.chain.step_ms(comp.locker_index, first),
            "end_ms": self.chain.step_ms(comp.locker_index, last),
            "readings_out_of_range": last - first + 1, "peak_c": round(peak, 2), "compartment_index": c,
        }
        if cause is not None:
            row["cause"] = cause
        into.append(row)

    def power_cut(self, locker: int) -> None:
        rng, cad = self.rng, self.cad
        comps = [c.index for c in self.world.lockers[locker].compartments]
        n_off = max(1, round(rng.uniform(30, 180) * 60 / cad))
        n_rec = math.ceil(3600 / cad)
        start = self._place(comps, n_off + n_rec)
        if start is None:
            return
        # A backup battery keeps the controller and its sensors up, not the compressor; without
        # one, the sensors log on their own cell ("off") and the locker flushes them later.
        self.chain.power[locker, start:start + n_off] = 1 if self.world.lockers[locker].has_battery else 2
        for c in comps:
            cls = self.world.compartments[c].product_class
            rate = {"chilled": rng.uniform(0.08, 0.15), "frozen": rng.uniform(0.05, 0.10), "ambient": 0.01}[cls]
            base = self.chain.temperature[c, start]
            rise = base + rate * (np.arange(1, n_off + 1) * cad / 60.0)
            after = self.chain.temperature[c, min(start + n_off + n_rec, self.n_steps - 1)]
            rec = after + (rise[-1] - after) * np.exp(-np.arange(1, n_rec + 1) * cad / 1200.0)
            self._settle(c, start, np.concatenate([rise, rec]), "power_cut")

    def door_left_open(self, c: int) -> None:
        rng, cad = self.rng, self.cad
        hi = _upper(self.world.compartments[c].product_class)
        n_open = max(self.k_min - 1, round(rng.uniform(20, 60) * 60 / cad))
        n_rec = 3
        start = self._place([c], n_open + 1 + n_rec)
        if start is None:
            return
        peak = rng.uniform(4.0, 9.0)
        rise = hi + _MARGIN + peak * (1 - np.exp(-np.arange(1, n_open + 1) * cad / 600.0))
        closing = np.array([hi + _MARGIN + 0.3 * (rise[-1] - hi)])
        base = self.chain.temperature[c, min(start + n_open + 1 + n_rec, self.n_steps - 1)]
        rec = base + (hi - base) * np.array([0.7, 0.35, 0.15])
        self.chain.door_open[c, start:start + n_open] = True
        self.chain.humidity[c, start:start + n_open] = 0.5 * self.chain.humidity[c, start:start + n_open] + 35.0
        self._settle(c, start, np.concatenate([rise, closing, rec]), "door_left_open")

    def compressor_fault(self, c: int) -> None:
        rng, cad = self.rng, self.cad
        cls = self.world.compartments[c].product_class
        n_fault = max(1, round(rng.uniform(60, 360) * 60 / cad))
        n_rec = math.ceil(3600 / cad)
        start = self._place([c], n_fault + n_rec)
        if start is None:
            return
        plateau = rng.uniform(9, 14) if cls == "chilled" else rng.uniform(-10, -4)
        base = self.chain.temperature[c, start]
        rise = base + (plateau - base) * (1 - np.exp(-np.arange(1, n_fault + 1) * cad / 2700.0))
        after = self.chain.temperature[c, min(start + n_fault + n_rec, self.n_steps - 1)]
        rec = after + (rise[-1] - after) * np.exp(-np.arange(1, n_rec + 1) * cad / 1200.0)
        self._settle(c, start, np.concatenate([rise, rec]), "compressor_fault")

    def door_spike(self, c: int) -> None:
        rng = self.rng
        hi = _upper(self.world.compartments[c].product_class)
        k = int(rng.integers(1, self.k_spike + 1))
        start = self._place([c], k + 2)
        if start is None:
            return
        spike = hi + rng.uniform(0.5, 3.0, k)
        base = self.chain.temperature[c, min(start + k + 2, self.n_steps - 1)]
        rec = np.array([hi - 0.8, 0.5 * (hi - 0.8) + 0.5 * base])
        self.chain.temperature[c, start:start + k + 2] = np.concatenate([spike, rec])  # _place kept it inside
        self.chain.door_open[c, start:start + k] = True
        self._record(self.chain.door_spikes, c, start, start + k - 1, None, float(spike.max()))


def plan_cold_chain(world: World, cfg: SimulationConfig) -> ColdChain:
    """Every reading of every compartment, with excursions and door spikes injected."""
    planner = _Planner(world, cfg)
    rng = planner.rng
    for locker in world.lockers:
        for _ in range(int(rng.poisson(cfg.power_cuts_per_locker_week * cfg.weeks))):
            planner.power_cut(locker.index)
    cold = [c.index for c in world.compartments if TEMPERATURE_RANGES[c.product_class][1] is not None]
    for c in cold:
        for _ in range(int(rng.poisson(cfg.excursions_per_compartment_week * cfg.weeks))):
            if rng.random() < 0.2:
                planner.compressor_fault(c)
            else:
                planner.door_left_open(c)
    for c in cold:
        for _ in range(int(rng.poisson(cfg.door_spikes_per_compartment_week * cfg.weeks))):
            planner.door_spike(c)
    chain = planner.chain
    chain.temperature = np.round(chain.temperature, 2)
    chain.humidity = np.round(chain.humidity, 1)
    chain.excursions.sort(key=lambda e: (e["start_ms"], e["compartment_id"]))
    chain.door_spikes.sort(key=lambda e: (e["start_ms"], e["compartment_id"]))
    return chain
