// The operations board: polls /board/api/board every POLL_MS and redraws in place.
// Every figure element carries data-figure="panel.path" and, once drawn, data-value with the
// exact number from the JSON (tests compare it with the SQL that defines the figure).
(function () {
  "use strict";
  var POLL_MS = 1500;
  var body = document.body;
  var community = body.getAttribute("data-community") || "";
  var params = new URLSearchParams(window.location.search);
  var asOf = params.get("as_of") || "";
  var latest = null;
  var timer = null;

  // --- theme ---------------------------------------------------------------------------
  function initialTheme() {
    var asked = params.get("theme");
    if (asked === "dark" || asked === "light") return asked;
    try { var kept = window.localStorage.getItem("lastmile-board-theme"); if (kept) return kept; } catch (e) { /* private mode */ }
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  function setTheme(theme) {
    document.documentElement.setAttribute("data-theme", theme);
    try { window.localStorage.setItem("lastmile-board-theme", theme); } catch (e) { /* private mode */ }
    if (latest) draw(latest);
  }
  document.documentElement.setAttribute("data-theme", initialTheme());
  document.getElementById("theme").addEventListener("click", function () {
    setTheme(document.documentElement.getAttribute("data-theme") === "dark" ? "light" : "dark");
  });

  // --- helpers -------------------------------------------------------------------------
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? null : o[k]; }, obj);
  }
  function num(v, digits) {
    return v == null ? "–" : Number(v).toLocaleString("zh-CN", { minimumFractionDigits: digits || 0, maximumFractionDigits: digits || 0 });
  }
  function fmt(v, kind) {
    if (v == null) return "–";
    switch (kind) {
      case "pct": return num(v * 100, 1) + "%";
      case "pct2": return num(v * 100, 2) + "%";
      case "min": return num(v, 1) + " min";
      case "secs":
        if (v >= 86400) return num(v / 86400, 1) + " d";
        if (v >= 3600) return num(v / 3600, 1) + " h";
        if (v >= 120) return num(v / 60, 1) + " min";
        return num(v, 2) + " s";
      case "rate": return num(v, 1);
      case "stars": return num(v, 2) + "★";
      case "score": return num(v, 1);
      case "cny": return "¥" + num(v, 2);
      default: return num(v, 0);
    }
  }
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function local(iso, withDate) {
    if (!iso) return "–";
    var d = new Date(iso);
    var opts = { timeZone: body.getAttribute("data-zone") || undefined, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    if (withDate) { opts.year = "numeric"; opts.month = "2-digit"; opts.day = "2-digit"; }
    return d.toLocaleString("zh-CN", opts);
  }
  function fill(tbody, rows) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    rows.forEach(function (cells) { tbody.appendChild(el("tr", {}, cells.map(function (c) { return el("td", {}, [String(c)]); }))); });
  }
  function list(ul, items) {
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    items.forEach(function (it) { ul.appendChild(el("li", { "class": it[0] }, [it[1]])); });
  }
  function plot(id, traces, layout) {
    if (!window.Plotly) return;
    var ink = css("--ink"), line = css("--line");
    var base = {
      margin: { l: 40, r: 10, t: 28, b: 36 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: ink, size: 12 }, showlegend: false,
      xaxis: { gridcolor: line, zerolinecolor: line }, yaxis: { gridcolor: line, zerolinecolor: line }
    };
    Object.keys(layout || {}).forEach(function (k) { base[k] = layout[k]; });
    window.Plotly.react(id, traces, base, { displayModeBar: false, responsive: true });
  }

  // --- drawing -------------------------------------------------------------------------
  function figures(board) {
    document.querySelectorAll("[data-figure]").forEach(function (node) {
      var path = node.getAttribute("data-figure").split(".");
      var panel = board.panels[path[0]];
      if (!panel) return;
      var figs = panel.figures;
      var rest = path.slice(1).join(".");
      var value = path[0] === "pickups" ? get(figs.total, rest) : get(figs, rest);
      node.textContent = fmt(value, node.getAttribute("data-format"));
      node.setAttribute("data-value", value == null ? "" : String(value));
    });
    document.querySelectorAll("[data-source]").forEach(function (node) {
      var panel = board.panels[node.getAttribute("data-source")];
      if (!panel) return;
      var absent = (panel.absent || []).map(function (a) { return a.query + " (缺表 missing " + a.missing_tables.join(", ") + ")"; });
      node.textContent = "来源 Source: " + panel.source + (absent.length ? " · 暂无 absent: " + absent.join("; ") : "");
      node.setAttribute("title", Object.keys(panel.definitions || {}).map(function (k) { return k + ": " + panel.definitions[k]; }).join("\n"));
    });
  }

  function pickups(f) {
    var byLocker = !!community;
    document.getElementById("pickups-key").textContent = byLocker ? "柜 Locker" : "社区 Community";
    var rows = (byLocker ? f.by_locker : f.by_community).map(function (r) {
      return [byLocker ? r.locker_id : r.community_id, num(r.ready), num(r.collected), fmt(r.completion_rate, "pct"),
              num(r.overdue), fmt(r.median_ready_to_pickup_min, "min")];
    });
    fill(document.querySelector("#pickups-table tbody"), rows);
  }

  var STI_LABELS = {
    traceability_score: "溯源 Traceability", cold_chain_score: "冷链 Cold chain", punctuality_score: "准时 Punctuality",
    communication_score: "沟通 Communication", after_sales_score: "售后 After-sales", packaging_score: "包装 Packaging"
  };
  function satisfaction(f) {
    document.getElementById("sti-week").textContent = f.sti_week_start ? "(" + f.sti_week_start + ")" : "";
    var days = f.by_day || [];
    plot("chart-stars", [{
      type: "bar", x: days.map(function (d) { return d.day.slice(5); }), y: days.map(function (d) { return d.stars; }),
      text: days.map(function (d) { return d.reviews + " 条 reviews"; }), marker: { color: css("--accent") },
      hovertemplate: "%{x}: %{y:.2f}★ (%{text})<extra></extra>"
    }], { title: { text: "近7日星级 Stars, 7 days", font: { size: 13 } }, yaxis: { range: [1, 5], gridcolor: css("--line") } });
    var dims = Object.keys(STI_LABELS);
    var sti = f.sti || {};
    var values = dims.map(function (d) { return sti[d] == null ? 0 : sti[d]; });
    plot("chart-sti", [{
      type: "scatterpolar", r: values.concat(values.slice(0, 1)),
      theta: dims.map(function (d) { return STI_LABELS[d]; }).concat([STI_LABELS[dims[0]]]),
      fill: "toself", line: { color: css("--accent") }, hovertemplate: "%{theta}: %{r:.1f}<extra></extra>"
    }], {
      title: { text: "服务温度六维 STI dimensions", font: { size: 13 } }, margin: { l: 50, r: 50, t: 40, b: 20 },
      polar: { bgcolor: "rgba(0,0,0,0)", radialaxis: { range: [0, 100], gridcolor: css("--line") }, angularaxis: { gridcolor: css("--line") } }
    });
  }

  var STATE_LABEL = { ok: "正常 ok", door_open: "开门 door open", on_battery: "电池 battery", power_off: "断电 power off",
                      out_of_range: "超范围 out of range", excursion: "超温 excursion", silent: "失联 silent" };
  function coldChain(f) {
    var box = document.getElementById("lockers");
    while (box.firstChild) box.removeChild(box.firstChild);
    (f.lockers || []).forEach(function (locker) {
      var tiles = locker.compartments.map(function (c) {
        var temp = c.temperature_c == null ? "–" : c.temperature_c.toFixed(1) + "°";
        var title = c.compartment_id + " · " + c.product_class + " · " + (STATE_LABEL[c.state] || c.state) +
          (c.out_of_range_min != null ? " · " + c.out_of_range_min + " min" : "") + " · " + local(c.last_reading_at, true);
        return el("div", { "class": "tile " + c.state, "data-compartment": c.compartment_id, "data-state": c.state, title: title },
                  [el("b", { "data-temperature": c.temperature_c == null ? "" : String(c.temperature_c) }, [temp]),
                   c.compartment_id.split("-").pop() + " " + c.product_class]);
      });
      box.appendChild(el("div", { "class": "locker", "data-locker": locker.locker_id },
                         [el("h3", {}, [locker.locker_id + " · " + locker.community_id]), el("div", { "class": "tiles" }, tiles)]));
    });
  }

  function sales(f) {
    var hours = f.by_hour || [];
    plot("chart-hourly", [{
      type: "bar", x: hours.map(function (h) { return h.hour; }), y: hours.map(function (h) { return h.orders; }),
      marker: { color: css("--accent") }, hovertemplate: "%{x}时 h: %{y} 单 orders<extra></extra>"
    }], { title: { text: "每小时订单 Orders by hour", font: { size: 13 } }, xaxis: { dtick: 2, gridcolor: css("--line") } });
    document.getElementById("forecast-note").textContent = f.forecast && !f.forecast.available
      ? "预测线：暂无 Forecast line: absent — " + f.forecast.reason : "";
    document.getElementById("stock-note").textContent = f.stock && !f.stock.available
      ? "余量/将售罄：暂无 Surplus / selling out: absent — " + f.stock.reason : "";
    fill(document.querySelector("#best-table tbody"), (f.best_sellers || []).map(function (b) {
      return [(b.name || b.sku) + (b.name_en ? " " + b.name_en : ""), num(b.qty), fmt(b.amount_cny, "cny")];
    }));
  }

  function alerts(f) {
    var items = [];
    (f.quarantine_spikes || []).forEach(function (r) { items.push(["bad", "隔离激增 Quarantine spike: " + r]); });
    (f.compensations || []).slice(0, 20).forEach(function (c) {
      items.push([c.decision === "needs_review" ? "bad" : "", "赔付 Compensation ¥" + c.compensation_cny.toFixed(2) + " · " +
                  c.order_id + " · " + c.decision + " · " + c.severity + " · " + c.locker_id]);
    });
    ((f.batch_quality || {}).alerts || []).slice(0, 20).forEach(function (b) {
      items.push(["bad", "批次质量 Batch quality: " + b.sku + " · " + b.batch_id + " · " + b.bad + "/" + b.feedback +
                  " bad · " + b.origin]);
    });
    ["journeys", "batch_quality"].forEach(function (feed) {
      var a = f[feed];
      if (a && !a.available) items.push(["off", (feed === "journeys" ? "旅程 Journeys" : "批次质量 Batch quality") + ": 暂无 absent"]);
    });
    if (!items.length) items.push(["ok", "无告警 No alerts"]);
    list(document.getElementById("alerts-feed"), items);
    var q = f.quarantine || [];
    plot("chart-quarantine", [{
      type: "bar", orientation: "h", y: q.map(function (r) { return r.reason; }), x: q.map(function (r) { return r.last_hour; }),
      marker: { color: q.map(function (r) { return r.spike ? css("--bad") : css("--idle"); }) },
      hovertemplate: "%{y}: %{x}<extra></extra>"
    }], { title: { text: "隔离/小时 Quarantined, last hour", font: { size: 13 } }, margin: { l: 130, r: 10, t: 28, b: 24 } });
  }

  function pipeline(f) {
    var items = [];
    if (f.dbt) items.push([f.dbt.success ? "ok" : "bad", "dbt " + (f.dbt.command || "") + ": " + (f.dbt.success ? "成功 success" : "失败 failed") +
                           " · " + local(f.dbt.at, true) + " · " + Object.keys(f.dbt.statuses).map(function (k) { return k + " " + f.dbt.statuses[k]; }).join(", ")]);
    else items.push(["off", "dbt: 暂无记录 no run recorded here"]);
    if (f.quality_gate) items.push([f.quality_gate.success ? "ok" : "bad", "质量门 Quality gate: " + (f.quality_gate.success ? "通过 passed" : "未通过 failed") +
                                    " · " + f.quality_gate.evaluated + " expectations, " + f.quality_gate.failed + " failed · " + local(f.quality_gate.at, true)]);
    else items.push(["off", "质量门 Quality gate: 暂无记录 no run recorded here"]);
    if (f.worker) items.push(["", "流处理 Stream worker: " + num(f.worker.read) + " read, " + num(f.worker.quarantined) + " quarantined · " +
                              (f.worker.updated_at ? local(new Date(f.worker.updated_at * 1000).toISOString(), true) : "")]);
    items.push(["", "最近入仓 Last write: " + (f.last_ingest_age_s == null ? "over an hour ago" : f.last_ingest_age_s + " s ago") +
                " · 隔离占比(全部) quarantined, all: " + fmt(f.quarantined_share_all, "pct2")]);
    list(document.getElementById("pipeline-runs"), items);
  }

  function header(board) {
    var w = board.window;
    var how = { newest_order: "最新订单所在营业日 business day of the newest order", as_of: "as_of 指定 given as_of",
                wall_clock: "今天 today (no orders yet)" }[w.day_source] || w.day_source;
    var clock = { wall_clock: "实时 wall clock", newest_event: "数据时钟 data clock (newest event)",
                  end_of_day: "全天 whole day", start_of_day: "尚未开始 not started" }[w.now_source] || w.now_source;
    document.getElementById("asof").textContent = "截至 As of " + w.day + " (" + w.zone + ") — " + how + " · " + clock + " " + local(w.now);
    document.getElementById("scope").textContent = community ? "· " + community : "· 全部社区 all communities";
    var sel = document.getElementById("community");
    if (sel.options.length <= 1 && board.communities && board.communities.length) {
      board.communities.forEach(function (c) {
        sel.appendChild(el("option", { value: c.community_id }, [c.community_id + (c.name ? " " + c.name : "")]));
      });
      sel.value = community;
    }
    document.getElementById("timing").textContent = "计算 computed in " + board.seconds.toFixed(3) + " s";
  }

  function draw(board) {
    header(board);
    figures(board);
    var p = board.panels;
    pickups(p.pickups.figures);
    satisfaction(p.satisfaction.figures);
    coldChain(p.cold_chain.figures);
    sales(p.sales.figures);
    alerts(p.alerts.figures);
    pipeline(p.pipeline.figures);
    body.setAttribute("data-drawn", String(Number(body.getAttribute("data-drawn") || "0") + 1));
  }

  function status(state, text) {
    var s = document.getElementById("status");
    s.setAttribute("data-state", state);
    document.getElementById("status-text").textContent = text;
  }
  function problem(text) {
    var p = document.getElementById("problem");
    p.hidden = !text;
    p.textContent = text || "";
  }

  function refresh() {
    var q = new URLSearchParams({ community: community, as_of: asOf });
    fetch("/board/api/board?" + q.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) { window.location.reload(); throw new Error("not signed in"); }
        return r.json().then(function (j) { if (!r.ok) throw new Error(j.detail || r.statusText); return j; });
      })
      .then(function (board) {
        latest = board;
        draw(board);
        problem("");
        status("live", "实时 Live · " + local(new Date().toISOString()));
      })
      .catch(function (e) {
        problem(String(e.message || e));
        status("error", "连接中断 Not updating");
      })
      .then(function () { timer = window.setTimeout(refresh, POLL_MS); });
  }

  document.getElementById("community").addEventListener("change", function (e) {
    var target = e.target.value ? "/board/" + encodeURIComponent(e.target.value) : "/board";
    var keep = new URLSearchParams();
    if (asOf) keep.set("as_of", asOf);
    if (params.get("theme")) keep.set("theme", params.get("theme"));
    window.location.assign(target + (keep.toString() ? "?" + keep.toString() : ""));
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null) refresh();
  });
  window.addEventListener("load", refresh);
})();
