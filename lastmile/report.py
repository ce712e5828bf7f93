"""A static HTML report from the marts: one file, charts as inline SVG, no CDN, no JavaScript.

Why hand-drawn SVG: the environment has no plotting library that can render offline
(matplotlib and plotly are not installed; altair is, but turning a chart into an image needs
vl-convert, which is not), and a report that loads scripts from a CDN breaks on the
intranets where these reports are read. Line and bar charts are a few dozen lines of SVG.

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

from lastmile.config import Settings, settings as current_settings

PALETTE = ("#d1495b", "#00798c", "#edae49", "#66a182", "#2e4057", "#8d96a3", "#9b5de5", "#f15bb5", "#00bbf9", "#fee440")
WIDTH, HEIGHT = 760, 300
MARGIN = {"left": 56, "right": 150, "top": 16, "bottom": 48}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    step = (high - low) / n
    return [low + i * step for i in range(n + 1)]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"


def _frame(y_low: float, y_high: float, x_labels: Sequence[str]) -> tuple[list[str], Any, Any]:
    """Axes and grid; returns (svg parts, x position of label i, y position of value)."""
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    n = max(1, len(x_labels))

    def x_at(i: float) -> float:
        return MARGIN["left"] + (i + 0.5) * plot_w / n

    def y_at(v: float) -> float:
        span = (y_high - y_low) or 1
        return MARGIN["top"] + plot_h * (1 - (v - y_low) / span)

    parts = []
    for t in _ticks(y_low, y_high):
        y = y_at(t)
        parts.append(f'<line x1="{MARGIN["left"]}" x2="{MARGIN["left"] + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{MARGIN["left"] - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_e(_fmt(t))}</text>')
    every = max(1, n // 10)
    for i, label in enumerate(x_labels):
        if i % every == 0:
            parts.append(f'<text x="{x_at(i):.1f}" y="{HEIGHT - MARGIN["bottom"] + 16}" text-anchor="middle" font-size="11">{_e(label)}</text>')
    parts.append(f'<line x1="{MARGIN["left"]}" x2="{MARGIN["left"]}" y1="{MARGIN["top"]}" y2="{MARGIN["top"] + plot_h}" stroke="#999"/>')
    return parts, x_at, y_at


def _legend(names: Sequence[str]) -> list[str]:
    x = WIDTH - MARGIN["right"] + 14
    out = []
    for k, name in enumerate(names[:14]):
        y = MARGIN["top"] + 14 + 18 * k
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 16}" y="{y}" font-size="11">{_e(name)}</text>')
    return out


def _svg(parts: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-label="{_e(title)}" font-family="sans-serif">' + "".join(parts) + "</svg>")


def line_chart(x_labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
               y_range: tuple[float, float] | None = None) -> str:
    """One line per series over shared x labels; None leaves a gap."""
    values = [v for s in series.values() for v in s if v is not None]
    if not values:
        return _empty(title)
    low, high = y_range or (min(values), max(values))
    if y_range is None:
        pad = (high - low) * 0.1 or 1
        low, high = low - pad, high + pad
    parts, x_at, y_at = _frame(low, high, x_labels)
    for k, (name, points) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        segment: list[str] = []
        for i, v in enumerate(points):
            if v is None:
                if len(segment) > 1:
                    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(segment)}"/>')
                segment = []
                continue
            segment.append(f"{x_at(i):.1f},{y_at(v):.1f}")
            parts.append(f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="2.5" fill="{color}"><title>{_e(name)} {_e(x_labels[i])}: {v:.1f}</title></circle>')
        if len(segment) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(segment)}"/>')
    parts += _legend(list(series))
    return _svg(parts, title)


def bar_chart(x_labels: Sequence[str], stacks: dict[str, Sequence[float]], title: str) -> str:
    """Vertical bars, stacked when there are several series."""
    if not x_labels or not stacks:
        return _empty(title)
    totals = [sum(s[i] for s in stacks.values()) for i in range(len(x_labels))]
    parts, x_at, y_at = _frame(0, max(totals) * 1.1 or 1, x_labels)
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    bar_w = 0.7 * plot_w / len(x_labels)
    base = [0.0] * len(x_labels)
    for k, (name, values) in enumerate(stacks.items()):
        color = PALETTE[k % len(PALETTE)]
        for i, v in enumerate(values):
            if v <= 0:
                continue
            top, bottom = y_at(base[i] + v), y_at(base[i])
            parts.append(f'<rect x="{x_at(i) - bar_w / 2:.1f}" y="{top:.1f}" width="{bar_w:.1f}" height="{bottom - top:.1f}" '
                         f'fill="{color}"><title>{_e(name)} {_e(x_labels[i])}: {_fmt(v)}</title></rect>')
            base[i] += v
    if len(stacks) > 1:
        parts += _legend(list(stacks))
    return _svg(parts, title)


def hbar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    """Horizontal bars, largest first (rankings such as top SKUs)."""
    if not labels:
        return _empty(title)
    left, right = 190, 60
    row = 22
    height = 20 + row * len(labels)
    top = max(values) or 1
    parts = []
    for i, (label, v) in enumerate(zip(labels, values)):
        y = 10 + i * row
        w = (WIDTH - left - right) * v / top
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="11">{_e(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{PALETTE[1]}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}" font-size="11">{_e(_fmt(v))}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'role="img" aria-label="{_e(title)}" font-family="sans-serif">' + "".join(parts) + "</svg>")


def _empty(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="60" role="img" aria-label="{_e(title)}">'
            f'<text x="10" y="35" font-family="sans-serif" font-size="13" fill="#777">No data.</text></svg>')


# -- sections -------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    chart: str
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
    """Query the marts and draw each chart."""
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
    body = []
    for s in sections:
        note = f"<p>{_e(s.note)}</p>" if s.note else ""
        body.append(f"<section><h2>{_e(s.title)}</h2>{note}{s.chart}<details><summary>SQL</summary><pre>{_e(s.sql)}</pre></details></section>")
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
