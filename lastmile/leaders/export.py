"""The leader's brief as it leaves lastmile: neighbours under the configured identifier, and the
CSV and Markdown a WeCom bot posts to the leader.

:func:`present` is the one place a brief's OneIDs are replaced, with the identifiers of a
leader's audience export (:mod:`lastmile.audiences.exports`): by default the keyed hash of the
OneID under that leader's key (:func:`~lastmile.audiences.exports.leader_key`,
:func:`~lastmile.audiences.exports.pseudonym`), the same id a neighbour has in that leader's
audience files; ``identifiers="oneid"`` writes the OneID only when the contact rules allow it
(``exports.clear_identifiers``) and only for neighbours who also granted
``personalised_recommendation`` on the leader's channel. ``id_kind`` says which a row has.

CSV has one row per line of the brief (``section`` says which) and a header; Markdown has a
heading per section in Chinese and English, in the subset WeCom's group bots render.
"""

from __future__ import annotations

import csv
import copy
import io
from typing import Any

from lastmile.audiences.contact_rules import ContactRules, consented_oneids_sql, load_rules
from lastmile.audiences.exports import CLEAR_PURPOSE, ExportRefused, leader_key, pseudonym
from lastmile.config import Settings
from lastmile.config import settings as current_settings
from lastmile.leaders.brief import LEADER_CHANNEL, NAMED
from lastmile.warehouse import Warehouse

#: Person-level sections: where each keeps its rows in the brief.
PERSON_SECTIONS = (("due_to_reorder",), ("new_neighbours",), ("quiet_regulars",), ("lockers", "overdue"),
                   ("lockers", "waiting"), ("open_claims",))
CSV_COLUMNS = ("section", "neighbour", "sku", "name", "order_id", "locker", "when", "detail", "amount_cny")
TITLES = {
    "due_to_reorder": ("该补货的邻居", "Due to reorder"),
    "new_neighbours": ("新邻居", "New neighbours to welcome"),
    "quiet_regulars": ("老顾客沉默了", "Regulars gone quiet"),
    "lockers_overdue": ("柜中超时未取", "Overdue in lockers"),
    "lockers_waiting": ("柜中待取", "Waiting in lockers"),
    "open_claims": ("未结售后", "Open claims"),
    "sales_this_week": ("本楼本周热销", "What sells in your building this week"),
    "surplus": ("今日余量", "Surplus today"),
}


def _rows(brief: dict[str, Any], path: tuple[str, ...]) -> list[dict[str, Any]]:
    node: Any = brief
    for key in path:
        node = node[key]
    return node["neighbours"]


def present(brief: dict[str, Any], cfg: Settings | None = None, identifiers: str = "hash",
            warehouse: Warehouse | None = None, rules: ContactRules | None = None) -> dict[str, Any]:
    """A copy of ``brief`` with every ``oneid`` replaced by ``neighbour`` and its ``id_kind``.

    ``identifiers="oneid"`` needs ``warehouse`` (to read the consent) and contact rules that
    allow OneIDs in the clear; otherwise :class:`~lastmile.audiences.exports.ExportRefused`.
    """
    cfg = cfg or current_settings()
    clear: set[str] = set()
    if identifiers == "oneid":
        rules = rules or load_rules()
        if not rules.clear_identifiers:
            raise ExportRefused("OneIDs in the clear are not allowed by the contact rules (exports.clear_identifiers in "
                                "contact_rules.yml); the default keyed hash needs no permission")
        if warehouse is None:
            raise ValueError("identifiers='oneid' needs the warehouse to read who granted it")
        sql = consented_oneids_sql(LEADER_CHANNEL, (*NAMED, CLEAR_PURPOSE))
        clear = {str(o) for (o,) in warehouse.rows(sql)}
    elif identifiers != "hash":
        raise ExportRefused(f"identifiers must be hash or oneid, not {identifiers!r}")
    key = leader_key(cfg.hash_key_bytes(), brief["leader_id"])
    out = copy.deepcopy(brief)
    for path in PERSON_SECTIONS:
        for row in _rows(out, path):
            oneid = row.pop("oneid")
            in_clear = oneid in clear
            row["neighbour"] = oneid if in_clear else pseudonym(key, oneid)
            row["id_kind"] = "oneid" if in_clear else "keyed_hash"
    return out


def oneids(brief: dict[str, Any]) -> list[str]:
    """Every OneID a brief (before :func:`present`) names, once each: for the audit log."""
    return list(dict.fromkeys(row["oneid"] for path in PERSON_SECTIONS for row in _rows(brief, path)))


def _lines(brief: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat line per item of a presented brief, in section order."""
    out: list[dict[str, Any]] = []
    for r in brief["due_to_reorder"]["neighbours"]:
        out.append({"section": "due_to_reorder", "neighbour": r["neighbour"], "sku": r["sku"], "name": r["sku_name"],
                    "when": r["due"], "detail": f"every ~{r['mean_interval_days']:g} days, last {r['last_purchase']}"})
    for r in brief["new_neighbours"]["neighbours"]:
        out.append({"section": "new_neighbours", "neighbour": r["neighbour"], "when": r["first_order_at"],
                    "detail": f"first order via {r['channel']}"})
    for r in brief["quiet_regulars"]["neighbours"]:
        out.append({"section": "quiet_regulars", "neighbour": r["neighbour"],
                    "sku": " ".join(u["sku"] for u in r["used_to_buy"]),
                    "name": "、".join(u["sku_name"] or u["sku"] for u in r["used_to_buy"]), "when": r["last_purchase"],
                    "detail": f"{r['purchase_days']} purchase days, every ~{r['mean_interval_days']:g} days, "
                              f"quiet {r['days_since_last_purchase']} days", "amount_cny": r["total_spend_cny"]})
    for state in ("overdue", "waiting"):
        for r in brief["lockers"][state]["neighbours"]:
            out.append({"section": f"lockers_{state}", "neighbour": r["neighbour"], "order_id": r["order_id"],
                        "locker": f"{r['locker_id']}/{r['compartment_id']}", "when": r["slot_end"],
                        "detail": f"{r['hours_overdue']:g} h past the slot" if state == "overdue" else "slot open"})
    for r in brief["open_claims"]["neighbours"]:
        out.append({"section": "open_claims", "neighbour": r["neighbour"], "order_id": r["order_id"], "when": r["claimed_at"],
                    "detail": r["reason"] or "", "amount_cny": r["amount_cny"]})
    for r in brief["surplus"] or []:
        out.append({"section": "surplus", "sku": r["sku"], "name": r["sku_name"],
                    "detail": f"{r['surplus_units']} units over the median demand ({r['p50_demand']:g}) of {r['stock_units']} in stock"})
    for r in brief["sales_this_week"]["top"]:
        out.append({"section": "sales_this_week", "sku": r["sku"], "name": r["sku_name"],
                    "detail": f"{r['units']} units in {r['orders']} orders", "amount_cny": r["amount_cny"]})
    return out


def to_csv(brief: dict[str, Any]) -> str:
    """The presented brief as CSV: a header, then one line per item."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in _lines(brief):
        writer.writerow({c: "" if line.get(c) is None else line.get(c) for c in CSV_COLUMNS})
    return buffer.getvalue()


def _hidden(section: dict[str, Any]) -> str:
    n = section["not_consented"]
    return f"\n> 另有 {n} 位邻居未授权团长联系 / {n} more without consent to be contacted by their leader\n" if n else ""


def to_markdown(brief: dict[str, Any]) -> str:
    """The presented brief as Markdown for a WeCom group bot."""
    out = [f"# {brief['building_name'] or brief['building_id']} · 团长早报 / leader's brief {brief['day']}",
           f"团长 {brief['leader_id']} · {brief['community_id']}/{brief['building_id']} · as of {brief['as_of']} "
           f"({brief['time_zone']}); marts as of {brief['marts_as_of'] or '-'}"]
    lines = _lines(brief)
    sections = {"due_to_reorder": brief["due_to_reorder"], "new_neighbours": brief["new_neighbours"],
                "quiet_regulars": brief["quiet_regulars"], "lockers_overdue": brief["lockers"]["overdue"],
                "lockers_waiting": brief["lockers"]["waiting"], "open_claims": brief["open_claims"]}
    for name, section in sections.items():
        zh, en = TITLES[name]
        out.append(f"\n## {zh} / {en}")
        mine = [line for line in lines if line["section"] == name]
        for line in mine:
            what = " · ".join(str(line[c]) for c in ("name", "order_id", "locker") if line.get(c))
            amount = f" · ¥{line['amount_cny']:.2f}" if line.get("amount_cny") is not None else ""
            out.append(f"- **{line['neighbour']}** {what} · {line.get('when') or ''} · {line['detail']}{amount}")
        if not mine:
            out.append("- —")
        out.append(_hidden(section).rstrip("\n"))
    zh, en = TITLES["sales_this_week"]
    sales = brief["sales_this_week"]
    out.append(f"\n## {zh} / {en} ({sales['from']} – {sales['to']})")
    out += [f"{i}. {line['name'] or line['sku']} · {line['detail']} · ¥{line['amount_cny']:.2f}"
            for i, line in enumerate((line for line in lines if line["section"] == "sales_this_week"), 1)] or ["- —"]
    zh, en = TITLES["surplus"]
    out.append(f"\n## {zh} / {en}")
    out += [f"- {line['name'] or line['sku']} · {line['detail']}" for line in lines if line["section"] == "surplus"] or ["- —"]
    out += [f"\n> {note}" for note in brief["notes"]]
    return "\n".join(line for line in out if line != "") + "\n"
