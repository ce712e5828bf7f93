"""Consent and contact rules, applied to every send: ``decide(send) -> Allowed | Refused(reason)``.

Every way lastmile reaches a person (an audience export, a campaign, a stream trigger) asks
:meth:`ContactDesk.decide` first. The rules, in the order they are checked, and the reason a
refused send is kept with in ``contact_refusals``:

``forgotten``
    The person asked to be forgotten (``lastmile forget``): never contacted again, whatever
    any other table still says.
``no_consent``
    The current consent for every purpose of the send on its channel is not a grant. Current
    consent is the latest ``consent`` event (by ``occurred_at``) of the person for that purpose
    on that channel or on ``all``; a withdrawal and a grant at the same instant: the withdrawal
    wins. No event at all is no consent. Service messages (purpose ``service``: compensation
    for a claim, a pickup notice) need none: they are part of the order, not marketing.
``quiet_hours``
    The send falls in the quiet hours of the business time zone. Service messages are not
    held back: a compensation or a pickup notice answers something the person is waiting for.
``spending_health``
    The spending-health model flags the person at risk, they declared no dietary need (the
    medical exemption, ``ref_dietary_declarations``), and they already had the day's
    contacts allowed to at-risk customers. Whether the cap binds is the recommender's own
    :meth:`~lastmile.models.policy.SpendingPolicy.capped`.
``capped``
    The person already had ``per_day`` contacts this business day or ``per_week`` this
    business week, counted in ``contact_sends`` across all audiences and triggers.

Service messages (purpose ``service``) are refused only for ``forgotten``: they need no
consent, and neither quiet hours, the spending-health cap nor the frequency caps apply (they
are kept in ``contact_sends`` but not counted by the caps).

The stream's triggers go through the same desk (:meth:`ContactDesk.decide_action`), with the
purposes of :data:`TRIGGER_PURPOSES`: the cold-chain compensation is a service message (the
person claimed; it needs no consent), the welcome is marketing, the replenishment nudge is
marketing built on purchase history (marketing and personalised_recommendation).

Allowed sends are kept in ``contact_sends`` (that table is what the caps count). Deciding
is idempotent by ``send_id``: a send id decided before gets its first answer back and
writes nothing, so a retried export or a replayed trigger neither double-counts nor flips.
One process decides at a time per warehouse (a lock serialises this desk's decisions).

The rules live in one file, ``contact_rules.yml`` at the repository root (see there for the
format); a missing key or file keeps the defaults of :class:`ContactRules`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from lastmile.config import Settings
from lastmile.config import settings as current_settings
from lastmile.identity.forget import _digest as forget_log_digest
from lastmile.models.policy import SpendingPolicy
from lastmile.warehouse import Warehouse

#: Purposes a consent event can grant (schemas/consent.json), plus ``service``.
CONSENT_PURPOSES = ("marketing", "personalised_recommendation", "health")
SERVICE = "service"
CHANNELS = ("mini_program_push", "sms", "wecom_leader", "locker_screen")
#: Why a send was refused, in the order the rules are checked.
REASONS = ("forgotten", "no_consent", "quiet_hours", "spending_health", "capped")

#: Which purposes each stream trigger's message serves (so which consent it needs).
TRIGGER_PURPOSES: dict[str, tuple[str, ...]] = {
    "compensate_cold_chain": (SERVICE,),
    "welcome_neighbour": ("marketing",),
    "replenishment_nudge": ("marketing", "personalised_recommendation"),
}
#: Channel the triggers' messages go out on (marketing automation pushes to the mini-program).
TRIGGER_CHANNEL = "mini_program_push"

DEFAULT_RULES_FILE = Path(__file__).resolve().parent.parent.parent / "contact_rules.yml"

DDL = (
    """
CREATE TABLE IF NOT EXISTS contact_sends (
    send_id String COMMENT 'Id the sender gave the send; deciding twice on one id writes nothing.',
    oneid String, channel LowCardinality(String), purposes Array(LowCardinality(String)),
    origin LowCardinality(String) COMMENT 'Audience or trigger that asked for the send.',
    at DateTime64(3, 'UTC') COMMENT 'When the send goes out.',
    counts_to_cap Bool COMMENT 'false for service messages: the frequency caps neither count nor refuse them.',
    decided_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY send_id
COMMENT 'Sends the contact rules allowed: what the frequency caps count.'
""",
    """
CREATE TABLE IF NOT EXISTS contact_refusals (
    send_id String, oneid String, channel LowCardinality(String), purposes Array(LowCardinality(String)),
    origin LowCardinality(String), at DateTime64(3, 'UTC'),
    reason LowCardinality(String) COMMENT 'forgotten, no_consent, quiet_hours, spending_health or capped.',
    detail String COMMENT 'What exactly refused it (which purpose, which cap), for marketing to read.',
    decided_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree ORDER BY send_id
COMMENT 'Sends the contact rules refused, with the reason: why a person was not reached.'
""",
)


class ContactRulesError(ValueError):
    """The contact rules file cannot be used (the message names the file and the key)."""


@dataclass(frozen=True)
class ContactRules:
    """The contact rules; the defaults are those documented in ``contact_rules.yml``."""

    per_day: int = 2
    per_week: int = 6
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    spending_health_daily_cap: int = 1
    #: Whether a leader's export may carry OneIDs in the clear (see lastmile.audiences.exports).
    clear_identifiers: bool = False

    def quiet(self, local: time) -> bool:
        """Whether a wall-clock time is in the quiet hours (which may span midnight)."""
        if self.quiet_start == self.quiet_end:
            return False
        if self.quiet_start < self.quiet_end:
            return self.quiet_start <= local < self.quiet_end
        return local >= self.quiet_start or local < self.quiet_end


def _count(path: Path, data: dict[str, Any], section: str, key: str, default: int) -> int:
    value = (data.get(section) or {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ContactRulesError(f"{path}: {section}.{key} must be a whole number >= 0, got {value!r}")
    return value


def _clock(path: Path, data: dict[str, Any], key: str, default: time) -> time:
    value = (data.get("quiet_hours") or {}).get(key)
    if value is None:
        return default
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ContactRulesError(f"{path}: quiet_hours.{key} must be a time like \"21:00\", got {value!r}") from None


def load_rules(path: Path | None = None) -> ContactRules:
    """Read the contact rules file (default: ``contact_rules.yml`` at the repository root).

    A missing file or key keeps the default; an unknown key or a bad value is an error that
    names it, so a typo cannot silently switch a rule off.
    """
    path = Path(path) if path else DEFAULT_RULES_FILE
    if not path.exists():
        return ContactRules()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ContactRulesError(f"{path}: not valid YAML: {exc}") from None
    known = {"frequency_cap": {"per_day", "per_week"}, "quiet_hours": {"start", "end"}, "spending_health": {"daily_cap"},
             "exports": {"clear_identifiers"}}
    if not isinstance(data, dict):
        raise ContactRulesError(f"{path}: expected a mapping with {sorted(known)}")
    for section, body in data.items():
        if section not in known:
            raise ContactRulesError(f"{path}: unknown section {section!r}; expected one of {sorted(known)}")
        if not isinstance(body, dict) or set(body) - known[section]:
            raise ContactRulesError(f"{path}: {section} takes only {sorted(known[section])}")
    d = ContactRules()
    clear = (data.get("exports") or {}).get("clear_identifiers", d.clear_identifiers)
    if not isinstance(clear, bool):
        raise ContactRulesError(f"{path}: exports.clear_identifiers must be true or false, got {clear!r}")
    return ContactRules(
        per_day=_count(path, data, "frequency_cap", "per_day", d.per_day),
        per_week=_count(path, data, "frequency_cap", "per_week", d.per_week),
        quiet_start=_clock(path, data, "start", d.quiet_start),
        quiet_end=_clock(path, data, "end", d.quiet_end),
        spending_health_daily_cap=_count(path, data, "spending_health", "daily_cap", d.spending_health_daily_cap),
        clear_identifiers=clear,
    )


@dataclass(frozen=True)
class Send:
    """One contact someone wants to make.

    ``purposes``: what the message is for; every one needs a current grant on ``channel``
    (a health-tea offer is ``("marketing", "health")``), except ``service``. ``at_risk``: the
    spending-health model's flag for the person (the caller scores it, as the recommender
    does); ``dietary_need_declared`` None reads the declaration table.
    """

    send_id: str
    oneid: str
    channel: str
    purposes: tuple[str, ...]
    at: datetime
    origin: str = ""
    at_risk: bool = False
    dietary_need_declared: bool | None = None

    def __post_init__(self) -> None:
        if not self.send_id:
            raise ValueError("a send needs a send_id (deciding is idempotent by it)")
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}; expected one of {CHANNELS}")
        unknown = set(self.purposes) - {*CONSENT_PURPOSES, SERVICE}
        if not self.purposes or unknown:
            raise ValueError(f"purposes must be some of {(*CONSENT_PURPOSES, SERVICE)}, got {self.purposes!r}")
        if self.at.tzinfo is None:
            raise ValueError(f"send time {self.at!r} has no UTC offset")

    @property
    def service(self) -> bool:
        return set(self.purposes) == {SERVICE}


@dataclass(frozen=True)
class Allowed:
    send_id: str
    allowed: bool = field(default=True, init=False)


@dataclass(frozen=True)
class Refused:
    send_id: str
    reason: str
    detail: str = ""
    allowed: bool = field(default=False, init=False)


Decision = Allowed | Refused


class ContactDesk:
    """Decides sends against the warehouse's consent, suppression list and send counts."""

    def __init__(self, warehouse: Warehouse, rules: ContactRules | None = None, cfg: Settings | None = None) -> None:
        self.warehouse = warehouse
        self.rules = rules or load_rules()
        self.cfg = cfg or current_settings()
        self.policy = SpendingPolicy(daily_cap=self.rules.spending_health_daily_cap)
        self._lock = threading.Lock()
        for ddl in DDL:
            warehouse.command(ddl)

    def decide(self, send: Send) -> Decision:
        """Allowed or Refused(reason); the first decision on a send id is the only one."""
        with self._lock:
            earlier = self._earlier(send.send_id)
            if earlier is not None:
                return earlier
            decision = self._judge(send)
            at = send.at.astimezone(timezone.utc).replace(tzinfo=None)
            if isinstance(decision, Refused):
                self.warehouse.insert_rows(
                    "contact_refusals",
                    [(send.send_id, send.oneid, send.channel, list(send.purposes), send.origin, at, decision.reason, decision.detail)],
                    ["send_id", "oneid", "channel", "purposes", "origin", "at", "reason", "detail"])
            else:
                self.warehouse.insert_rows(
                    "contact_sends",
                    [(send.send_id, send.oneid, send.channel, list(send.purposes), send.origin, at, not send.service)],
                    ["send_id", "oneid", "channel", "purposes", "origin", "at", "counts_to_cap"])
            return decision

    def _earlier(self, send_id: str) -> Decision | None:
        if self.warehouse.rows("SELECT 1 FROM contact_sends WHERE send_id = {s:String} LIMIT 1", {"s": send_id}):
            return Allowed(send_id)
        rows = self.warehouse.rows(
            "SELECT reason, detail FROM contact_refusals FINAL WHERE send_id = {s:String} LIMIT 1", {"s": send_id})
        return Refused(send_id, rows[0][0], rows[0][1]) if rows else None

    def _judge(self, send: Send) -> Decision:
        if self._forgotten(send.oneid):
            return Refused(send.send_id, "forgotten", "the person asked to be forgotten")
        if not send.service:
            consent = self.current_consent(send.oneid, send.channel)
            missing = [p for p in send.purposes if p != SERVICE and not consent.get(p, False)]
            if missing:
                state = ", ".join(f"{p}: {'withdrawn' if p in consent else 'never granted'}" for p in missing)
                return Refused(send.send_id, "no_consent", f"on {send.channel}: {state}")
        if send.service:
            return Allowed(send.send_id)
        local = send.at.astimezone(self.cfg.business_zone)
        if self.rules.quiet(local.time().replace(tzinfo=None)):
            return Refused(send.send_id, "quiet_hours",
                           f"{local:%H:%M} {self.cfg.business_tz} is within {self.rules.quiet_start:%H:%M}-{self.rules.quiet_end:%H:%M}")
        day_start = datetime.combine(local.date(), time(0), tzinfo=self.cfg.business_zone)
        week_start = day_start - timedelta(days=local.weekday())
        today = self._sent(send.oneid, day_start, day_start + timedelta(days=1))
        exempt = self._dietary_need(send)
        if self.policy.capped({"at_risk": send.at_risk}, exempt) and today >= self.policy.daily_cap:
            return Refused(send.send_id, "spending_health",
                           f"at risk of overspending: {today} of {self.policy.daily_cap} contacts today")
        if today >= self.rules.per_day:
            return Refused(send.send_id, "capped", f"{today} of {self.rules.per_day} contacts today")
        week = self._sent(send.oneid, week_start, week_start + timedelta(days=7))
        if week >= self.rules.per_week:
            return Refused(send.send_id, "capped", f"{week} of {self.rules.per_week} contacts this week")
        return Allowed(send.send_id)

    def current_consent(self, oneid: str, channel: str) -> dict[str, bool]:
        """Per purpose, whether the latest consent event on ``channel`` or ``all`` is a grant.

        A purpose with no event is absent (never granted). Read at each decision, so a
        withdrawal ingested a moment ago (batch or stream) refuses the next send.
        """
        if "raw_consent" not in self.warehouse.tables() or "event_oneid" not in self.warehouse.tables():
            return {}
        rows = self.warehouse.rows(
            """
            SELECT c.purpose, argMax(c.granted, (c.occurred_at, NOT c.granted))
            FROM (SELECT event_id, purpose, channel, granted, occurred_at FROM raw_consent FINAL
                  WHERE channel IN ({channel:String}, 'all')) AS c
            INNER JOIN (SELECT event_id FROM event_oneid WHERE event_type = 'consent' AND oneid = {oneid:String}) AS e
                ON e.event_id = c.event_id
            GROUP BY c.purpose
            """, {"channel": channel, "oneid": oneid})
        return {str(purpose): bool(granted) for purpose, granted in rows}

    def decide_action(self, action: Any, at: datetime | None = None) -> Decision:
        """Decide a stream trigger's action (:class:`~lastmile.streaming.triggers.Action`).

        The send id is the action's ``action_id`` (deterministic), so a batch handled again
        after a crash gets the same answers. The person is the action's OneID (replenishment)
        or its identifier token's; a person lastmile has no OneID for yet (a welcome, before
        the resolver ran) is decided under ``token:<token>``: no consent is known for them.
        """
        purposes = TRIGGER_PURPOSES.get(action.action)
        if purposes is None:
            raise ValueError(f"no purposes declared for trigger {action.action!r}; add it to TRIGGER_PURPOSES")
        oneid = (action.details or {}).get("oneid") or ""
        if not oneid and action.person:
            oneid = self.oneid_of_token(action.person) or f"token:{action.person}"
        at = at or datetime.now(timezone.utc)
        return self.decide(Send(action.action_id, oneid or "unknown", TRIGGER_CHANNEL, purposes, at, action.action))

    def oneid_of_token(self, token: str) -> str:
        """The OneID an identifier token belongs to now ("" when unknown or blocked)."""
        if "identity_nodes" not in self.warehouse.tables():
            return ""
        rows = self.warehouse.rows("SELECT oneid FROM identity_nodes FINAL WHERE token = {t:String}", {"t": token})
        return str(rows[0][0]) if rows else ""

    def _forgotten(self, oneid: str) -> bool:
        """A forget request for this OneID (``forget_log``), or any of its identifiers suppressed."""
        tables = set(self.warehouse.tables())
        if oneid.startswith("token:"):
            return "identity_forgotten" in tables and bool(self.warehouse.rows(
                "SELECT 1 FROM identity_forgotten WHERE token = {t:String} LIMIT 1", {"t": oneid[len("token:"):]}))
        if "forget_log" in tables and self.warehouse.rows(
                "SELECT 1 FROM forget_log WHERE oneid = {d:String} LIMIT 1", {"d": forget_log_digest(oneid)}):
            return True
        if {"identity_forgotten", "identity_nodes"} <= tables:
            return bool(self.warehouse.rows(
                "SELECT 1 FROM identity_nodes FINAL WHERE oneid = {o:String} "
                "AND token IN (SELECT token FROM identity_forgotten) LIMIT 1", {"o": oneid}))
        return False

    def _dietary_need(self, send: Send) -> bool:
        if send.dietary_need_declared is not None:
            return send.dietary_need_declared
        if "ref_dietary_declarations" not in self.warehouse.tables():
            return False
        rows = self.warehouse.rows(
            "SELECT dietary_need FROM ref_dietary_declarations FINAL WHERE oneid = {o:String}", {"o": send.oneid})
        return bool(rows and rows[0][0])

    def _sent(self, oneid: str, start: datetime, end: datetime) -> int:
        rows = self.warehouse.rows(
            "SELECT count() FROM contact_sends FINAL WHERE oneid = {o:String} AND counts_to_cap "
            "AND at >= {a:DateTime64(3, 'UTC')} AND at < {b:DateTime64(3, 'UTC')}",
            {"o": oneid, "a": start.astimezone(timezone.utc).replace(tzinfo=None),
             "b": end.astimezone(timezone.utc).replace(tzinfo=None)})
        return int(rows[0][0])


def consented_oneids_sql(channel: str, purposes: tuple[str, ...]) -> str:
    """SQL selecting the OneIDs whose current consent grants every purpose on ``channel``.

    For exports and audience destinations that filter a whole list at once instead of
    deciding send by send: ``WHERE oneid IN (<this>)``. Same semantics as
    :meth:`ContactDesk.current_consent` (latest event per purpose on the channel or ``all``;
    a withdrawal wins a tie). Forgotten people drop out: forget removes their identifiers,
    so no consent event resolves to them any more. Needs ``raw_consent`` and
    ``event_oneid`` (both exist after the first ingest).
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
    wanted = [p for p in purposes if p != SERVICE]
    if set(wanted) - set(CONSENT_PURPOSES) or not wanted:
        raise ValueError(f"purposes must be some of {CONSENT_PURPOSES}, got {purposes!r}")
    listed = ", ".join(f"'{p}'" for p in wanted)
    return f"""
SELECT oneid FROM (
    SELECT e.oneid AS oneid, c.purpose AS purpose, argMax(c.granted, (c.occurred_at, NOT c.granted)) AS granted
    FROM (SELECT event_id, purpose, granted, occurred_at FROM raw_consent FINAL
          WHERE channel IN ('{channel}', 'all') AND purpose IN ({listed})) AS c
    INNER JOIN (SELECT event_id, oneid FROM event_oneid WHERE event_type = 'consent') AS e ON e.event_id = c.event_id
    GROUP BY e.oneid, c.purpose
)
GROUP BY oneid
HAVING countIf(granted) = {len(wanted)}
"""


def decide(send: Send, warehouse: Warehouse | None = None, rules: ContactRules | None = None) -> Decision:
    """Decide one send with the configured rules (see :class:`ContactDesk` for many)."""
    from lastmile.warehouse import connect

    return ContactDesk(warehouse or connect(), rules).decide(send)
