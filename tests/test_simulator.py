"""The community simulator: deterministic, contract-valid, and its ground truth is true.

One small simulation (module fixture) is checked from many sides; determinism uses two more
tiny runs. Every check reads the written files, the way the pipeline and the evaluations will.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from lastmile.contracts import ContractError, EventParser
from lastmile.simulator import SimulationConfig, SimulationResult, estimated_events, for_total_events, simulate
from lastmile.simulator.config import EVENT_TYPES, TEMPERATURE_RANGES
from lastmile.simulator.identities import normalise

FIXED_NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CFG = SimulationConfig(seed=7, orders=8_000, weeks=4)
ID_FIELDS = ("buyer", "collector", "claimant", "reviewer", "identifiers", "subject")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    return simulate(CFG, tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def lines(run: SimulationResult) -> dict[str, list[bytes]]:
    return {t: (run.out_dir / "events" / f"{t}.jsonl").read_bytes().splitlines() for t in EVENT_TYPES}


@pytest.fixture(scope="module")
def injected(run: SimulationResult) -> list[dict[str, Any]]:
    return _jsonl(run.out_dir / "truth" / "injected.jsonl")


@pytest.fixture(scope="module")
def valid(lines: dict[str, list[bytes]], injected: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Parsed events per type, without malformed lines and without duplicate re-sends."""
    skip = {(r["file"], r["line"]) for r in injected if r["kind"] in ("malformed", "duplicate")}
    return {
        t: [orjson.loads(line) for n, line in enumerate(ls, 1) if (f"events/{t}.jsonl", n) not in skip]
        for t, ls in lines.items()
    }


@pytest.fixture(scope="module")
def truth(run: SimulationResult) -> dict[str, list[dict[str, Any]]]:
    names = ("persons", "identifiers", "orders", "excursions", "door_spikes", "bad_batches")
    return {n: _jsonl(run.out_dir / "truth" / f"{n}.jsonl") for n in names}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- determinism ----------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    small = SimulationConfig(seed=3, orders=1_500, weeks=2)
    simulate(small, tmp_path / "a")
    simulate(small, tmp_path / "b")
    simulate(SimulationConfig(seed=4, orders=1_500, weeks=2), tmp_path / "c")
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert len(a) >= 20 and a.keys() == b.keys() == c.keys()
    assert a == b
    differing = [k for k in a if a[k] != c[k]]
    assert any(k.startswith("events/") for k in differing) and any(k.startswith("truth/") for k in differing)
    # the skus catalogue is master data, not randomness: it does not depend on the seed
    assert a["reference/skus.jsonl"] == c["reference/skus.jsonl"]


# -- contracts and injection ------------------------------------------------------------------


def test_every_clean_line_passes_the_contract_and_every_malformed_line_fails_as_planned(
    lines: dict[str, list[bytes]], injected: list[dict[str, Any]]
) -> None:
    parser = EventParser(now=lambda: FIXED_NOW)
    malformed = {(r["file"], r["line"]): r for r in injected if r["kind"] == "malformed"}
    reasons: Counter[str] = Counter()
    for event_type, ls in lines.items():
        for n, line in enumerate(ls, 1):
            planned = malformed.get((f"events/{event_type}.jsonl", n))
            if planned is None:
                event = parser.parse(line)  # raises on any contract violation
                assert event["event_type"] == event_type
                assert event["occurred_at"].endswith("+08:00")
                assert datetime(2026, 9, 1, tzinfo=timezone.utc) < _at(event["occurred_at"]) < FIXED_NOW
            else:
                with pytest.raises(ContractError) as caught:
                    parser.parse(line)
                assert caught.value.reason == planned["expected_reason"], planned
                reasons[planned["detail"]] += 1
    # a real mix: every kind of breakage occurs
    assert set(reasons) == {"truncated", "wrong_type", "missing_field", "unknown_event_type", "future_timestamp", "oversized"}
    assert min(reasons.values()) >= 3


def test_injected_counts_match_truth_and_injections_are_what_they_claim(
    run: SimulationResult, lines: dict[str, list[bytes]], injected: list[dict[str, Any]]
) -> None:
    kinds = Counter(r["kind"] for r in injected)
    assert dict(kinds) == run.injected
    assert run.counts == {t: len(ls) for t, ls in lines.items()}
    for event_type, ls in lines.items():
        rows = [r for r in injected if r["file"] == f"events/{event_type}.jsonl"]
        n_valid = len(ls) - sum(r["kind"] in ("malformed", "duplicate") for r in rows)
        per_kind = Counter(r["kind"] for r in rows)
        assert per_kind["malformed"] == round(n_valid * CFG.malformed_share)
        assert per_kind["duplicate"] == round(n_valid * CFG.duplicate_share)
        assert per_kind["late"] == round(n_valid * CFG.late_share)
    by_line = {(r["file"], r["line"]): r for r in injected}
    assert len(by_line) == len(injected), "one truth row per injected line"
    for r in injected:
        event_type = r["file"][len("events/"):-len(".jsonl")]
        ls = lines[event_type]
        if r["kind"] == "duplicate":
            assert ls[r["line"] - 1] == ls[r["original_line"] - 1]
            assert r["line"] > r["original_line"]
        elif r["kind"] == "late":
            late_at = _at(orjson.loads(ls[r["line"] - 1])["occurred_at"])
            k = r["line"] - 1
            while by_line.get((r["file"], k), {}).get("kind") in ("malformed", "late"):
                k -= 1  # the nearest earlier line that is neither broken nor itself late
            before = orjson.loads(ls[k - 1])
            assert late_at < _at(before["occurred_at"]), "a late line arrives after newer events"
            assert r["moved_by_lines"] >= len(ls) // 60


def test_event_ids_are_unique_apart_from_duplicates(valid: dict[str, list[dict[str, Any]]]) -> None:
    ids = Counter(e["event_id"] for events in valid.values() for e in events)
    assert ids and ids.most_common(1)[0][1] == 1


def test_telemetry_template_renders_exactly_what_orjson_would(lines: dict[str, list[bytes]]) -> None:
    for line in lines["locker_telemetry"][:2000:7]:
        assert orjson.dumps(orjson.loads(line)) == line


# -- identity ground truth --------------------------------------------------------------------


def _identifier_values(events: dict[str, list[dict[str, Any]]]) -> Counter[tuple[str, str]]:
    seen: Counter[tuple[str, str]] = Counter()
    for evs in events.values():
        for e in evs:
            for f in ID_FIELDS:
                for id_type, value in e.get(f, {}).items():
                    seen[(id_type, value)] += 1
            if "previous_phone" in e:
                seen[("phone", e["previous_phone"])] += 1
    return seen


def test_truth_covers_exactly_the_identifiers_in_the_events(
    valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]
) -> None:
    in_events = _identifier_values(valid)
    rows = {(r["id_type"], r["value"]): r for r in truth["identifiers"]}
    assert set(in_events) == set(rows)
    persons = {p["person_id"] for p in truth["persons"]}
    for r in rows.values():
        if r["junk"]:
            assert r["person_id"] is None and r["value"].strip() in ("0", "null", "undefined", "13800000000", "11111111111")
        else:
            assert r["person_id"] in persons and r["person_id"] in r["persons"] or r["shared"]
            assert r["normalised"] == normalise(r["id_type"], r["value"])
    # messy spellings exist and normalise onto a clean value of the same person
    clean = {(r["id_type"], r["value"]): r["person_id"] for r in rows.values() if r["value"] == r["normalised"]}
    clean_phones = {r["normalised"]: r["person_id"] for r in rows.values()
                    if r["id_type"] == "phone" and not r["junk"] and r["value"].isdigit()}
    messy_phones = [r for r in rows.values() if r["id_type"] == "phone" and not r["junk"] and not r["value"].isdigit()]
    assert len(messy_phones) >= 50
    matched = [r for r in messy_phones if r["normalised"] in clean_phones]
    assert matched and all(clean_phones[r["normalised"]] == r["person_id"] for r in matched)
    padded = [r for r in rows.values() if r["id_type"] != "phone" and r["value"] != r["value"].strip()]
    assert padded and all(clean.get((r["id_type"], r["value"].strip()), r["person_id"]) == r["person_id"] for r in padded)
    junk = Counter(k for k, n in in_events.items() for _ in range(n) if rows[k]["junk"])
    assert sum(junk.values()) >= 10


def test_leader_phone_trap_is_in_the_events_and_marked_shared(
    valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]
) -> None:
    rows = {(r["id_type"], r["value"]): r for r in truth["identifiers"]}
    leaders = {p["person_id"] for p in truth["persons"] if p["is_leader"]}
    trapped = 0
    for e in valid["order"]:
        buyer = e["buyer"]
        if e["channel"] != "group_chat" or "phone" not in buyer:
            continue
        phone = rows[("phone", buyer["phone"])]
        other = buyer.get("openid") or buyer.get("member_card")
        other_row = rows.get(("openid", other)) or rows.get(("member_card", other))
        if phone["junk"] or other_row is None or other_row["junk"]:
            continue
        if phone["person_id"] != other_row["person_id"]:
            assert phone["person_id"] in leaders
            assert phone["shared"] and other_row["person_id"] in phone["persons"]
            trapped += 1
    assert trapped >= 30
    placed = sum(o["leader_placed"] for o in truth["orders"])
    assert trapped <= placed


def test_household_tablets_are_shared_devices(
    valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]
) -> None:
    household = {p["person_id"]: p["household_id"] for p in truth["persons"]}
    shared = [r for r in truth["identifiers"] if r["id_type"] == "device_id" and r["shared"] and len(r["persons"]) > 1]
    assert len(shared) >= 10
    for r in shared:
        assert {household[p] for p in r["persons"]} == {household[r["person_id"]]}, "a tablet stays in its household"
    devices = {r["value"] for r in shared}
    users: defaultdict[str, set[str]] = defaultdict(set)
    openid_owner = {r["value"]: r["person_id"] for r in truth["identifiers"] if r["id_type"] == "openid"}
    for e in valid["order"]:
        device = e["buyer"].get("device_id")
        if device in devices and e["buyer"].get("openid") in openid_owner:
            users[device].add(openid_owner[e["buyer"]["openid"]])
    assert any(len(u) > 1 for u in users.values()), "one tablet, several buyers"


def test_phone_changes_keep_the_person(valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]) -> None:
    rows = {(r["id_type"], r["value"]): r for r in truth["identifiers"]}
    changes = [e for e in valid["identify"] if e["reason"] == "change_phone"]
    assert changes
    for e in changes:
        new, old = rows[("phone", e["identifiers"]["phone"])], rows[("phone", e["previous_phone"])]
        assert new["normalised"] != old["normalised"]
        assert new["person_id"] == old["person_id"] == rows[("unionid", e["identifiers"]["unionid"])]["person_id"]
    reasons = Counter(e["reason"] for e in valid["identify"])
    assert {"register", "bind_phone", "issue_member_card", "change_phone", "login"} <= set(reasons)


# -- rhythms and personas -----------------------------------------------------------------------


def test_friday_peak_beats_the_wednesday_lull(run: SimulationResult, valid: dict[str, list[dict[str, Any]]]) -> None:
    # Blind-box slots (announced in the promotions reference) are the lull's exception: left out.
    slots = [(_at(r["starts_at"]), _at(r["ends_at"])) for r in _jsonl(run.out_dir / "reference" / "promotions.jsonl")
             if r["kind"] == "blind_box"]
    times = [_at(e["occurred_at"]) for e in valid["order"]]
    hours = Counter((t.weekday(), t.hour) for t in times if not any(a <= t < b for a, b in slots))
    friday_peak = (hours[(4, 16)] + hours[(4, 17)]) / 2
    wednesday_lull = hours[(2, 15)]
    average = sum(hours.values()) / 168
    assert friday_peak > 3 * average
    assert wednesday_lull < 0.5 * average
    assert friday_peak > 10 * max(1, wednesday_lull)


def test_personas_order_differently(valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]],
                                    run: SimulationResult) -> None:
    persona = {o["order_id"]: o["persona"] for o in truth["orders"]}
    skus = {s["sku"]: s for s in _jsonl(run.out_dir / "reference" / "skus.jsonl")}
    late_night: Counter[str] = Counter()
    impulse_items: Counter[str] = Counter()
    items: Counter[str] = Counter()
    weekly: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for e in valid["order"]:
        p = persona[e["order_id"]]
        t = _at(e["occurred_at"])
        late_night[p] += t.hour >= 21 or t.hour < 2
        weekly[p][(t - _at("2026-09-07T00:00:00+08:00")).days // 7] += 1
        for it in e["items"]:
            items[p] += it["qty"]
            impulse_items[p] += it["qty"] * skus[it["sku"]]["is_impulse"]
        assert {skus[it["sku"]]["product_class"] for it in e["items"]} == {_compartment_class(run, e["compartment_id"])}
    share = {p: late_night[p] / sum(weekly[p].values()) for p in weekly}
    assert share["young_night"] > 2 * share["senior_health"]
    impulse_share = {p: impulse_items[p] / items[p] for p in items}
    assert impulse_share["impulse"] > 1.5 * impulse_share["family"] > impulse_share["senior_health"]
    growth = weekly["impulse"]
    assert growth[CFG.weeks - 1] > 1.2 * growth[0], "the impulse persona's spending velocity rises"


_CLASSES: dict[str, str] = {}


def _compartment_class(run: SimulationResult, compartment_id: str) -> str:
    if not _CLASSES:
        for locker in _jsonl(run.out_dir / "reference" / "lockers.jsonl"):
            for c in locker["compartments"]:
                _CLASSES[c["compartment_id"]] = c["product_class"]
    return _CLASSES[compartment_id]


# -- cold chain -----------------------------------------------------------------------------------


def _out_of_range_runs(valid: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[str, str, int]]]:
    """Per compartment: (first, last, readings) of each run of consecutive out-of-range readings."""
    series: defaultdict[str, list[tuple[str, float, str]]] = defaultdict(list)
    for e in valid["locker_telemetry"]:
        series[e["compartment_id"]].append((e["occurred_at"], e["temperature_c"], e["product_class"]))
    runs: dict[str, list[tuple[str, str, int]]] = {}
    for comp, readings in series.items():
        readings.sort()
        out: list[tuple[str, str, int]] = []
        current: list[str] = []
        for at, temp, cls in readings + [("~", 0.0, "ambient")]:
            lo, hi = TEMPERATURE_RANGES[cls]
            bad = (lo is not None and temp < lo) or (hi is not None and temp > hi)
            if bad:
                current.append(at)
            elif current:
                out.append((current[0], current[-1], len(current)))
                current = []
        runs[comp] = out
    return runs


def test_excursions_and_door_spikes_are_exactly_the_out_of_range_runs(
    valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]
) -> None:
    minimum = timedelta(minutes=CFG.excursion_min_minutes)
    runs = _out_of_range_runs(valid)
    found = {(c, _at(a), _at(b), n) for c, rs in runs.items() for a, b, n in rs}
    excursions = {(x["compartment_id"], _at(x["start"]), _at(x["end"]), x["readings_out_of_range"]) for x in truth["excursions"]}
    spikes = {(x["compartment_id"], _at(x["start"]), _at(x["end"]), x["readings_out_of_range"]) for x in truth["door_spikes"]}
    assert len(excursions) >= 5 and len(spikes) >= 20
    assert found == excursions | spikes
    assert all(b - a >= minimum for _, a, b, _ in excursions)
    assert all(n * CFG.telemetry_every_s < minimum.total_seconds() for *_, n in spikes)
    assert {x["cause"] for x in truth["excursions"]} <= {"door_left_open", "power_cut", "compressor_fault"}
    assert "door_left_open" in {x["cause"] for x in truth["excursions"]}
    # ambient goods stay under a 30 °C storage limit, whatever happens to the locker
    assert max(e["temperature_c"] for e in valid["locker_telemetry"] if e["product_class"] == "ambient") <= 30.0
    # door spikes show the door open; power cuts show the power off
    open_at = {(e["compartment_id"], _at(e["occurred_at"])) for e in valid["locker_telemetry"] if e["door"] == "open"}
    assert all((c, a) in open_at for c, a, _, _ in spikes)
    unpowered = {(e["compartment_id"], _at(e["occurred_at"])) for e in valid["locker_telemetry"] if e["power"] != "mains"}
    for x in truth["excursions"]:
        if x["cause"] == "power_cut":  # the compartment was off mains when it went out of range
            assert (x["compartment_id"], _at(x["start"])) in unpowered


def test_temperature_claims_concentrate_on_orders_caught_in_excursions(
    valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]
) -> None:
    windows: defaultdict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for x in truth["excursions"]:
        windows[x["compartment_id"]].append((_at(x["start"]), _at(x["end"])))
    # recompute "affected" from the truth files, independently of the simulator's own flag
    slot_end = {e["order_id"]: _at(e["delivery_slot_end"]) for e in valid["order"]}
    affected: set[str] = set()
    for o in truth["orders"]:
        loaded = _at(o["loaded_at"])
        left = _at(o["left_locker_at"])
        # goods leave at pickup, or are cleared 48 h after the slot ends (the cold-chain job's rule)
        expected = _at(o["picked_up_at"]) if o["picked_up_at"] else slot_end[o["order_id"]] + timedelta(hours=48)
        assert left == expected and left > loaded
        if any(loaded <= end and left >= start for start, end in windows[o["compartment_id"]]):
            affected.add(o["order_id"])
    assert affected == {o["order_id"] for o in truth["orders"] if o["excursion_affected"]}
    claims = [e for e in valid["return"] if e["kind"] == "claim" and e["reason"] == "temperature"]
    on_affected = sum(e["order_id"] in affected for e in claims)
    n_orders = len(truth["orders"])
    rate_affected = on_affected / len(affected)
    rate_other = (len(claims) - on_affected) / (n_orders - len(affected))
    assert len(affected) >= 30
    assert rate_affected > 20 * rate_other
    assert on_affected > 0.5 * len(claims)
    # and those orders get worse reviews
    stars = defaultdict(list)
    for e in valid["review"]:
        stars[e["order_id"] in affected].append(e["stars"])
    assert sum(stars[True]) / len(stars[True]) < sum(stars[False]) / len(stars[False]) - 1.5


def test_packaging_returns_and_claim_abusers(valid: dict[str, list[dict[str, Any]]], truth: dict[str, list[dict[str, Any]]]) -> None:
    packaging = [e for e in valid["return"] if e["kind"] == "packaging"]
    assert len(packaging) > 0.05 * len(truth["orders"])
    abusers = {p["person_id"] for p in truth["persons"] if p["claim_abuser"]}
    # Orders carrying a bad batch draw quality claims from everyone: compare on the others.
    bad = {b["batch_id"] for b in truth["bad_batches"]}
    spoiled = {o["order_id"] for o in valid["order"] if any(i["batch_id"] in bad for i in o["items"])}
    fair = [o for o in truth["orders"] if o["order_id"] not in spoiled]
    claims_by = Counter(o["person_id"] for o in fair if o["claim_reason"])
    orders_by = Counter(o["person_id"] for o in fair if o["picked_up_at"])
    rate = lambda people: sum(claims_by[p] for p in people) / max(1, sum(orders_by[p] for p in people))  # noqa: E731
    assert rate(abusers) > 5 * rate(set(orders_by) - abusers)


# -- sizing -------------------------------------------------------------------------------------


def test_sizing_estimate_and_for_total_events(run: SimulationResult) -> None:
    assert math.isclose(run.total_events, estimated_events(CFG), rel_tol=0.1)
    cfg = for_total_events(1_000_000, seed=5)
    assert cfg.seed == 5 and 40_000 <= cfg.orders <= 80_000
    assert math.isclose(estimated_events(cfg), 1_000_000, rel_tol=0.08)
    default = SimulationConfig()
    assert 150_000 <= estimated_events(default) <= 400_000
    with pytest.raises(ValueError):
        SimulationConfig(start=datetime(2026, 9, 8).date())  # a Tuesday


def test_power_cuts_show_up_as_unpowered_readings_and_excursions(tmp_path: Path) -> None:
    cfg = SimulationConfig(seed=9, orders=1_000, weeks=1, power_cuts_per_locker_week=4.0,
                           excursions_per_compartment_week=0.0, door_spikes_per_compartment_week=0.0,
                           malformed_share=0.0)
    result = simulate(cfg, tmp_path)
    excursions = _jsonl(tmp_path / "truth" / "excursions.jsonl")
    assert excursions and {x["cause"] for x in excursions} == {"power_cut"}
    assert _jsonl(tmp_path / "truth" / "door_spikes.jsonl") == []
    readings = [orjson.loads(line) for line in result.files["locker_telemetry"].read_bytes().splitlines()]
    state = {(r["compartment_id"], r["occurred_at"]): r for r in readings}
    for x in excursions:
        first = state[(x["compartment_id"], x["start"].replace(".000", ""))]
        assert first["power"] in ("battery", "off") and first["temperature_c"] > TEMPERATURE_RANGES[x["product_class"]][1]
    lockers = {x["locker_id"] for x in excursions}
    battery = {lk["locker_id"]: lk["has_battery"] for lk in _jsonl(tmp_path / "reference" / "lockers.jsonl")}
    for r in readings:
        if r["locker_id"] in lockers and r["power"] != "mains":
            assert r["power"] == ("battery" if battery[r["locker_id"]] else "off")
