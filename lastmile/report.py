"""The HTML report from the marts: one file with interactive charts that opens offline.

Charts are plotly figures. The report is ONE self-contained HTML file: plotly.js (shipped
inside the plotly wheel) is inlined once, before the first chart, and every later chart
uses it; nothing is loaded from a CDN, so the file works on intranets and as an e-mail
attachment. Labels from the data are HTML-escaped before plotly sees them (plotly renders
a subset of HTML tags in text), and plotly escapes its JSON inside the page.

Every chart is one SQL query over a mart, shown under the chart, so an analyst can rebuild it
in any BI tool connected to ClickHouse.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from lastmile.config import Settings, settings as current_settings

PALETTE = ("#d1495b", "#00798c", "#edae49", "#66a182", "#2e4057", "#8d96a3", "#9b5de5", "#f15bb5", "#00bbf9", "#fee440")
WIDTH, HEIGHT = 780, 340
#: plotly.js options: no plotly logo (a link off the page); charts follow the page width.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(title: str, height: int = HEIGHT) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template="plotly_white", width=WIDTH, height=height, colorway=list(PALETTE),
                      margin={"l": 56, "r": 20, "t": 16, "b": 48}, font={"family": "sans-serif", "size": 12},
                      meta={"title": _e(title)}, legend={"font": {"size": 11}})
    return fig


def _empty(title: str) -> go.Figure:
    """A chart with no trace that says so (a mart with no rows yet)."""
    fig = _figure(title, height=120)
    fig.add_annotation(text="No data.", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": "#777"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def line_chart(x_labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
               y_range: tuple[float, float] | None = None) -> go.Figure:
    """One line per series over shared x labels; None leaves a gap (the line is not bridged)."""
    if not any(v is not None for s in series.values() for v in s):
        return _empty(title)
    fig = _figure(title)
    labels = [_e(x) for x in x_labels]
    for name, points in series.items():
        fig.add_trace(go.Scatter(x=labels, y=list(points), name=_e(name), mode="lines+markers", connectgaps=False,
                                 marker={"size": 5}, hovertemplate="%{x}: %{y:.1f}"))
    fig.update_xaxes(type="category")
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def bar_chart(x_labels: Sequence[str], stacks: dict[str, Sequence[float]], title: str) -> go.Figure:
    """Vertical bars, stacked when there are several series."""
    if not x_labels or not stacks:
        return _empty(title)
    fig = _figure(title)
    labels = [_e(x) for x in x_labels]
    for name, values in stacks.items():
        fig.add_trace(go.Bar(x=labels, y=list(values), name=_e(name), hovertemplate="%{x}: %{y:,}"))
    fig.update_layout(barmode="stack", showlegend=len(stacks) > 1)
    fig.update_xaxes(type="category")
    return fig


def hbar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> go.Figure:
    """Horizontal bars, largest first at the top (rankings such as top SKUs)."""
    if not labels:
        return _empty(title)
    fig = _figure(title, height=60 + 24 * len(labels))
    fig.add_trace(go.Bar(x=list(values), y=[_e(label) for label in labels], orientation="h", marker_color=PALETTE[1],
                         text=[f"{v:,.0f}" for v in values], textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}: %{x:,.0f}", name=_e(title)))
    fig.update_layout(margin={"l": 200, "r": 60, "t": 10, "b": 30}, showlegend=False)
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


# -- sections -------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    chart: go.Figure
    sql: str
    note: str = ""


def _pivot(rows: list[tuple], x: int, series: int, y: int) -> tuple[list[str], dict[str, list[float | None]]]:
    xs = sorted({str(r[x]) for r in rows})
    names = sorted({str(r[series]) for r in rows})
    grid: dict[str, list[float | None]] = {n: [None] * len(xs) for n in names}
    index = {v: i for i, v in enumerate(xs)}
    for r in rows:
        grid[str(r[series])][index[str(r[x])]] = None if r[y] is None else float(r[y])
    return xs, grid


SQL_STI = """SELECT week_start, grain_id AS community_id, service_temperature, cold_chain_score
FROM service_temperature_index WHERE grain = 'community' ORDER BY week_start, community_id"""
SQL_TIERS = """SELECT home_community_id, credit_tier, count() AS people
FROM neighbor_credit_score GROUP BY home_community_id, credit_tier ORDER BY home_community_id"""
SQL_AHI = """SELECT week_start, concat(alliance_id, ' · ', community_id) AS alliance_community, alliance_health
FROM alliance_health_index ORDER BY week_start"""
SQL_INCIDENTS = """SELECT incident_week, community_id, count() AS incidents
FROM fct_cold_chain_incidents GROUP BY incident_week, community_id ORDER BY incident_week"""
SQL_COMPLIANCE = """SELECT week_start, community_id, 100 * sum(readings - readings_in_range) / sum(readings) AS out_of_range_pct
FROM int_compartment_weekly_compliance GROUP BY week_start, community_id ORDER BY week_start"""
SQL_SKUS = """SELECT concat(l.sku, ' ', any(s.sku_name)) AS sku, round(sum(l.line_amount_cny)) AS revenue_cny
FROM fct_order_lines AS l LEFT JOIN stg_reference__skus AS s ON s.sku = l.sku
GROUP BY l.sku ORDER BY revenue_cny DESC LIMIT 15"""


def build_sections(warehouse: Any) -> list[Section]:
    """Query the marts and build each chart."""
    sections: list[Section] = []

    rows = warehouse.rows(SQL_STI)
    xs, series = _pivot(rows, 0, 1, 2)
    sections.append(Section("Service temperature (服务温度指数) by community, weekly",
                            line_chart(xs, series, "service temperature", (0, 100)), SQL_STI,
                            "Weighted total of six 0–100 dimensions; the cold-chain dimension falls in weeks with temperature excursions."))

    rows = warehouse.rows(SQL_TIERS)
    communities = sorted({r[0] for r in rows})
    tiers = ["gold", "silver", "bronze", "starter"]
    counts = {(r[0], r[1]): int(r[2]) for r in rows}
    stacks = {t: [counts.get((c, t), 0) for c in communities] for t in tiers}
    gold = ", ".join(f"{c} {100 * counts.get((c, 'gold'), 0) / max(1, sum(counts.get((c, t), 0) for t in tiers)):.1f}%" for c in communities)
    sections.append(Section("Neighbour credit (邻里信用) tier distribution", bar_chart(communities, stacks, "credit tiers"),
                            SQL_TIERS, f"Gold share per community (held at 15–18%): {gold}."))

    rows = warehouse.rows(SQL_AHI)
    xs, series = _pivot(rows, 0, 1, 2)
    sections.append(Section("Alliance health (联盟健康度), weekly", line_chart(xs, series, "alliance health", (0, 100)), SQL_AHI))

    tables = set(warehouse.tables())
    rows = warehouse.rows(SQL_INCIDENTS) if "fct_cold_chain_incidents" in tables else []
    if rows:
        xs = sorted({str(r[0]) for r in rows})
        comms = sorted({r[1] for r in rows})
        c = {(str(r[0]), r[1]): int(r[2]) for r in rows}
        sections.append(Section("Cold-chain incidents per week", bar_chart(xs, {k: [c.get((x, k), 0) for x in xs] for k in comms},
                                                                           "cold-chain incidents"), SQL_INCIDENTS))
    else:
        rows = warehouse.rows(SQL_COMPLIANCE)
        xs, series = _pivot(rows, 0, 1, 2)
        sections.append(Section("Cold-chain: share of readings out of range, weekly", line_chart(xs, series, "out of range %"),
                                SQL_COMPLIANCE, "fct_cold_chain_incidents is empty (the PyFlink cold-chain job has not run), "
                                "so this shows the telemetry-derived out-of-range share instead."))

    rows = warehouse.rows(SQL_SKUS)
    sections.append(Section("Top SKUs by revenue (CNY)", hbar_chart([r[0] for r in rows], [float(r[1]) for r in rows], "top SKUs"),
                            SQL_SKUS))
    return sections


def render(sections: Sequence[Section], subtitle: str) -> str:
    """The whole page: plotly.js inlined with the first chart, the later charts reuse it."""
    body = []
    for i, s in enumerate(sections):
        note = f"<p>{_e(s.note)}</p>" if s.note else ""
        chart = s.chart.to_html(full_html=False, include_plotlyjs=(i == 0), config=PLOTLY_CONFIG, div_id=f"chart-{i + 1}")
        body.append(f"<section><h2>{_e(s.title)}</h2>{note}{chart}<details><summary>SQL</summary><pre>{_e(s.sql)}</pre>"
                    "</details></section>")
    return ("<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\"><title>lastmile report</title>"
            "<style>body{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}h2{font-size:1.1em;margin-top:2em}"
            "pre{background:#f6f6f6;padding:8px;font-size:12px;white-space:pre-wrap}p{color:#555}</style></head><body>"
            f"<h1>lastmile — service &amp; community health</h1><p>{_e(subtitle)}</p>" + "".join(body) + "</body></html>")


def write_report(cfg: Settings | None = None, path: Path | str | None = None) -> Path:
    """Write the report (default ``$LASTMILE_HOME/reports/report.html``) and return its path."""
    from lastmile.warehouse import connect

    cfg = cfg or current_settings()
    target = Path(path) if path else cfg.home / "reports" / "report.html"
    warehouse = connect(cfg)
    missing = [t for t in ("service_temperature_index", "neighbor_credit_score", "alliance_health_index", "fct_order_lines")
               if t not in set(warehouse.tables())]
    if missing:
        raise FileNotFoundError(f"marts missing: {', '.join(missing)} (run `lastmile transform` first)")
    where = "embedded chDB" if cfg.embedded else cfg.clickhouse_url
    subtitle = f"Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the marts in {where}, database {cfg.clickhouse_database}."
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(build_sections(warehouse), subtitle), encoding="utf-8")
    return target


def main() -> int:
    """``python -m lastmile.report``: write the report to its default place, print the path."""
    print(write_report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
