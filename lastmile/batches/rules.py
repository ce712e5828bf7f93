"""The batch-quality rule: what counts as a bad signal, and when a batch's share of them is alarming.

Pure functions over counts, so the stream worker, the warehouse evaluation of ``lastmile run``
and the tests apply exactly one definition. The numbers live in ``batch_quality.yml`` at the
repository root (:func:`load_rules`).

Why a beta-binomial test rather than "more than k bad reviews": batches are small (a SKU's
day of deliveries is a few dozen orders, of which a third leave feedback), and two unlucky
orders of a six-order batch are a 33 % bad share. Under "nothing is wrong" a batch's bad
count among its ``n`` orders with feedback follows a beta-binomial around the SKU's baseline
rate: binomial noise plus the ordinary spread between batches (``dispersion``). The batch
alerts when the tail probability of its count is at most ``alpha`` and it has at least
``min_bad`` bad orders: two bad orders of a tiny batch are never enough, a real bad batch
(most of its feedback bad) crosses after a handful.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent.parent / "batch_quality.yml"


class BatchRulesError(ValueError):
    """The batch-quality rules file cannot be used (the message names the file and the key)."""


@dataclass(frozen=True)
class BatchRules:
    """The rule's settings; the defaults are those documented in ``batch_quality.yml``."""

    bad_stars: int = 2
    quality_tags: frozenset[str] = frozenset({"not_fresh", "overripe", "wilted", "spoiled", "bad_smell", "sour",
                                              "poor_quality", "damaged"})
    service_tags: frozenset[str] = frozenset({"late", "not_cold", "thawed", "missing_item"})
    claim_reasons: frozenset[str] = frozenset({"quality", "damaged"})
    tag_categories: tuple[tuple[str, frozenset[str]], ...] = (
        ("bad_smell", frozenset({"meat", "seafood"})), ("overripe", frozenset({"fruit"})),
        ("sour", frozenset({"dairy", "tofu"})), ("wilted", frozenset({"vegetables"})))
    min_bad: int = 3
    alpha: float = 0.001
    dispersion: float = 40.0
    baseline_weight: float = 30.0
    prior_rate: float = 0.08
    prior_weight: float = 1000.0
    blame_prior: float = 2.0
    own_alpha: float = 0.05
    sample_texts: int = 3
    memory_days: float = 21.0

    def as_dbt_vars(self) -> dict[str, Any]:
        """The signal definition as dbt reads it (var ``batch_quality``): fct_batch_quality and
        supplier_scorecard count bad reviews and claims exactly as the alerts do."""
        return {"bad_stars": self.bad_stars, "quality_tags": sorted(self.quality_tags),
                "service_tags": sorted(self.service_tags), "claim_reasons": sorted(self.claim_reasons)}

    def categories(self, reasons: tuple[str, ...]) -> frozenset[str]:
        """The product categories a signal's tags point at (empty: any line of the order)."""
        found: set[str] = set()
        for tag, categories in self.tag_categories:
            if tag in reasons:
                found |= categories
        return frozenset(found)


@dataclass(frozen=True)
class Signal:
    """What one review or claim says about the batches of its order."""

    bad: bool
    reasons: tuple[str, ...] = ()  # quality tags, ``stars<=2`` or ``claim:<reason>``


def review_signal(stars: int | None, tags: Any, rules: BatchRules) -> Signal:
    """A review is bad for its batches when it carries a quality tag, or has at most
    ``bad_stars`` stars and is not explained by service tags alone (late, not cold, ...)."""
    tags = [str(t) for t in (tags or ())]
    quality = tuple(sorted({t for t in tags if t in rules.quality_tags}))
    if quality:
        return Signal(True, quality)
    if stars is not None and stars <= rules.bad_stars and not any(t in rules.service_tags for t in tags):
        return Signal(True, (f"stars<={rules.bad_stars}",))
    return Signal(False)


def claim_signal(reason: str | None, rules: BatchRules) -> Signal:
    """A claim is bad for its order's batches when its reason is about the goods (quality, damage)."""
    if reason in rules.claim_reasons:
        return Signal(True, (f"claim:{reason}",))
    return Signal(False)


def baseline_rate(sku_bad: float, sku_feedback: float, all_bad: float, all_feedback: float, rules: BatchRules) -> float:
    """The SKU's expected bad share: its own history shrunk towards the share over all SKUs
    (by ``baseline_weight`` orders), which itself starts from ``prior_rate`` (worth
    ``prior_weight`` orders: the first days, when bad batches not alerted yet are much of
    what was seen, cannot talk the baseline up)."""
    overall = (all_bad + rules.prior_weight * rules.prior_rate) / (all_feedback + rules.prior_weight)
    weight = rules.baseline_weight
    rate = (sku_bad + weight * overall) / (sku_feedback + weight)
    return min(max(rate, 1e-4), 1 - 1e-4)


@dataclass(frozen=True)
class Verdict:
    """The test's outcome for one batch."""

    fired: bool
    p_value: float
    baseline: float
    rate_lower_bound: float  # Wilson 95 % lower bound of the batch's bad share
    bad: int
    feedback: int
    reasons: list[str] = field(default_factory=list)


def wilson_lower_bound(bad: int, n: int, z: float = 1.959964) -> float:
    """Wilson score interval's lower bound of a share (reported beside the test: a rate with its doubt)."""
    if n <= 0:
        return 0.0
    p = bad / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def tail_probability(bad: int, feedback: int, baseline: float, rules: BatchRules) -> float:
    """P(at least ``bad`` bad orders among ``feedback``) for a batch no worse than its SKU's baseline."""
    if bad <= 0:
        return 1.0
    a = rules.dispersion * baseline
    b = rules.dispersion * (1 - baseline)
    return float(stats.betabinom.sf(bad - 1, feedback, a, b))


def judge(bad: int, feedback: int, baseline: float, rules: BatchRules) -> Verdict:
    """Whether a batch with ``bad`` bad orders among ``feedback`` orders with feedback alerts."""
    if bad < rules.min_bad:  # cheap and common: no tail probability needed
        return Verdict(False, 1.0, baseline, wilson_lower_bound(bad, feedback), bad, feedback)
    p = tail_probability(bad, feedback, baseline, rules)
    return Verdict(p <= rules.alpha, p, baseline, wilson_lower_bound(bad, feedback), bad, feedback)


def _strings(path: Path, section: str, key: str, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BatchRulesError(f"{path}: {section}.{key} must be a list of words, got {value!r}")
    return frozenset(value)


def _number(path: Path, section: str, key: str, value: Any, low: float, high: float | None = None,
            whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise BatchRulesError(f"{path}: {section}.{key} must be a {'whole ' if whole else ''}number, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = f" and {high}" if high is not None else ""
        raise BatchRulesError(f"{path}: {section}.{key} must be {'between ' + str(low) + upper if upper else '>= ' + str(low)}, got {value!r}")
    return value


_KEYS = {
    "signals": ("bad_stars", "quality_tags", "service_tags", "claim_reasons", "tag_categories"),
    "test": ("min_bad", "alpha", "dispersion", "baseline_weight", "prior_rate", "prior_weight", "blame_prior", "own_alpha"),
    "alert": ("sample_texts", "memory_days"),
}


def load_rules(path: Path | None = None) -> BatchRules:
    """Read ``batch_quality.yml`` (default: the repository root's). A missing file or key keeps
    the default; an unknown key or a bad value is an error naming it, so a typo cannot
    silently switch the alerts off."""
    path = Path(path) if path else DEFAULT_RULES_FILE
    if not path.exists():
        return BatchRules()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BatchRulesError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise BatchRulesError(f"{path}: expected a mapping with {sorted(_KEYS)}")
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in _KEYS:
            raise BatchRulesError(f"{path}: unknown section {section!r}; expected one of {sorted(_KEYS)}")
        if not isinstance(body, dict) or set(body) - set(_KEYS[section]):
            raise BatchRulesError(f"{path}: {section} takes only {list(_KEYS[section])}")
        for key, value in body.items():
            if key.endswith(("_tags", "_reasons")):
                values[key] = _strings(path, section, key, value)
            elif key == "tag_categories":
                if not isinstance(value, dict):
                    raise BatchRulesError(f"{path}: {section}.{key} must map tags to lists of categories, got {value!r}")
                values[key] = tuple(sorted((str(tag), _strings(path, section, f"{key}.{tag}", cats))
                                           for tag, cats in value.items()))
            elif key in ("bad_stars",):
                values[key] = int(_number(path, section, key, value, 1, 5, whole=True))
            elif key in ("min_bad", "sample_texts"):
                values[key] = int(_number(path, section, key, value, 0, whole=True))
            elif key in ("alpha", "prior_rate", "own_alpha"):
                values[key] = float(_number(path, section, key, value, 1e-12, 0.5))
            else:
                values[key] = float(_number(path, section, key, value, 1e-6))
    return BatchRules(**values)
