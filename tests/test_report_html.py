"""The static BI report: charts from the marts, self-contained (no scripts, no CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from lastmile import report, transform
from lastmile.config import Settings, settings
from lastmile.warehouse import connect
from tests.warehouses import simulated_home

def test_line_chart_draws_every_series_and_leaves_gaps() -> None:
    svg = report.line_chart(["w1", "w2", "w3"], {"C01": [80.0, None, 70.0], "C02": [60.0, 65.0, 66.0]}, "t", (0, 100))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 5  # the missing point is not drawn
    assert svg.count("<polyline") == 1  # C01 has no two consecutive points; C02 is one line
    assert "C01" in svg and "C02" in svg

def test_charts_escape_labels_and_handle_no_data() -> None:
    svg = report.hbar_chart(["<script>x</script>"], [3.0], "t")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "No data" in report.line_chart([], {}, "empty")
    assert "No data" in report.bar_chart([], {}, "empty")

@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("report") / "home"
    with simulated_home(home, ("simulate", "--orders", "3000", "--weeks", "3"), ("ingest",)) as current:
        built = transform.run(current)
        assert built.success, built.failures
        yield current

@pytest.mark.slow
def test_report_has_every_chart_and_no_external_resources(cfg: Settings, tmp_path) -> None:
    path = report.write_report(cfg, tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    assert text.count("<svg") == 5
    for title in ("Service temperature", "credit", "Alliance health", "Cold-chain", "Top SKUs"):
        assert title in text
    # Self-contained: no scripts, no remote URLs besides the SVG namespace.
    assert "<script" not in text
    assert not re.findall(r"(?:src|href)=\"https?://", text)
    wh = connect(cfg)
    community = wh.scalar("SELECT any(grain_id) FROM service_temperature_index WHERE grain = 'community'")
    assert community in text
    top_sku = wh.scalar("SELECT sku FROM fct_order_lines GROUP BY sku ORDER BY sum(line_amount_cny) DESC LIMIT 1")
    assert top_sku in text
    # The gold share printed under the tier chart is the mart's.
    gold = wh.scalar("SELECT 100 * countIf(credit_tier = 'gold') / count() FROM neighbor_credit_score")
    assert f"{community} {gold:.1f}%" in text

@pytest.mark.slow
def test_report_refuses_without_marts(cfg: Settings, tmp_path) -> None:
    connect(cfg).command("RENAME TABLE alliance_health_index TO alliance_health_index_hidden")
    try:
        with pytest.raises(FileNotFoundError, match="alliance_health_index"):
            report.write_report(cfg, tmp_path / "r.html")
    finally:
        connect(cfg).command("RENAME TABLE alliance_health_index_hidden TO alliance_health_index")
