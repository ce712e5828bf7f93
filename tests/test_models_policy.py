"""The spending-health policy: the daily cap binds at-risk customers, not exempt or healthy ones."""

from __future__ import annotations

from datetime import date

from lastmile.models.policy import CapLedger, SpendingPolicy

RANKED = [{"sku": f"SK{i:04d}", "score": -i, "category": c, "is_impulse": imp, "is_healthy": not imp}
          for i, (c, imp) in enumerate([("snacks", True), ("vegetables", False), ("fruit", False), ("drinks", True),
                                        ("grain", False), ("tofu", False), ("dairy", False), ("eggs", False)])]
DAY = date(2026, 11, 2)


def test_cap_applies_to_at_risk_customers_across_sends() -> None:
    policy, ledger = SpendingPolicy(daily_cap=3), CapLedger()
    first = policy.apply("oid_risk", RANKED, {"at_risk": True}, exempt=False, affinity={}, ledger=ledger, today=DAY, limit=10)
    assert first.capped and len(first.items) == 3 and not any(i["is_impulse"] for i in first.items)
    assert first.nudges and all(n["kind"] == "nutrition_balance" for n in first.nudges)
    sent = policy.record("oid_risk", [i["sku"] for i in first.items], {"at_risk": True}, False, ledger, DAY)
    assert sent.recorded == [i["sku"] for i in first.items] and sent.shown_today == 3 and sent.cap == 3
    second = policy.apply("oid_risk", RANKED, {"at_risk": True}, exempt=False, affinity={}, ledger=ledger, today=DAY, limit=10)
    assert second.items == [] and second.shown_today == 3
    over = policy.record("oid_risk", ["SK0007"], {"at_risk": True}, False, ledger, DAY)
    assert over.recorded == [] and over.refused == ["SK0007"] and over.shown_today == 3
    tomorrow = policy.apply("oid_risk", RANKED, {"at_risk": True}, exempt=False, affinity={}, ledger=ledger,
                            today=date(2026, 11, 3), limit=10)
    assert len(tomorrow.items) == 3


def test_reading_recommendations_counts_nothing() -> None:
    policy, ledger = SpendingPolicy(daily_cap=3), CapLedger()
    for _ in range(25):
        d = policy.apply("oid_risk", RANKED, {"at_risk": True}, exempt=False, affinity={}, ledger=ledger, today=DAY, limit=10)
        assert len(d.items) == 3 and d.shown_today == 0
    assert ledger.shown("oid_risk", DAY) == 0


def test_a_retried_send_is_counted_once() -> None:
    policy, ledger = SpendingPolicy(daily_cap=3), CapLedger()
    first = policy.record("oid_risk", ["SK0001", "SK0002"], {"at_risk": True}, False, ledger, DAY, send_id="s1")
    again = policy.record("oid_risk", ["SK0001", "SK0002"], {"at_risk": True}, False, ledger, DAY, send_id="s1")
    assert first.recorded == again.recorded == ["SK0001", "SK0002"] and again.shown_today == 2


def test_declared_dietary_need_is_exempt_from_the_cap() -> None:
    policy, ledger = SpendingPolicy(daily_cap=3), CapLedger()
    for _ in range(3):
        d = policy.apply("oid_diet", RANKED, {"at_risk": True}, exempt=True, affinity={}, ledger=ledger, today=DAY, limit=5)
        assert d.exempt and not d.capped and len(d.items) == 5
        sent = policy.record("oid_diet", [i["sku"] for i in d.items], {"at_risk": True}, True, ledger, DAY)
        assert sent.refused == [] and not sent.capped


def test_healthy_customers_are_not_capped() -> None:
    policy, ledger = SpendingPolicy(daily_cap=3), CapLedger()
    d = policy.apply("oid_ok", RANKED, {"at_risk": False}, exempt=False, affinity={}, ledger=ledger, today=DAY, limit=8)
    assert not d.capped and len(d.items) == 8 and d.nudges == []
