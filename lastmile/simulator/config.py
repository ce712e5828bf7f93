"""What to simulate: one frozen dataclass with documented defaults, and the sizing rules.

Everything the simulator decides is a function of a :class:`SimulationConfig` (and nothing
else: no wall clock, no environment), so the config *is* the data set's identity. Sizing is
derived from ``orders`` so that one knob scales the whole world coherently: more orders means
more residents, more communities and therefore more lockers reporting telemetry.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np

from lastmile.models.spending_holdout import DEFAULT_HOLDOUT_SHARE
from lastmile.stocking.policies import DEFAULT_MARGIN, DEFAULT_MIN_FACING

#: Allowed temperature range per product class, °C (``None``: unbounded on that side).
#: Ambient compartments have no cold-chain range, so they never have excursions.
TEMPERATURE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "chilled": (0.0, 4.0),
    "frozen": (None, -18.0),
    "ambient": (None, None),
}

#: All event times carry this offset: the business runs on China Standard Time.
UTC_OFFSET = "+08:00"

#: Event types, in the order files are written (telemetry first: it is the bulk).
EVENT_TYPES = ("locker_telemetry", "order", "pickup", "return", "review", "identify", "inventory", "consent")

#: Channels a resident can agree to be contacted on (schemas/consent.json, without ``all``).
CONSENT_CHANNELS = ("mini_program_push", "sms", "wecom_leader", "locker_screen")

#: Share of each persona granting marketing per channel. The group leader's WeCom is the most
#: trusted channel (a neighbour they know), SMS the least, except for seniors, who read SMS.
DEFAULT_CONSENT_MARKETING: dict[str, dict[str, float]] = {
    "young_night": {"mini_program_push": 0.62, "sms": 0.22, "wecom_leader": 0.50, "locker_screen": 0.55},
    "senior_health": {"mini_program_push": 0.45, "sms": 0.55, "wecom_leader": 0.78, "locker_screen": 0.50},
    "family": {"mini_program_push": 0.66, "sms": 0.35, "wecom_leader": 0.68, "locker_screen": 0.60},
    "impulse": {"mini_program_push": 0.75, "sms": 0.30, "wecom_leader": 0.58, "locker_screen": 0.65},
}
#: Share of the channels a resident granted marketing on where they also grant personalised
#: recommendations (built on their purchase history).
DEFAULT_CONSENT_PERSONALISED: dict[str, float] = {"young_night": 0.70, "senior_health": 0.50, "family": 0.65, "impulse": 0.80}
#: Share of each persona consenting to the processing of health-related data (PIPL: sensitive,
#: a separate consent): diet-conscious seniors most.
DEFAULT_CONSENT_HEALTH: dict[str, float] = {"young_night": 0.08, "senior_health": 0.30, "family": 0.12, "impulse": 0.06}

#: The residents the spending-health cap is for: the over-consumer persona, which is what the
#: spending-health model learns to flag (its training label, lastmile.models.spending).
AT_RISK_PERSONA = "impulse"


@dataclass(frozen=True)
class SimulationConfig:
    """A simulated world and its bad-data injection. Same config => byte-identical output.

    The window starts on ``start`` (a Monday) at 00:00 +08:00 and lasts ``weeks`` weeks.
    Keep the window (plus about ten days of pickups and reviews after it) in the past: the
    contract parser rejects events from the future, and the default window ends 2026-11-02.
    """

    seed: int = 42
    #: Orders DEMANDED in the window (what shoppers try to buy); everything else is sized from
    #: it. With ``supply`` on, fewer are placed: a line beyond the front warehouse's stock is
    #: lost, and an order with no line left is never placed (truth/demand_hourly.jsonl keeps
    #: the demand, events/order.jsonl has the placed orders).
    orders: int = 20_000
    weeks: int = 8
    start: date = date(2026, 9, 7)
    #: One community (小区) per this many orders. With 2 lockers of 4-5 compartments each and
    #: a reading every 5 minutes, 20k orders => ~2 communities => ~290k telemetry readings.
    orders_per_community: int = 10_000
    #: Average orders per ordering resident per week; sets the number of residents.
    orders_per_person_week: float = 0.9
    lockers_per_community: int = 2
    #: Every compartment reports once per this many seconds.
    telemetry_every_s: int = 300
    #: A temperature excursion counts only if out of range for at least this long.
    excursion_min_minutes: int = 15
    #: Real excursions (door left open, compressor fault) per cold compartment per week.
    excursions_per_compartment_week: float = 0.4
    #: Power cuts per locker per week (they hit every compartment of the locker).
    power_cuts_per_locker_week: float = 0.08
    #: Brief door-open spikes (out of range for less than the minimum) per cold compartment per week.
    door_spikes_per_compartment_week: float = 1.5
    #: Share of each file's valid events that get a malformed twin line.
    malformed_share: float = 0.005
    #: Share of each file's events re-sent verbatim (same event_id) a little later.
    duplicate_share: float = 0.005
    #: Share of each file's events written far out of order (arriving late).
    late_share: float = 0.01
    #: Share of identifier slots in orders/pickups/returns/reviews filled with junk ("0", "null", ...).
    junk_identifier_share: float = 0.004
    #: Share of identifier occurrences typed in a messy but normalisable form ("138 0013 8000").
    messy_identifier_share: float = 0.1
    #: Share of production batches (an order line's ``batch_id``) of degraded quality: their
    #: buyers mostly get spoiled or poor goods, so reviews of those orders turn to 1-2 stars with
    #: quality tags (not_fresh, overripe, ...) and quality claims become frequent. Listed in
    #: truth/bad_batches.jsonl with the time of their first bad signal (lastmile.batches).
    bad_batch_share: float = 0.05
    #: Supply side: each community front warehouse (fw-<community_id>) stocks every SKU by
    #: the default policy (:func:`lastmile.stocking.policies.last_week_plus_margin`, ordered
    #: at 22:00 for a 05:00 receipt), sells first-expiring-first-out, writes off what expires,
    #: and loses the demand beyond stock; writes events/inventory.jsonl. False: unconstrained
    #: sales and no inventory events.
    supply: bool = True
    #: The default policy's margin over last week's same-day sales (0.55 = 55 % more).
    stock_margin: float = DEFAULT_MARGIN
    #: Units the default policy keeps of every listed SKU however little it sold.
    stock_min_facing: int = DEFAULT_MIN_FACING
    #: Share of received units damaged in handling (written off, reason damaged, at receipt).
    damaged_share: float = 0.02
    #: Cold-room faults per front warehouse per week; each writes off part of the chilled stock
    #: (reason temperature).
    cold_room_faults_per_week: float = 0.1
    #: The catalogue beyond the hand-written base items: pack and grade variants (the long
    #: tail), seasonal items (cherries, hairy crabs, mooncakes) and SKUs launched mid-window.
    extended_catalogue: bool = True
    #: Holidays and 调休 workdays (Mid-Autumn, the National Day week) shape demand.
    holidays: bool = True
    #: Rain, rainstorms and a typhoon day (deliveries suspended, stocking up the day before).
    weather: bool = True
    #: The every-other-Wednesday 14:00-17:00 blind box (the slot's orders triple) and weekly
    #: price cuts on some SKUs (cut SKUs are picked more often).
    promotions: bool = True
    #: Consent events (events/consent.jsonl, lastmile.simulator.consent): every resident with an
    #: order chooses on the privacy page (a new user at sign-up, others at the re-consent of the
    #: window's first days); shares of grants per persona below. False: no consent file.
    consent: bool = True
    #: Per persona and channel, the share granting marketing.
    consent_marketing: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_CONSENT_MARKETING.items()}, hash=False)
    #: Per persona, the share of their marketing channels where personalised recommendations are granted too.
    consent_personalised: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONSENT_PERSONALISED), hash=False)
    #: Per persona, the share consenting to health-related processing (channel ``all``).
    consent_health: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CONSENT_HEALTH), hash=False)
    #: Share of marketing and health grants withdrawn later in the window (at least a day after).
    consent_withdrawal_share: float = 0.04
    #: The spending-health cap (lastmile.models.policy): from this day of the window on, the
    #: platform flags the at-risk residents (AT_RISK_PERSONA; the model needs four weeks of
    #: history) and shows those outside the holdout fewer impulse items. None (or a day past
    #: the window's end): no cap.
    spending_cap_from_day: int | None = 28
    #: Share of the impulse units a capped at-risk resident wanted that they no longer buy
    #: (each unit independently); the held-out ones buy as before. Recorded in
    #: truth/suppressed_purchases.jsonl.
    spending_cap_effect: float = 0.38
    #: Share of at-risk residents held out of the cap, by the hash of lastmile's holdout
    #: (lastmile.models.spending_holdout; ``lastmile run`` passes contact_rules.yml's share).
    #: The simulator has no OneIDs, so it hashes the person id; truth/spending_health_arms.jsonl
    #: lists each at-risk resident's arm.
    spending_health_holdout: float = DEFAULT_HOLDOUT_SHARE

    def __post_init__(self) -> None:
        if self.orders < 1:
            raise ValueError("orders must be >= 1")
        if self.weeks < 1:
            raise ValueError("weeks must be >= 1")
        if self.start.weekday() != 0:
            raise ValueError(f"start must be a Monday (weekly rhythms are aligned to it), got {self.start}")
        if self.telemetry_every_s < 10:
            raise ValueError("telemetry_every_s must be >= 10")
        if self.stock_margin < 0 or self.stock_min_facing < 0 or self.cold_room_faults_per_week < 0:
            raise ValueError("stock_margin, stock_min_facing and cold_room_faults_per_week must be >= 0")
        for name in ("malformed_share", "duplicate_share", "late_share", "junk_identifier_share", "messy_identifier_share",
                     "damaged_share", "bad_batch_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"{name} must be within [0, 0.5], got {value}")
        self._check_consent()
        if not 0.0 <= self.spending_cap_effect <= 1.0 or not 0.0 <= self.spending_health_holdout <= 1.0:
            raise ValueError("spending_cap_effect and spending_health_holdout must be shares within [0, 1]")
        if self.spending_cap_from_day is not None and self.spending_cap_from_day < 0:
            raise ValueError("spending_cap_from_day must be a day of the window (>= 0; past its end: no cap) or None")

    def _check_consent(self) -> None:
        """Every persona needs its shares (a missing one would be a KeyError mid-run), each in [0, 1]."""
        from .catalog import PERSONAS

        shares: dict[str, Any] = {"consent_withdrawal_share": self.consent_withdrawal_share}
        for persona in PERSONAS:
            marketing = self.consent_marketing.get(persona)
            if not isinstance(marketing, Mapping) or set(marketing) != set(CONSENT_CHANNELS):
                raise ValueError(f"consent_marketing[{persona!r}] must give a share for each of {CONSENT_CHANNELS}")
            shares.update({f"consent_marketing[{persona!r}][{c!r}]": marketing[c] for c in CONSENT_CHANNELS})
            for name in ("consent_personalised", "consent_health"):
                shares[f"{name}[{persona!r}]"] = getattr(self, name).get(persona)
        for name, value in shares.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a share within [0, 1], got {value!r}")

    # -- derived sizes -------------------------------------------------------------------

    @property
    def n_communities(self) -> int:
        return max(1, round(self.orders / self.orders_per_community))

    @property
    def n_persons(self) -> int:
        return max(40, round(self.orders / (self.weeks * self.orders_per_person_week)))

    @property
    def window_ms(self) -> int:
        return self.weeks * 7 * 86_400_000

    @property
    def telemetry_steps(self) -> int:
        """Readings per compartment over the window."""
        return self.weeks * 7 * 86_400 // self.telemetry_every_s

    def rng(self, stream: str) -> np.random.Generator:
        """An independent generator per concern, so changing one part leaves others unchanged."""
        return np.random.default_rng([self.seed, zlib.crc32(stream.encode())])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"] = self.start.isoformat()
        return data
