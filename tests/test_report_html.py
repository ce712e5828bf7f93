"""The HTML report: plotly charts from the marts in one self-contained file that renders offline.

Opened in a real headless browser (Debian's Chromium, see tests/browser.py) with every
non-local request blocked: each chart must draw its traces with no console error.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from lastmile import report, transform
from lastmile.config import Settings
from lastmile.warehouse import connect
from tests.browser import is_local, offline_page
from tests.warehouses import simulated_home

#: What each rendered chart looks like in the page (plotly's DOM: one svg.main-svg per plot).
CHARTS_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
    id: d.id,
    svgs: d.querySelectorAll('svg.main-svg').length,
    traces: d.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length,
    points: d.querySelectorAll('.scatterlayer .point, .barlayer .point').length,
    data: (d.data || []).length,
    ticks: Array.from(d.querySelectorAll('.ytick text'))  // top to bottom, as a reader sees them
        .sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top).map(t => t.textContent),
    notes: Array.from(d.querySelectorAll('.annotation-text')).map(t => t.textContent),
}))"""


class _Tags(HTMLParser):
    """The page's elements with their attributes (script bodies are not parsed as markup)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _assert_self_contained(text: str) -> None:
    tags = _tags(text)
    assert not [a for t, a in tags if t == "script" and a.get("src")], "a script is loaded from elsewhere"
    remote = [a[k] for _, a in tags for k in ("src", "href") if a.get(k) and not is_local(a[k] or "") and not a[k].startswith("#")]
    assert remote == []
    assert text.count(get_plotlyjs()[:500]) == 1, "plotly.js must be inlined exactly once"


def _open(path: Path, charts: int, screenshot: Path | None = None) -> tuple[list[dict], object]:
    with offline_page() as browser:
        browser.page.goto(path.as_uri(), wait_until="load")
        browser.page.wait_for_function(
            f"document.querySelectorAll('.plotly-graph-div svg.main-svg').length >= {charts}", timeout=30_000)
        rendered = browser.page.evaluate(CHARTS_JS)
        if screenshot is not None:
            browser.page.screenshot(path=str(screenshot), full_page=True)
        return rendered, browser


def test_line_chart_draws_every_series_and_leaves_gaps() -> None:
    fig = report.line_chart(["w1", "w2", "w3"], {"C01": [80.0, None, 70.0], "C02": [60.0, 65.0, 66.0]}, "t", (0, 100))
    assert [t.name for t in fig.data] == ["C01", "C02"]
    assert list(fig.data[0].y) == [80.0, None, 70.0] and fig.data[0].connectgaps is False
    assert sum(v is not None for t in fig.data for v in t.y) == 5
    assert tuple(fig.layout.yaxis.range) == (0, 100)


def test_charts_escape_labels_and_handle_no_data() -> None:
    fig = report.hbar_chart(["<script>x</script>"], [3.0], "t")
    assert list(fig.data[0].y) == ["&lt;script&gt;x&lt;/script&gt;"]
    page = report.render([report.Section("<b>t</b>", fig, "SELECT '<x>'")], "s")
    assert "<script>x" not in page and "&lt;b&gt;t&lt;/b&gt;" in page
    for empty in (report.line_chart([], {}, "empty"), report.bar_chart([], {}, "empty")):
        assert len(empty.data) == 0 and empty.layout.annotations[0].text == "No data."


def test_a_page_of_charts_renders_offline_in_a_browser(tmp_path: Path) -> None:
    sections = [
        report.Section("lines", report.line_chart(["w1", "w2", "w3"], {"C01": [80.0, None, 70.0], "C02": [60.0, 65.0, 66.0]},
                                                  "lines", (0, 100)), "SELECT 1"),
        report.Section("stacked", report.bar_chart(["C01", "C02"], {"gold": [3, 4], "silver": [5, 1]}, "tiers"), "SELECT 2"),
        report.Section("ranking", report.hbar_chart(["<script>alert(1)</script>", "SK0002 南瓜"], [9.0, 4.0], "top"), "SELECT 3"),
        report.Section("empty", report.line_chart([], {}, "nothing"), "SELECT 4"),
    ]
    path = tmp_path / "charts.html"
    path.write_text(report.render(sections, "synthetic"), encoding="utf-8")
    _assert_self_contained(path.read_text(encoding="utf-8"))
    rendered, browser = _open(path, charts=4)
    assert browser.errors == [] and browser.blocked == [] and browser.dialogs == []
    lines, stacked, ranking, empty = rendered
    assert lines["traces"] == 2 and lines["points"] == 5  # the missing week draws no marker
    assert stacked["traces"] == 2 and stacked["points"] == 4
    assert ranking["ticks"] == ["<script>alert(1)</script>", "SK0002 南瓜"]  # shown as text, never run
    assert empty["svgs"] >= 1 and empty["traces"] == 0 and empty["notes"] == ["No data."]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("report") / "home"
    with simulated_home(home, ("simulate", "--orders", "3000", "--weeks", "3"), ("ingest",)) as current:
        built = transform.run(current)
        assert built.success, built.failures
        yield current


@pytest.mark.slow
def test_report_has_every_chart_and_no_external_resources(cfg: Settings, tmp_path: Path) -> None:
    path = report.write_report(cfg, tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    assert text.count('class="plotly-graph-div"') == 5
    for title in ("Service temperature", "credit", "Alliance health", "Cold-chain", "Top SKUs"):
        assert title in text
    _assert_self_contained(text)
    wh = connect(cfg)
    community = wh.scalar("SELECT any(grain_id) FROM service_temperature_index WHERE grain = 'community'")
    assert community in text
    top_sku = wh.scalar("SELECT sku FROM fct_order_lines GROUP BY sku ORDER BY sum(line_amount_cny) DESC LIMIT 1")
    assert top_sku in text
    # The gold share printed under the tier chart is the mart's.
    gold = wh.scalar("SELECT 100 * countIf(credit_tier = 'gold') / count() FROM neighbor_credit_score")
    assert f"{community} {gold:.1f}%" in text

    # Every chart renders in a real browser with the network cut off.
    screenshot = tmp_path / "report.png"
    rendered, browser = _open(path, charts=5, screenshot=screenshot)
    assert browser.errors == [] and browser.blocked == []
    assert [c["id"] for c in rendered] == [f"chart-{i}" for i in range(1, 6)]
    for chart in rendered:
        assert chart["svgs"] >= 1 and chart["data"] > 0 and chart["traces"] == chart["data"] and chart["points"] > 0, chart
    top_chart = rendered[-1]
    assert top_chart["ticks"][0].startswith(top_sku)  # largest first
    assert screenshot.stat().st_size > 20_000


@pytest.mark.slow
def test_report_refuses_without_marts(cfg: Settings, tmp_path: Path) -> None:
    connect(cfg).command("RENAME TABLE alliance_health_index TO alliance_health_index_hidden")
    try:
        with pytest.raises(FileNotFoundError, match="alliance_health_index"):
            report.write_report(cfg, tmp_path / "r.html")
    finally:
        connect(cfg).command("RENAME TABLE alliance_health_index_hidden TO alliance_health_index")
