"""Explicit identity links (``identify`` events): register, bind_phone, issue_member_card,
change_phone and login (including logins from the household tablet).

They are emitted at the moments the world fixed in advance (a bind mid-window, a card issued,
a number changed) so that order identifiers before and after those moments are consistent
with them; a new user's registration lands a few minutes before their first order.
"""

from __future__ import annotations

import random
from typing import Any

from .clock import MINUTE_MS
from .config import SimulationConfig
from .identities import IdentityBook
from .orders import Orders
from .world import Person, World


def _event(t: int, source: str, reason: str, identifiers: dict[str, str], **extra: str) -> tuple[int, dict[str, Any]]:
    event: dict[str, Any] = {
        "event_id": None, "event_type": "identify", "schema_version": 1, "occurred_at": None,
        "source": source, "identifiers": identifiers, "reason": reason,
    }
    event.update(extra)
    return t, event


def build_identify(world: World, cfg: SimulationConfig, orders: Orders, book: IdentityBook) -> list[tuple[int, dict[str, Any]]]:
    rnd = random.Random(cfg.seed * 1_000_003 + 67)
    first_order: dict[int, int] = {}
    for t, pi in zip(orders.t_ms, orders.person):
        first_order.setdefault(pi, t)
    window = cfg.window_ms
    events: list[tuple[int, dict[str, Any]]] = []

    def show(id_type: str, value: str, owner: Person, user: Person | None = None, shared: bool = False) -> str:
        return book.show(id_type, value, owner, user, messy=0.5, junk=False, shared=shared)

    for p in world.persons:
        if p.index not in first_order and rnd.random() < 0.7:
            continue  # never active in the window: mostly no identity traffic either
        if p.openid and p.unionid:
            if p.new_user:
                t = max(0, first_order.get(p.index, int(rnd.uniform(0, window))) - int(rnd.uniform(2, 30) * MINUTE_MS))
                ids = {"openid": show("openid", p.openid, p), "unionid": show("unionid", p.unionid, p),
                       "device_id": show("device_id", p.device_id, p)}
                events.append(_event(t, "mini_program", "register", ids))
                if p.bind_at_register:
                    events.append(_event(t + int(rnd.uniform(0.5, 2) * MINUTE_MS), "mini_program", "bind_phone", {
                        "openid": show("openid", p.openid, p), "unionid": show("unionid", p.unionid, p),
                        "phone": show("phone", p.phone_at(t), p)}))
            elif p.mp_phone_from_ms:
                t = p.mp_phone_from_ms
                events.append(_event(t, "mini_program", "bind_phone", {
                    "openid": show("openid", p.openid, p), "unionid": show("unionid", p.unionid, p),
                    "phone": show("phone", p.phone_at(t), p)}))
            if p.new_phone is not None and p.phone_change_ms is not None:
                events.append(_event(p.phone_change_ms, "mini_program", "change_phone", {
                    "phone": show("phone", p.new_phone, p), "unionid": show("unionid", p.unionid, p)},
                    previous_phone=show("phone", p.phone, p)))
            hh = world.households[p.household_index]
            if p.uses_tablet and hh.tablet:
                t = max(0, first_order.get(p.index, int(rnd.uniform(0, window))) - int(rnd.uniform(1, 600) * MINUTE_MS))
                owner = world.persons[hh.members[0]]
                events.append(_event(t, "mini_program", "login", {
                    "openid": show("openid", p.openid, p), "device_id": show("device_id", hh.tablet, owner, p, True)}))
            elif rnd.random() < 0.1:
                events.append(_event(int(rnd.uniform(0, window)), "mini_program", "login", {
                    "openid": show("openid", p.openid, p), "device_id": show("device_id", p.device_id, p)}))
        if p.member_card and p.card_from_ms:
            t = p.card_from_ms
            events.append(_event(t, "store", "issue_member_card", {
                "phone": show("phone", p.phone_at(t), p), "member_card": show("member_card", p.member_card, p)}))
    return events
