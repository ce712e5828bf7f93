"""The business time zone is one setting: LASTMILE_BUSINESS_TZ, read by Python, passed to dbt.

Fast: no warehouse. The dbt side is exercised by tests/test_customer_metrics_agree.py (the
live counters' day equals dbt's business_date on the same orders).
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import yaml

from lastmile import transform
from lastmile.config import settings
from lastmile.features.realtime import OrderFact, TodayCounters, business_day

ROOT = Path(__file__).resolve().parent.parent


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _vars(args: list[str]) -> dict:
    return yaml.safe_load(args[args.index("--vars") + 1])


def test_the_zone_is_read_once_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LASTMILE_BUSINESS_TZ", raising=False)
    assert settings().business_tz == "Asia/Shanghai"
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "Europe/Berlin")
    assert settings().business_tz == "Europe/Berlin"
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="LASTMILE_BUSINESS_TZ='Mars/Olympus_Mons' is not an IANA time zone"):
        settings()


def test_dbt_gets_the_zone_as_a_var_and_keeps_the_callers_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "Europe/Berlin")
    cfg = settings()
    # the batch-quality signal definition travels with the zone: dbt counts bad reviews and
    # claims exactly as batch_quality.yml (the alerts' file) defines them
    signals = yaml.safe_load((ROOT / "batch_quality.yml").read_text(encoding="utf-8"))["signals"]
    batch_quality = {key: sorted(signals[key]) if isinstance(signals[key], list) else signals[key]
                     for key in ("bad_stars", "quality_tags", "service_tags", "claim_reasons")}
    passed = _vars(transform._dbt_args(cfg, ["build", "--select", "dim_customer"]))
    assert passed == {"business_tz": "Europe/Berlin", "batch_quality": batch_quality}
    merged = _vars(transform._dbt_args(cfg, ["run", "--vars", "{lookback_minutes: 0}"]))
    assert merged == {"business_tz": "Europe/Berlin", "batch_quality": batch_quality, "lookback_minutes": 0}
    assert transform._dbt_args(cfg, ["run", "--vars", json.dumps({"business_tz": "UTC"})]).count("--vars") == 1
    assert _vars(transform._dbt_args(cfg, ["run", "--vars", json.dumps({"business_tz": "UTC"})]))["business_tz"] == "UTC"
    assert "--vars" not in transform._dbt_args(cfg, ["deps"])


def test_the_live_day_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """23:30 in Shanghai is 16:30 in Berlin (same day) and 10:30 in New York; 01:00 in Shanghai
    is the previous evening in Berlin. Counters cut "today" with the configured zone."""
    at = _ms("2026-10-05T17:30:00+00:00")  # 2026-10-06 01:30 in Shanghai, 19:30 in Berlin
    monkeypatch.delenv("LASTMILE_BUSINESS_TZ", raising=False)
    assert business_day(at) == date(2026, 10, 6)
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "Europe/Berlin")
    assert business_day(at) == date(2026, 10, 5)
    # daylight saving: New York's midnight is 04:00 UTC in summer, 05:00 in winter
    monkeypatch.setenv("LASTMILE_BUSINESS_TZ", "America/New_York")
    assert business_day(_ms("2026-07-01T04:30:00+00:00")) == date(2026, 7, 1)
    assert business_day(_ms("2026-12-01T04:30:00+00:00")) == date(2026, 11, 30)
    counters = TodayCounters(identities={"tok": ("P1", False)})
    counters.add([OrderFact("e1", ("tok",), _ms("2026-12-01T03:00:00+00:00"), 10.0, 0.0),  # Nov 30 evening in NY
                  OrderFact("e2", ("tok",), _ms("2026-12-01T06:00:00+00:00"), 5.0, 0.0)])  # Dec 1, 01:00 in NY
    row = counters.frame(["P1"]).iloc[0]
    assert (row["rt_orders_today"], row["rt_spend_today_cny"]) == (1, 5.0)


def test_no_module_hard_codes_the_zone_or_its_offset() -> None:
    """The zone's name and the +8 h offset live in lastmile.config (and dbt_project.yml's default
    for plain dbt) only; the simulator's clock renders its own world's local time."""
    pattern = re.compile(r"Asia/Shanghai|hours\s*=\s*8\b|8\s*\*\s*3600|\b28800\b|INTERVAL\s+8\s+HOUR", re.IGNORECASE)
    allowed = {ROOT / "lastmile" / "config.py", ROOT / "dbt" / "dbt_project.yml"}
    files = [*(ROOT / "lastmile").rglob("*.py"), *(ROOT / "dbt" / "models").rglob("*.sql"),
             *(ROOT / "dbt" / "macros").rglob("*.sql"), *(ROOT / "dbt" / "models").rglob("*.yml"),
             ROOT / "dbt" / "dbt_project.yml", *(ROOT / "feature_store").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files if p not in allowed and "simulator" not in p.parts
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found
