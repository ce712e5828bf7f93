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
    medical exemption, ``ref_dietary_declarations``), they are not in the cap's holdout
    (``spending_health.holdout``, :func:`~lastmile.models.spending_holdout.in_holdout` of
    their OneID: the customers the cap's effect is measured against), and they already had
    the day's contacts allowed to at-risk customers. Whether the cap binds is the recommender's own
    :meth:`~lastmile.models.policy.SpendingPolicy.capped`.
``capped``
    The person already had ``per_day`` contacts this business day or ``per_week`` this
    business week, counted in ``contact_sends`` across all audiences and journeys.

Service messages (purpose ``service``) are refused only for ``forgotten``: they need no
consent, and neither quiet hours, the spending-health cap nor the frequency caps apply (they
are kept in ``contact_sends`` but not counted by the caps).

Journey sends go through the same desk: a journey pass decides all of its sends at once
(:meth:`ContactDesk.decide_many`), each with the channel and purposes its journey file declares
(the cold-chain compensation is a service message: the person claimed, it needs no consent).

Allowed sends are kept in ``contact_sends`` (that table is what the caps count). Deciding
is idempotent by ``send_id``: a send id decided before gets its first answer back and
writes nothing, so a retried export or a replayed journey pass neither double-counts nor flips.
One process decides at a time per warehouse (a lock serialises this desk's decisions).

The rules live in one file, ``contact_rules.yml`` at the repository root (see there for the
format); a missing key or file keeps the defaults of :class:`ContactRules`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from lastmile.config import Settings
from lastmile.config import settings as current_settings
from lastmile.contracts import contracts
from lastmile.identity.forget import forget_log_digest
from lastmile.models.policy import SpendingPolicy
from lastmile.models.spending_holdout import DEFAULT_HOLDOUT_SHARE, in_holdout
from lastmile.streaming.present import present
from lastmile.warehouse import Warehouse

#: Purposes a consent event can grant (schemas/consent.json), plus ``service``.
CONSENT_PURPOSES = ("marketing", "personalised_recommendation", "health")
SERVICE = "service"
CHANNELS = ("mini_program_push", "sms", "wecom_leader", "locker_screen")
#: Why a send was refused, in the order the rules are checked.
REASONS = ("forgotten", "no_consent", "quiet_hours", "spending_health", "capped")

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
    #: Share of at-risk customers never capped (by OneID hash), to measure the cap against.
    spending_health_holdout: float = DEFAULT_HOLDOUT_SHARE
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
    """Read the contact rules file (default: ``LASTMILE_CONTACT_RULES``, else ``contact_rules.yml``
    at the repository root).

    A missing key keeps the default, and so does a missing default file; a configured file
    that does not exist, an unknown key or a bad value is an error that names it, so a typo
    cannot silently switch a rule off.
    """
    configured = current_settings().contact_rules
    path = Path(path) if path else Path(configured).expanduser() if configured else DEFAULT_RULES_FILE
    if not path.exists():
        if configured and path == Path(configured).expanduser():
            raise ContactRulesError(f"{path}: no such contact rules file (LASTMILE_CONTACT_RULES)")
        return ContactRules()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ContactRulesError(f"{path}: not valid YAML: {exc}") from None
    known = {"frequency_cap": {"per_day", "per_week"}, "quiet_hours": {"start", "end"}, "spending_health": {"daily_cap", "holdout"},
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
    holdout = (data.get("spending_health") or {}).get("holdout", d.spending_health_holdout)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout <= 1:
        raise ContactRulesError(f"{path}: spending_health.holdout must be a share from 0 to 1, got {holdout!r}")
    return ContactRules(
        per_day=_count(path, data, "frequency_cap", "per_day", d.per_day),
        per_week=_count(path, data, "frequency_cap", "per_week", d.per_week),
        quiet_start=_clock(path, data, "start", d.quiet_start),
        quiet_end=_clock(path, data, "end", d.quiet_end),
        spending_health_daily_cap=_count(path, data, "spending_health", "daily_cap", d.spending_health_daily_cap),
        spending_health_holdout=float(holdout),
        clear_identifiers=clear,
    )


@dataclass(frozen=True)
class Send:
    """One contact someone wants to make.

    ``purposes``: what the message is for; every one needs a current grant on ``channel``
    (a health-tea offer is ``("marketing", "health")``), except ``service``. ``at_risk``: the
    spending-health model's flag for the person when the caller scored it (as the recommender
    does); None: the desk reads it (:class:`~lastmile.models.spending_risk.SpendingRisk`, the
    recommender's model over the same features). ``dietary_need_declared`` None reads the
    declaration table.
    """

    send_id: str
    oneid: str
    channel: str
    purposes: tuple[str, ...]
    at: datetime
    origin: str = ""
    at_risk: bool | None = None
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
    """Decides sends against the warehouse's consent, suppression list and send counts.

    Sends are decided in sets (:meth:`decide_many`): whatever the number of sends, one
    statement per kind of fact (earlier decisions, forget requests, consent, counts, dietary
    declarations) and one insert per outcome, so a stream batch of a thousand welcomes costs
    what one does. Sends of one set are decided in order: an earlier allowed send counts
    toward the caps of a later one to the same person.
    """

    def __init__(self, warehouse: Warehouse, rules: ContactRules | None = None, cfg: Settings | None = None,
                 risk: Callable[[Sequence[str]], set[str]] | None = None) -> None:
        from lastmile.models.spending_risk import SpendingRisk

        self.warehouse = warehouse
        self.rules = rules or load_rules()
        self.cfg = cfg or current_settings()
        self.policy = SpendingPolicy(daily_cap=self.rules.spending_health_daily_cap)
        #: Who is at risk among OneIDs, for sends whose caller did not say (default: the recommender's model).
        self.risk = risk or SpendingRisk(self.cfg).at_risk
        self._lock = threading.Lock()
        for ddl in DDL:
            warehouse.command(ddl)

    def decide(self, send: Send) -> Decision:
        """Allowed or Refused(reason); the first decision on a send id is the only one."""
        return self.decide_many([send])[0]

    def decide_many(self, sends: Sequence[Send]) -> list[Decision]:
        """A decision per send, in order; a send id decided before (or earlier in ``sends``)
        gets its first answer back and writes nothing."""
        if not sends:
            return []
        with self._lock:
            decided = self._earlier([s.send_id for s in sends])
            fresh: list[Send] = []
            pending: set[str] = set()
            for s in sends:
                if s.send_id not in decided and s.send_id not in pending:
                    pending.add(s.send_id)
                    fresh.append(s)
            facts = _Facts.read(self, fresh)
            refused_rows, allowed_rows = [], []
            for s in fresh:
                decision = self._judge(s, facts)
                decided[s.send_id] = decision
                at = s.at.astimezone(timezone.utc).replace(tzinfo=None)
                if isinstance(decision, Refused):
                    refused_rows.append((s.send_id, s.oneid, s.channel, list(s.purposes), s.origin, at, decision.reason, decision.detail))
                else:
                    allowed_rows.append((s.send_id, s.oneid, s.channel, list(s.purposes), s.origin, at, not s.service))
                    if not s.service:
                        facts.sent.setdefault(s.oneid, []).append(s.at.astimezone(timezone.utc))
            if refused_rows:
                self.warehouse.insert_rows("contact_refusals", refused_rows,
                                           ["send_id", "oneid", "channel", "purposes", "origin", "at", "reason", "detail"])
            if allowed_rows:
                self.warehouse.insert_rows("contact_sends", allowed_rows,
                                           ["send_id", "oneid", "channel", "purposes", "origin", "at", "counts_to_cap"])
            return [decided[s.send_id] for s in sends]

    def _earlier(self, send_ids: list[str]) -> dict[str, Decision]:
        found: dict[str, Decision] = {}
        for (send_id,) in self.warehouse.rows("SELECT DISTINCT send_id FROM contact_sends WHERE send_id IN {s:Array(String)}",
                                              {"s": send_ids}):
            found[send_id] = Allowed(send_id)
        for send_id, reason, detail in self.warehouse.rows(
                "SELECT send_id, reason, detail FROM contact_refusals FINAL WHERE send_id IN {s:Array(String)}", {"s": send_ids}):
            found.setdefault(send_id, Refused(send_id, reason, detail))
        return found

    def _judge(self, send: Send, facts: "_Facts") -> Decision:
        if send.oneid in facts.forgotten:
            return Refused(send.send_id, "forgotten", "the person asked to be forgotten")
        if not send.service:
            consent = facts.consent.get((send.oneid, send.channel), {})
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
        today = facts.count(send.oneid, day_start, day_start + timedelta(days=1))
        exempt = send.dietary_need_declared if send.dietary_need_declared is not None else send.oneid in facts.dietary
        held_out = in_holdout(send.oneid, self.rules.spending_health_holdout)
        at_risk = send.at_risk if send.at_risk is not None else send.oneid in facts.at_risk
        if self.policy.capped({"at_risk": at_risk}, exempt) and not held_out and today >= self.policy.daily_cap:
            return Refused(send.send_id, "spending_health",
                           f"at risk of overspending: {today} of {self.policy.daily_cap} contacts today")
        if today >= self.rules.per_day:
            return Refused(send.send_id, "capped", f"{today} of {self.rules.per_day} contacts today")
        week = facts.count(send.oneid, week_start, week_start + timedelta(days=7))
        if week >= self.rules.per_week:
            return Refused(send.send_id, "capped", f"{week} of {self.rules.per_week} contacts this week")
        return Allowed(send.send_id)

    def current_consent(self, oneid: str, channel: str) -> dict[str, bool]:
        """Per purpose, whether the latest consent event on ``channel`` or ``all`` is a grant.

        A purpose with no event is absent (never granted). Read at each decision, so a
        withdrawal ingested a moment ago (batch or stream) refuses the next send. A person
        known only by an identifier token (``token:<token>``, no OneID yet) has the consent of
        the events naming that identifier: a neighbour who signs up with their consent is
        welcomed before OneID has run.
        """
        return self._consent([(oneid, channel)]).get((oneid, channel), {})

    def _consent(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, bool]]:
        """:meth:`current_consent` of every ``(person, channel)`` of ``wanted``: one statement for
        the OneIDs and one for the identifier tokens, whatever the channels. Each gives, per
        person, channel and purpose, the latest event's key ``(occurred_at, withdrawal)`` and
        whether it grants; a channel's consent is then the later of its own and that of ``all``
        (equal keys have the same answer)."""
        found: dict[tuple[str, str], dict[str, bool]] = {}
        if not wanted or not present(self.warehouse, "raw_consent"):
            return found
        channels = sorted({channel for _, channel in wanted} | {"all"})
        oneids = sorted({p for p, _ in wanted if not p.startswith("token:")})
        tokens = sorted({p[len("token:"):] for p, _ in wanted if p.startswith("token:")})
        rows: list[tuple] = []
        if oneids and present(self.warehouse, "event_oneid"):
            rows += self.warehouse.rows(
                """
                SELECT e.oneid, c.channel, c.purpose, max((c.occurred_at, NOT c.granted)), argMax(c.granted, (c.occurred_at, NOT c.granted))
                FROM (SELECT event_id, channel, purpose, granted, occurred_at FROM raw_consent FINAL
                      WHERE channel IN {channels:Array(String)}) AS c
                INNER JOIN (SELECT event_id, oneid FROM event_oneid
                            WHERE event_type = 'consent' AND oneid IN {oneids:Array(String)}
                              AND event_id IN (""" + events_of_people_sql("consent", "oneids") + """)) AS e
                    ON e.event_id = c.event_id
                GROUP BY e.oneid, c.channel, c.purpose
                """, {"channels": channels, "oneids": oneids})
        if tokens:
            columns = ", ".join(f"`{c}`" for c in _consent_subject_columns())
            rows += [("token:" + t, *rest) for t, *rest in self.warehouse.rows(
                f"""
                SELECT token, channel, purpose, max((occurred_at, NOT granted)), argMax(granted, (occurred_at, NOT granted))
                FROM raw_consent FINAL
                ARRAY JOIN [{columns}] AS token
                WHERE channel IN {{channels:Array(String)}} AND token IN {{tokens:Array(String)}}
                GROUP BY token, channel, purpose
                """, {"channels": channels, "tokens": tokens})]
        latest: dict[str, list[tuple[str, str, tuple, bool]]] = {}
        for person, channel, purpose, key, granted in rows:
            latest.setdefault(str(person), []).append((str(channel), str(purpose), tuple(key), bool(granted)))
        for person, channel in wanted:
            keys: dict[str, tuple] = {}
            for on, purpose, key, granted in latest.get(person, ()):
                if on in (channel, "all") and (purpose not in keys or key > keys[purpose]):
                    keys[purpose] = key
                    found.setdefault((person, channel), {})[purpose] = granted
        return found

    def _forgotten(self, people: Sequence[str]) -> set[str]:
        """The people of ``people`` with a forget request (``forget_log``) or a suppressed identifier."""
        tokens = {p[len("token:"):]: p for p in people if p.startswith("token:")}
        oneids = [p for p in people if not p.startswith("token:")]
        found: set[str] = set()
        if tokens and present(self.warehouse, "identity_forgotten"):
            found |= {tokens[t] for (t,) in self.warehouse.rows(
                "SELECT DISTINCT token FROM identity_forgotten WHERE token IN {t:Array(String)}", {"t": list(tokens)})}
        if oneids and present(self.warehouse, "forget_log"):
            digests = {forget_log_digest(o): o for o in oneids}
            found |= {digests[d] for (d,) in self.warehouse.rows(
                "SELECT DISTINCT oneid FROM forget_log WHERE oneid IN {d:Array(String)}", {"d": list(digests)})}
        if oneids and present(self.warehouse, "identity_forgotten", "identity_nodes"):
            found |= {str(o) for (o,) in self.warehouse.rows(
                "SELECT DISTINCT oneid FROM identity_nodes FINAL WHERE oneid IN {o:Array(String)} "
                "AND token IN (SELECT token FROM identity_forgotten)", {"o": oneids})}
        return found

    def _dietary_needs(self, oneids: Sequence[str]) -> set[str]:
        if not oneids or not present(self.warehouse, "ref_dietary_declarations"):
            return set()
        return {str(o) for o, need in self.warehouse.rows(
            "SELECT oneid, dietary_need FROM ref_dietary_declarations FINAL WHERE oneid IN {o:Array(String)}",
            {"o": list(oneids)}) if need}

    def _sends_of(self, oneids: Sequence[str], start: datetime, end: datetime) -> dict[str, list[datetime]]:
        """When each person's sends that count toward the caps went out, between ``start`` and ``end``."""
        found: dict[str, list[datetime]] = {}
        if not oneids:
            return found
        for oneid, at in self.warehouse.rows(
                "SELECT oneid, at FROM contact_sends FINAL WHERE oneid IN {o:Array(String)} AND counts_to_cap "
                "AND at >= {a:DateTime64(3, 'UTC')} AND at < {b:DateTime64(3, 'UTC')}",
                {"o": list(oneids), "a": start.astimezone(timezone.utc).replace(tzinfo=None),
                 "b": end.astimezone(timezone.utc).replace(tzinfo=None)}):
            found.setdefault(str(oneid), []).append(at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at)
        return found


@dataclass
class _Facts:
    """What the rules need to know about the people of a set of sends, read once for the set."""

    forgotten: set[str]
    consent: dict[tuple[str, str], dict[str, bool]]
    dietary: set[str]
    #: per person, when their counted sends went out (those of this set added as they are allowed)
    sent: dict[str, list[datetime]]
    #: the people of sends without a caller's flag whom the spending-health model flags at risk
    at_risk: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, desk: ContactDesk, sends: Sequence[Send]) -> "_Facts":
        if not sends:
            return cls(set(), {}, set(), {})
        people = sorted({s.oneid for s in sends})
        forgotten = desk._forgotten(people)
        marketing = [s for s in sends if not s.service and s.oneid not in forgotten]
        consent = desk._consent(sorted({(s.oneid, s.channel) for s in marketing}))
        counted = sorted({s.oneid for s in marketing})
        dietary = desk._dietary_needs([o for o in counted if not o.startswith("token:")])
        at_risk = desk.risk(sorted({s.oneid for s in marketing if s.at_risk is None}))
        sent: dict[str, list[datetime]] = {}
        if counted:
            zone = desk.cfg.business_zone
            days = [s.at.astimezone(zone).date() for s in marketing]
            start = datetime.combine(min(days) - timedelta(days=7), time(0), tzinfo=zone)
            end = datetime.combine(max(days) + timedelta(days=8), time(0), tzinfo=zone)
            sent = desk._sends_of(counted, start, end)
        return cls(forgotten, consent, dietary, sent, at_risk)

    def count(self, oneid: str, start: datetime, end: datetime) -> int:
        return sum(1 for at in self.sent.get(oneid, ()) if start <= at < end)


def events_of_people_sql(event_type: str, people: str) -> str:
    """SQL selecting the ids of the events of ``event_type`` that name an identifier of one of the
    OneIDs in the query parameter ``people`` (an ``Array(String)``).

    ``event_oneid`` (a view) gives an event the OneID of one of the identifiers it names, so an
    event whose OneID is among ``people`` is among these; filtering the view with them first
    makes it resolve those events only, not every event of the type (a journey pass asks for a
    few thousand people, the warehouse holds the history of all)."""
    if event_type not in contracts():
        raise ValueError(f"unknown event type {event_type!r}")
    return f"""
        SELECT event_id FROM identity_links
        WHERE event_type = '{event_type}' AND reason = ''
          AND (a_token IN (SELECT token FROM identity_nodes FINAL WHERE oneid IN {{{people}:Array(String)}})
               OR b_token IN (SELECT token FROM identity_nodes FINAL WHERE oneid IN {{{people}:Array(String)}}))"""


def _consent_subject_columns() -> list[str]:
    """The identifier columns of ``raw_consent`` (the person a consent event names)."""
    from lastmile.streaming.seen import person_columns

    return [column for column, _ in person_columns()["raw_consent"].columns]


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
