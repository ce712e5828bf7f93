"""Claim decisions for orders caught in an excursion: severity, compensation, and why.

"Second-level claims": a standard temperature claim is decided the moment the excursion is
known, before the customer has to complain. Standard means the evidence is the telemetry
itself (an excursion of at least the minimum duration in the order's compartment while the
goods were in it) and the order is not large enough to warrant a person's look. A customer
who already claimed for temperature on that order gets their claim matched and answered,
never a second payout.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from lastmile.coldchain.config import ColdChainConfig, CompensationPolicy

AUTO_APPROVED = "auto_approved"
MATCHED = "matched_customer_claim"
NEEDS_REVIEW = "needs_review"

_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Excursion:
    """What the policy needs to know about an excursion."""

    incident_id: str
    product_class: str
    duration_s: int
    temperature_min: float
    temperature_max: float


@dataclass(frozen=True)
class CustomerClaim:
    event_id: str
    order_id: str
    amount_cny: Decimal


@dataclass(frozen=True)
class Decision:
    order_id: str
    incident_id: str
    decision: str
    compensation_cny: Decimal
    order_total_cny: Decimal
    severity: str
    reason: str
    customer_claim_event_id: str = ""
    customer_claimed_cny: Decimal | None = None


def deviation_c(excursion: Excursion, cfg: ColdChainConfig) -> float:
    """Degrees beyond the allowed range at the worst reading (0 if none is known)."""
    low, high = cfg.ranges.get(excursion.product_class, (None, None))
    above = excursion.temperature_max - high if high is not None else 0.0
    below = low - excursion.temperature_min if low is not None else 0.0
    return round(max(above, below, 0.0), 2)


def peak_c(excursion: Excursion, cfg: ColdChainConfig) -> float:
    """The reading furthest outside the range: the warmest, unless it went too cold."""
    low, high = cfg.ranges.get(excursion.product_class, (None, None))
    if low is not None and (high is None or low - excursion.temperature_min > excursion.temperature_max - high):
        return excursion.temperature_min
    return excursion.temperature_max


def severity(excursion: Excursion, cfg: ColdChainConfig) -> str:
    """minor, major or severe, by how long and how far out of range."""
    p = cfg.compensation
    minutes = excursion.duration_s / 60
    deviation = deviation_c(excursion, cfg)
    if minutes >= p.severe_after_minutes or deviation >= p.severe_deviation_c:
        return "severe"
    if minutes >= p.major_after_minutes or deviation >= p.major_deviation_c:
        return "major"
    return "minor"


def compensation(total_cny: Decimal, level: str, policy: CompensationPolicy) -> Decimal:
    """The standard amount: a share of the order total by severity, with a floor."""
    rate = {"minor": policy.minor_rate, "major": policy.major_rate, "severe": policy.severe_rate}[level]
    amount = (total_cny * Decimal(str(rate))).quantize(_CENT, ROUND_HALF_UP)
    floor = min(Decimal(str(policy.minimum_cny)), total_cny)
    return max(amount, floor).quantize(_CENT)


def _describe(excursion: Excursion, cfg: ColdChainConfig, level: str) -> str:
    low, high = cfg.ranges.get(excursion.product_class, (None, None))
    allowed = (f"{low:g} to {high:g} °C" if low is not None and high is not None
               else f"at most {high:g} °C" if high is not None else f"at least {low:g} °C")
    peak = peak_c(excursion, cfg)
    return (f"the {excursion.product_class} compartment was out of its range ({allowed}) for "
            f"{round(excursion.duration_s / 60)} minutes, reaching {peak:g} °C ({level} excursion {excursion.incident_id})")


def decide(order_id: str, order_total_cny: Decimal, excursion: Excursion, cfg: ColdChainConfig,
           claim: CustomerClaim | None = None) -> Decision:
    """The decision for one affected order."""
    level = severity(excursion, cfg)
    standard = compensation(order_total_cny, level, cfg.compensation)
    what = _describe(excursion, cfg, level)
    base = dict(order_id=order_id, incident_id=excursion.incident_id, order_total_cny=order_total_cny, severity=level)
    if claim is not None:
        paid = min(claim.amount_cny, standard)
        reason = f"Customer's temperature claim {claim.event_id} confirmed by telemetry: {what}."
        if claim.amount_cny > standard:
            reason += (f" Standard compensation {standard} CNY paid; the remaining "
                       f"{claim.amount_cny - standard} CNY claimed is left to a person.")
        else:
            reason += f" The {claim.amount_cny} CNY claimed is within the standard {standard} CNY and is paid."
        return Decision(**base, decision=MATCHED, compensation_cny=paid.quantize(_CENT), reason=reason,
                        customer_claim_event_id=claim.event_id, customer_claimed_cny=claim.amount_cny)
    if order_total_cny > Decimal(str(cfg.compensation.auto_approve_max_cny)):
        return Decision(**base, decision=NEEDS_REVIEW, compensation_cny=standard,
                        reason=(f"Order total {order_total_cny} CNY is above the {cfg.compensation.auto_approve_max_cny:g} CNY "
                                f"limit for automatic claims; proposed {standard} CNY because {what}."))
    return Decision(**base, decision=AUTO_APPROVED, compensation_cny=standard,
                    reason=f"Approved automatically, {standard} CNY, because {what}.")


def worst(decisions: list[Decision]) -> Decision:
    """One decision per order: the one paying most (ties: the earliest incident id)."""
    return sorted(decisions, key=lambda d: (-d.compensation_cny, d.incident_id))[0]
