"""Consent events (``schemas/consent.json``): who agreed to be contacted, on which channel, for what.

PIPL asks for consent per purpose, and for sensitive (health-related) processing a separate
one, so every resident who uses the platform in the window leaves consent events:

* **Choices** on the mini-program's privacy page: a new user makes them a few minutes before
  their first order; a resident from before the window confirms them in the first days, when
  the privacy policy changed (re-consent), and before their first order of the window.
  Marketing is granted channel by channel with the persona's shares
  (:attr:`SimulationConfig.consent_marketing`); someone who grants every channel taps "accept
  all" (one event on channel ``all``). Personalised recommendations are granted on a share of
  the channels marketing was (:attr:`SimulationConfig.consent_personalised`), health-related
  processing separately, on ``all`` (:attr:`SimulationConfig.consent_health`). Only grants are
  events: a choice left off is no consent.
* **Withdrawals** later in the window (:attr:`SimulationConfig.consent_withdrawal_share` of
  the marketing grants): STOP to an SMS, a word to the group leader, the locker screen's
  privacy button, the mini-program; health consent through customer service.

Identifiers are shown as the collecting channel saw them, clean (a privacy page does not
retype a number), and through :class:`IdentityBook` so the OneID truth covers them. Draws come
from their own generator, so adding consent changes no other file.
"""

from __future__ import annotations

from typing import Any

from .clock import DAY_MS, MINUTE_MS, iso_ms
from .config import CONSENT_CHANNELS, SimulationConfig
from .identities import IdentityBook
from .world import Person, World

#: Where a withdrawal of marketing on each channel comes from (schemas/consent.json ``source``).
WITHDRAWAL_SOURCE = {"mini_program_push": "mini_program", "sms": "sms_reply", "wecom_leader": "leader_form",
                     "locker_screen": "locker_screen"}


def _subject(book: IdentityBook, p: Person, t: int) -> dict[str, str]:
    """The identifiers the mini-program knows (its WeChat ids, else the phone it was given)."""
    if p.unionid and p.openid:
        return {"unionid": book.show("unionid", p.unionid, p, messy=0, junk=False),
                "openid": book.show("openid", p.openid, p, messy=0, junk=False)}
    return {"phone": book.show("phone", p.phone_at(t), p, messy=0, junk=False)}


def _event(t: int, source: str, subject: dict[str, str], purpose: str, channel: str, granted: bool) -> tuple[int, dict[str, Any]]:
    return t, {"event_id": None, "event_type": "consent", "schema_version": 1, "occurred_at": None, "source": source,
               "subject": subject, "purpose": purpose, "channel": channel, "granted": granted}


def build_consent(world: World, cfg: SimulationConfig, first_order: dict[int, int],
                  book: IdentityBook) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """Consent events of every resident with an order in the window, and truth rows
    (``truth/consent.jsonl``: per person, purpose and channel granted in the window, the
    state at its end and since when)."""
    rng = cfg.rng("consent")
    window = cfg.window_ms
    events: list[tuple[int, dict[str, Any]]] = []
    truth: list[dict[str, Any]] = []
    for p in world.persons:
        if p.index not in first_order:
            continue
        first = first_order[p.index]
        if p.new_user:
            t = max(0, first - int(rng.uniform(3, 30) * MINUTE_MS))
        else:
            t = int(rng.uniform(0, min(first, 3 * DAY_MS) + 1))
        marketing = [c for c in CONSENT_CHANNELS if rng.random() < cfg.consent_marketing[p.persona][c]]
        personalised = [c for c in marketing if rng.random() < cfg.consent_personalised[p.persona]]
        health = rng.random() < cfg.consent_health[p.persona]
        if not marketing and not health:
            continue  # nothing granted: no event, and the identifiers stay unseen
        subject = _subject(book, p, t)
        state: dict[tuple[str, str], tuple[bool, int]] = {}
        for purpose, channels in (("marketing", marketing), ("personalised_recommendation", personalised)):
            if len(channels) == len(CONSENT_CHANNELS):
                events.append(_event(t, "mini_program", subject, purpose, "all", True))
            else:
                events.extend(_event(t, "mini_program", subject, purpose, c, True) for c in channels)
            state.update({(purpose, c): (True, t) for c in channels})
        if health:
            events.append(_event(t, "mini_program", subject, "health", "all", True))
            state[("health", "all")] = (True, t)
        for purpose, channel in [("marketing", c) for c in marketing] + ([("health", "all")] if health else []):
            if rng.random() >= cfg.consent_withdrawal_share:
                continue
            at = int(rng.uniform(t + DAY_MS, window)) if t + DAY_MS < window else window - 1
            source = WITHDRAWAL_SOURCE[channel] if purpose == "marketing" else "customer_service"
            shown = subject if source == "mini_program" else {"phone": book.show("phone", p.phone_at(at), p, messy=0, junk=False)}
            events.append(_event(at, source, shown, purpose, channel, False))
            state[(purpose, channel)] = (False, at)
        truth.extend({"person_id": p.person_id, "persona": p.persona, "purpose": purpose, "channel": channel,
                      "granted": granted, "since": since} for (purpose, channel), (granted, since) in sorted(state.items()))
    for row, stamp in zip(truth, iso_ms(cfg.start, [row["since"] for row in truth])):
        row["since"] = stamp
    return events, truth
