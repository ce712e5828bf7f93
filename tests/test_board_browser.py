"""The board in a real headless browser (Debian's Chromium via Playwright, offline): every
view loads with no console error and nothing fetched from the network, every panel draws,
figures on the page equal their SQL, and new events move them without a page reload.

Screenshots of each view are written to the test run's temporary directory (the path is
printed: ``pytest -s`` shows it) for people to look at.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from lastmile.api_auth import create_key
from lastmile.config import settings
from lastmile.streaming.topics import topic_for
from lastmile.warehouse import close_all, connect
from tests.board_data import DAY, BoardScenario, build_board_warehouse, write_events
from tests.board_server import figure, serving, wait_drawn
from tests.browser import offline_page
from tests.factories import event
from tests.test_board import NOW, READY_SQL

PANELS = ("pickups", "satisfaction", "cold_chain", "sales", "alerts", "pipeline")
CHARTS = ("chart-stars", "chart-sti", "chart-hourly", "chart-quarantine")
#: (name, path, theme, viewport): the views a person looks at.
VIEWS = [("all-communities-wall", "/board", "light", (1600, 1000)),
         ("community-C01-dark", "/board/C01", "dark", (1600, 1000)),
         ("all-communities-phone-dark", "/board", "dark", (390, 844))]


@dataclass
class Served:
    scenario: BoardScenario
    url: str
    key: str
    screens: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LASTMILE_HOME", str(tmp_path_factory.mktemp("board-browser") / "home"))
        mp.setenv("LASTMILE_HASH_KEY", "test-key-not-secret")
        mp.setenv("LASTMILE_BUSINESS_TZ", "Asia/Shanghai")
        mp.delenv("LASTMILE_CLICKHOUSE_URL", raising=False)
        close_all()
        scenario = build_board_warehouse(settings())
        _, key = create_key(scenario.cfg, "wall", ["board:read"])
        screens = tmp_path_factory.mktemp("board-screenshots")
        with serving(scenario.cfg) as url:
            yield Served(scenario, url, key, screens)
        close_all()


@pytest.mark.parametrize("name,path,theme,viewport", VIEWS, ids=[v[0] for v in VIEWS])
def test_every_view_loads_offline_with_every_panel_drawn(served: Served, name: str, path: str, theme: str,
                                                         viewport: tuple[int, int]) -> None:
    with offline_page(*viewport) as seen:
        page = seen.page
        page.goto(f"{served.url}{path}?key={served.key}&theme={theme}")
        assert page.url == f"{served.url}{path}?theme={theme}"  # the key left the address for a cookie
        wait_drawn(page)
        page.wait_for_timeout(300)  # let plotly finish its layout before the picture
        shot = served.screens / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert seen.errors == [] and seen.blocked == [] and seen.dialogs == []
        assert page.evaluate("document.documentElement.getAttribute('data-theme')") == theme
        for panel in PANELS:
            section = page.locator(f"section[data-panel='{panel}']")
            assert section.is_visible(), panel
            drawn = section.locator("[data-figure]")
            assert all(drawn.nth(i).get_attribute("data-value") is not None for i in range(drawn.count())), panel
        for chart in CHARTS:
            assert page.locator(f"#{chart} .main-svg").count() >= 1, chart
        assert page.locator("#lockers .tile").count() == (3 if path.endswith("C01") else 5)
        assert "2026-11-20" in page.locator("#asof").inner_text()
        if viewport[0] < 500:  # a phone: one column, nothing wider than the screen
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0] + 1
    assert shot.stat().st_size > 10_000


def test_figures_on_the_page_equal_their_sql(served: Served) -> None:
    ready = {c: (int(r), int(k), int(o)) for c, r, k, o in connect().rows(READY_SQL, {"day": DAY, "now": NOW})}
    with offline_page(1400, 900) as seen:
        page = seen.page
        page.goto(f"{served.url}/board/C01?key={served.key}")
        wait_drawn(page)
        assert (int(figure(page, "pickups.ready")), int(figure(page, "pickups.collected")),
                int(figure(page, "pickups.overdue"))) == ready["C01"]
        assert float(figure(page, "pickups.completion_rate")) == round(ready["C01"][1] / ready["C01"][0], 4)
        orders = connect().scalar("SELECT uniqExact(order_id) FROM raw_order FINAL WHERE community_id = 'C01' "
                                  "AND toDate(occurred_at, 'Asia/Shanghai') = {day:Date}", {"day": DAY})
        assert int(figure(page, "sales.orders_today")) == orders
        stars = connect().scalar("SELECT avg(r.stars) FROM raw_review AS r FINAL JOIN (SELECT DISTINCT order_id FROM raw_order "
                                 "WHERE community_id = 'C01') AS o ON o.order_id = r.order_id "
                                 "WHERE toDate(r.occurred_at, 'Asia/Shanghai') = {day:Date}", {"day": DAY})
        assert float(figure(page, "satisfaction.stars_today")) == round(stars, 2)
        temperature = connect().scalar("SELECT argMax(temperature_c, occurred_at) FROM raw_locker_telemetry "
                                       "WHERE compartment_id = 'L-C01-1-K01'")
        tile = page.locator("[data-compartment='L-C01-1-K01']")
        assert float(tile.locator("[data-temperature]").get_attribute("data-temperature")) == temperature
        assert tile.get_attribute("data-state") == "excursion"
        assert page.locator("#pickups-table tbody tr").count() == 2  # C01's two lockers
        assert seen.errors == []


def test_new_events_move_the_figures_without_a_reload(served: Served) -> None:
    with offline_page(1400, 900) as seen:
        page = seen.page
        page.goto(f"{served.url}/board?key={served.key}")
        wait_drawn(page)
        page.evaluate("window.stillTheSamePage = true")
        before = int(figure(page, "pickups.collected"))
        assert page.locator("[data-compartment='L-C01-1-K01']").get_attribute("data-state") == "excursion"
        late = [event("pickup", occurred_at="2026-11-20T11:50:00+08:00", order_id="ord-b2", locker_id="L-C01-1",
                      compartment_id="L-C01-1-K01"),
                event("locker_telemetry", occurred_at="2026-11-20T12:01:00+08:00", locker_id="L-C01-1",
                      compartment_id="L-C01-1-K01", community_id="C01", product_class="chilled", temperature_c=2.0)]
        written = time.monotonic()
        # Playwright's sync API keeps an event loop in this thread; the write path runs its own.
        writer = threading.Thread(target=write_events, args=(served.scenario.cfg, [orjson.dumps(e) for e in late],
                                                             [topic_for(e["event_type"]) for e in late]))
        writer.start()
        writer.join(30)
        page.wait_for_function("document.querySelector(\"[data-figure='pickups.collected']\").getAttribute('data-value') == '%d'"
                               % (before + 1), timeout=5000)
        page.wait_for_function("document.querySelector(\"[data-compartment='L-C01-1-K01']\").getAttribute('data-state') == 'ok'",
                               timeout=max(100, int(5000 - 1000 * (time.monotonic() - written))))
        assert time.monotonic() - written < 5
        assert figure(page, "pickups.overdue") == "0"
        assert page.evaluate("window.stillTheSamePage") is True
        assert seen.errors == []
