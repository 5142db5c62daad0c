/* sptbench report: builds the page from the data embedded by sptbench/reports/report_html.py (no network).
   Filters (collections, tasks, methods, the Pareto plot's x axis) re-render every section; every number opens the
   records behind it in the record view. All text from records goes through textContent. */
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const AXES = {
    params: {title: "trainable parameters, head included (log scale)", type: "log", better: "low",
             value: (r) => Math.max(r.trainable_with_head, 1)},
    throughput: {title: "train throughput (samples/s)", type: "linear", better: "high", value: (r) => r.throughput},
    memory: {title: "peak memory (MB)", type: "linear", better: "low", value: (r) => r.peak_memory_mb},
  };
  const state = {collections: new Set(DATA.collections), tasks: new Set(DATA.tasks),
                 methods: new Set(DATA.methods), axis: "params"};
  const plotted = [];

  // ------------------------------------------------------------------------------------------------ helpers
  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }
  const none = (x) => x === null || x === undefined;
  const fixed = (x, d) => (none(x) ? "–" : x.toFixed(d));
  const signed = (x, d) => (none(x) ? "–" : (x >= 0 ? "+" : "") + x.toFixed(d));
  const pval = (p) => (none(p) ? "–" : p < 0.001 ? p.toExponential(1) : p.toPrecision(3));
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  function count(n) {
    if (n < 10000) return n.toLocaleString("en");
    return n < 1e9 ? (n / 1e6).toPrecision(3) + "M" : (n / 1e9).toPrecision(3) + "B";
  }
  const tasksOf = (sec) => sec.tasks.filter((t) => state.tasks.has(t));
  const rowsOf = (sec) => sec.rows.filter((r) => state.methods.has(r.method));
  function score(sec, row, tasks) {
    const cells = tasks.map((t) => sec.cells[row.label][t]).filter(Boolean);
    return {mean: cells.length ? mean(cells.map((c) => c.mean)) : null, k: cells.length};
  }
  const runsOf = (sec, row, tasks) => tasks.flatMap((t) => (sec.cells[row.label][t] || {runs: []}).runs);
  const sectionTitle = (sec) => `${sec.backbone} · ${sec.setting} · ${sec.head} head`;

  // ------------------------------------------------------------------------------------------------ filters
  function checkboxes(legend, values, set) {
    const box = el("fieldset", {class: "filter"}, [el("legend", {text: legend})]);
    const toggle = el("button", {type: "button", class: "toggle", text: "all / none", onclick: () => {
      const on = set.size < values.length;
      values.forEach((v) => (on ? set.add(v) : set.delete(v)));
      box.querySelectorAll("input").forEach((i) => (i.checked = on));
      render();
    }});
    box.append(toggle);
    for (const v of values) {
      const input = el("input", {type: "checkbox", value: v});
      input.checked = set.has(v);
      input.addEventListener("change", () => { input.checked ? set.add(v) : set.delete(v); render(); });
      box.append(el("label", {}, [input, " " + v]));
    }
    return box;
  }

  function buildFilters() {
    const axis = el("select", {id: "pareto-axis"});
    for (const [k, a] of Object.entries(AXES)) axis.append(el("option", {value: k, text: a.title}));
    axis.addEventListener("change", () => { state.axis = axis.value; render(); });
    const csv = el("button", {type: "button", id: "csv-export", text: "Download CSV of what is shown",
                              onclick: downloadCsv});
    document.getElementById("filters").append(
      checkboxes("collections", DATA.collections, state.collections),
      checkboxes("tasks", DATA.tasks, state.tasks),
      checkboxes("methods", DATA.methods, state.methods),
      el("fieldset", {class: "filter"}, [el("legend", {text: "Pareto plot: x axis"}), axis, csv]));
    const skipped = DATA.skipped.length ? ` Not shown (no successful tested run): ${DATA.skipped.join("; ")}.` : "";
    document.getElementById("summary").textContent =
      `${DATA.n_records} records from ${DATA.collections.join(", ")}: ${DATA.sections.length} sections ` +
      "(collection × backbone × data regime). Test scores in %, mean ± sample std over seeds; each (method, task, " +
      "seed) is its configuration best on dev where a grid was run. Click any number, point or row for the " +
      "records behind it." + skipped;
  }

  // ------------------------------------------------------------------------------------------------ table
  function table(sec) {
    const tasks = tasksOf(sec), rows = rowsOf(sec);
    const avg = new Map(rows.map((r) => {
      const s = score(sec, r, tasks);
      return [r.label, s.k === tasks.length && tasks.length ? s.mean : null];
    }));
    const best = {};
    for (const col of [...tasks, "avg"]) {
      const vals = rows.map((r) => (col === "avg" ? avg.get(r.label) : (sec.cells[r.label][col] || {}).mean))
        .filter((x) => !none(x)).map((x) => Math.round(x * 10));
      best[col] = vals.length ? Math.max(...vals) : null;
    }
    const head = el("tr", {}, [el("th", {text: "method"}), ...tasks.map((t) => el("th", {text: t})),
      el("th", {text: "avg"}), el("th", {text: "trainable params"}), el("th", {text: "train samples/s"}),
      el("th", {text: "peak memory (MB)"})]);
    const body = rows.map((r) => {
      const cells = tasks.map((t) => {
        const c = sec.cells[r.label][t];
        if (!c) return el("td", {class: "missing", text: "–"});
        let text = `${c.mean.toFixed(1)} ± ${c.std.toFixed(1)}`;
        if (c.n < sec.expected_seeds) text += ` (n=${c.n})`;
        if (c.mixed) text += " ‡";
        const isBest = Math.round(c.mean * 10) === best[t];
        return el("td", {class: "cell" + (isBest ? " best" : ""), text,
                         onclick: () => openRuns(`${r.label} on ${t}: ${sectionTitle(sec)}`, c.runs)});
      });
      const a = avg.get(r.label);
      const pct = none(r.trainable_pct) ? "" : ` (${r.trainable_pct.toPrecision(3)}%)`;
      return el("tr", {}, [
        el("th", {class: "cell row-label", text: r.label,
                  onclick: () => openRuns(`${r.label}: ${sectionTitle(sec)}`, runsOf(sec, r, tasks))}),
        ...cells,
        el("td", {class: none(a) ? "missing" : Math.round(a * 10) === best.avg ? "best" : "", text: fixed(a, 1)}),
        el("td", {text: count(r.trainable) + pct}), el("td", {text: fixed(r.throughput, 1)}),
        el("td", {text: fixed(r.peak_memory_mb, 0)})]);
    });
    return el("table", {class: "results"}, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  // ------------------------------------------------------------------------------------------------ Pareto
  function frontier(points, better) {
    const sorted = points.slice().sort((a, b) => (better === "low" ? a.x - b.x : b.x - a.x) || b.y - a.y);
    const front = [];
    let top = -Infinity;
    for (const p of sorted) if (p.y > top) { front.push(p); top = p.y; }
    return front;
  }

  function padded(values, type) {
    if (!values.length) return undefined;
    const v = type === "log" ? values.map(Math.log10) : values;
    const lo = Math.min(...v), hi = Math.max(...v), pad = Math.max((hi - lo) * 0.12, type === "log" ? 0.3 : 1);
    return [lo - pad, hi + pad];
  }

  function pareto(sec, div, note) {
    const axis = AXES[state.axis], tasks = tasksOf(sec);
    const points = [], left = [];
    for (const r of rowsOf(sec)) {
      const s = score(sec, r, tasks), x = axis.value(r);
      if (none(s.mean)) continue;
      if (none(x)) { left.push(r.label); continue; }
      points.push({x, y: s.mean, row: r, complete: s.k === tasks.length, k: s.k});
    }
    const front = frontier(points.filter((p) => p.complete), axis.better);
    const traces = [{
      type: "scatter", mode: "markers+text", name: "methods", x: points.map((p) => p.x),
      y: points.map((p) => p.y), text: points.map((p) => p.row.label), textposition: "top center",
      customdata: points.map((p) => p.row.label), cliponaxis: false,
      marker: {size: 11, symbol: points.map((p) => (p.complete ? "circle" : "circle-open")),
               color: points.map((p) => (front.includes(p) ? "#d62728" : "#1f77b4"))},
      hovertext: points.map((p) => `${p.row.label}<br>score ${p.y.toFixed(1)} (mean of ${p.k} of ` +
                                   `${tasks.length} tasks)<br>${axis.title}: ${p.x.toLocaleString("en")}`),
      hoverinfo: "text",
    }, {
      type: "scatter", mode: "lines", name: "Pareto frontier", x: front.map((p) => p.x), y: front.map((p) => p.y),
      line: {color: "#d62728", dash: "dot", shape: axis.better === "low" ? "hv" : "vh"}, hoverinfo: "skip",
    }];
    const layout = {margin: {l: 55, r: 15, t: 30, b: 50}, height: 340, showlegend: false,
                    title: {text: `mean test score over ${tasks.length} task(s)`, font: {size: 13}, x: 0.02,
                            xanchor: "left"},
                    xaxis: {title: {text: axis.title}, type: axis.type, range: padded(points.map((p) => p.x),
                                                                                      axis.type)},
                    yaxis: {title: {text: "test score (%)"}, range: padded(points.map((p) => p.y), "linear")}};
    plot(div, traces, layout, (pt) => {
      if (pt.curveNumber !== 0) return;
      const p = points[pt.pointNumber];
      openRuns(`${p.row.label}: ${sectionTitle(sec)}`, runsOf(sec, p.row, tasks));
    });
    note.textContent = "Red: the Pareto frontier (no method both scores higher and is " +
      (axis.better === "low" ? "smaller" : "faster") + "); hollow: a method without every selected task (not " +
      "on the frontier)." + (left.length ? ` Not drawn (not measured): ${left.join(", ")}.` : "");
  }

  function plot(div, traces, layout, onClick) {
    Plotly.newPlot(div, traces, layout, {displaylogo: false, responsive: true});
    plotted.push(div);
    div.on("plotly_click", (ev) => { if (ev.points.length) onClick(ev.points[0]); });
  }

  // ------------------------------------------------------------------------------------------------ comparisons
  function comparisons(sec, later) {
    const pairs = sec.comparisons.pairs.filter((c) => state.methods.has(c.method_a) && state.methods.has(c.method_b));
    const wrap = el("div", {class: "compare"});
    if (!pairs.length) {
      wrap.append(el("p", {class: "note", text: "No paired comparison among the selected methods."}));
      return wrap;
    }
    const head = el("tr", {}, ["comparison (a - b)", "pairs", "mean diff", "95% CI (task-blocked t)", "sign-flip p",
                               "Holm p", "W/T/L", "Wilcoxon p"].map((h) => el("th", {text: h})));
    const rows = pairs.map((c) => {
      const s = c.overall;
      const ci = none(s.low) ? "–" : `[${signed(s.low, 2)}, ${signed(s.high, 2)}]`;
      return el("tr", {class: "cell", onclick: () => openComparison(sec, c)}, [
        el("th", {text: `${c.a} - ${c.b}`}), el("td", {text: String(s.n)}), el("td", {text: signed(s.mean, 2)}),
        el("td", {text: ci}), el("td", {text: pval(s.p)}), el("td", {text: pval(c.p_holm)}),
        el("td", {text: `${s.wins}/${s.ties}/${s.losses}`}), el("td", {text: pval(s.p_wilcoxon)})]);
    });
    wrap.append(el("table", {class: "results"}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
    const forest = el("div", {class: "forest"});
    wrap.append(forest);
    const shown = pairs.filter((c) => !none(c.overall.mean)).reverse();
    const traces = [{
      type: "scatter", mode: "markers", x: shown.map((c) => c.overall.mean), y: shown.map((c) => `${c.a} - ${c.b}`),
      error_x: {type: "data", symmetric: false, array: shown.map((c) => (none(c.overall.high) ? 0 :
        c.overall.high - c.overall.mean)), arrayminus: shown.map((c) => (none(c.overall.low) ? 0 :
        c.overall.mean - c.overall.low))},
      marker: {size: 9, color: "#1f77b4"}, hoverinfo: "x+y",
    }];
    const layout = {height: 60 + 26 * shown.length, margin: {l: 230, r: 15, t: 10, b: 40}, showlegend: false,
                    xaxis: {title: {text: "mean paired difference (points), 95% CI"}, zeroline: true},
                    shapes: [{type: "line", x0: 0, x1: 0, yref: "paper", y0: 0, y1: 1, line: {color: "#888"}}]};
    later.push(() => plot(forest, traces, layout, (pt) => openComparison(sec, shown[pt.pointNumber])));
    const notes = [...sec.comparisons.skipped.map((s) => "left out: " + s),
                   ...new Set(pairs.flatMap((c) => c.notes))];
    wrap.append(el("p", {class: "note", text: "Over all the section's tasks (the task filter does not change " +
      "them); Holm across the section's comparisons; a positive difference favours a. " + notes.join(" ")}));
    return wrap;
  }

  function openComparison(sec, c) {
    const head = el("tr", {}, ["task", "pairs", "mean diff", "95% CI", "sign-flip p", "W/T/L"]
      .map((h) => el("th", {text: h})));
    const rows = Object.entries(c.per_task).map(([t, s]) => el("tr", {}, [el("th", {text: t}),
      el("td", {text: String(s.n)}), el("td", {text: signed(s.mean, 2)}),
      el("td", {text: none(s.low) ? "–" : `[${signed(s.low, 2)}, ${signed(s.high, 2)}]`}),
      el("td", {text: pval(s.p)}), el("td", {text: `${s.wins}/${s.ties}/${s.losses}`})]));
    const per = el("table", {class: "results"}, [el("thead", {}, [head]), el("tbody", {}, rows)]);
    const runs = sec.rows.filter((r) => r.method === c.method_a || r.method === c.method_b)
      .flatMap((r) => runsOf(sec, r, sec.tasks));
    openRuns(`${c.a} - ${c.b}: ${sectionTitle(sec)}`, runs, per);
  }

  // ------------------------------------------------------------------------------------------------ gates, layers
  function gates(sec, div) {
    if (sec.gates.problem) {
      div.replaceChildren(el("p", {class: "note", text: "Not drawn: " + sec.gates.problem}));
      return true;
    }
    const rows = sec.gates.rows.filter((r) => state.tasks.has(r.task) && state.methods.has(r.method));
    if (!rows.length) return false;
    const layers = [...Array(sec.gates.layers).keys()];
    const shapes = [];
    rows.forEach((r, i) => r.chosen.forEach((k, layer) => {
      if (k && 2 * k >= r.count) {
        shapes.push({type: "rect", x0: layer - 0.5, x1: layer + 0.5, y0: i - 0.5, y1: i + 0.5,
                     line: {color: "red", width: 2}});
      }
    }));
    const traces = [{type: "heatmap", z: rows.map((r) => r.alpha), x: layers, y: rows.map((_, i) => i),
      zmin: 0, zmax: 1, colorscale: "Viridis", colorbar: {title: {text: "α"}},
      text: rows.map((r) => r.alpha.map((a, l) => (none(a) ? "" : `${a.toFixed(2)} (${r.chosen[l]}/${r.count})`))),
      texttemplate: "%{text}", hovertemplate: "layer %{x}: α %{text}<extra></extra>"}];
    const layout = {height: 80 + 24 * rows.length, margin: {l: 220, r: 10, t: 10, b: 40}, shapes,
      xaxis: {title: {text: "layer (0 = input)"}, dtick: 1},
      yaxis: {tickvals: rows.map((_, i) => i), ticktext: rows.map((r) => `${r.task} · ${r.method} (n=${r.count})`),
              autorange: "reversed"}};
    plot(div, traces, layout, (pt) => {
      const r = rows[pt.pointNumber[0]];
      openRuns(`${r.method} gates on ${r.task}: ${sectionTitle(sec)}`, r.runs);
    });
    return true;
  }

  function layerCurves(sec, div) {
    const tasks = Object.keys(sec.layers.tasks).filter((t) => state.tasks.has(t));
    if (!tasks.length || !state.methods.has(sec.layers.method)) return false;
    const traces = [], refs = [];
    let bottom = Infinity;
    for (const t of tasks) {
      const c = sec.layers.tasks[t];
      c.mean.forEach((m, i) => (bottom = Math.min(bottom, m - c.std[i])));
      traces.push({type: "scatter", mode: "lines+markers", name: t, x: c.layers, y: c.mean,
                   error_y: {type: "data", array: c.std}, customdata: c.n,
                   hovertemplate: `${t}, layer %{x}: %{y:.1f} (n=%{customdata})<extra></extra>`});
      refs.push({task: t, runs: c.runs});
    }
    const chosen = {};  // method -> layer -> runs that chose it, over the selected tasks
    for (const t of tasks) {
      for (const [m, counts] of Object.entries(sec.layers.tasks[t].chosen)) {
        if (!state.methods.has(m)) continue;
        for (const [l, k] of Object.entries(counts)) {
          chosen[m] = chosen[m] || {};
          chosen[m][l] = (chosen[m][l] || 0) + k;
        }
      }
    }
    const symbols = ["triangle-down", "triangle-up", "diamond", "square"];
    Object.entries(chosen).forEach(([m, counts], mi) => {
      const layers = Object.keys(counts).map(Number), most = Math.max(...Object.values(counts));
      traces.push({type: "scatter", mode: "markers+text", name: `${m} chose (runs, selected tasks)`, x: layers,
        y: layers.map(() => bottom - 2 - 2.5 * mi), text: layers.map((l) => String(counts[l])),
        textposition: "middle right", cliponaxis: false, hovertemplate: `${m} chose layer %{x} in %{text} runs` +
        "<extra></extra>", marker: {symbol: symbols[mi % symbols.length], color: "#444",
        size: layers.map((l) => 7 + 13 * counts[l] / most)}});
      refs.push(null);
    });
    const layout = {height: 360, margin: {l: 55, r: 10, t: 10, b: 45},
                    xaxis: {title: {text: "prompt layer (0 = input)"}, dtick: 1},
                    yaxis: {title: {text: "test score (%)"}}, legend: {font: {size: 10}}};
    plot(div, traces, layout, (pt) => {
      const ref = refs[pt.curveNumber];
      if (ref) openRuns(`${sec.layers.method} at layer ${pt.x} on ${ref.task}`, ref.runs[pt.pointNumber]);
    });
    return true;
  }

  // ------------------------------------------------------------------------------------------------ record view
  function openRuns(title, runs, extra) {
    const view = document.getElementById("record-view");
    document.getElementById("record-title").textContent = title;
    const list = document.getElementById("record-list");
    list.replaceChildren();
    if (extra) list.append(extra);
    const head = el("tr", {}, ["task", "method", "seed", "test", "dev", "run id"].map((h) => el("th", {text: h})));
    const rows = runs.map((id) => {
      const r = DATA.records[id] || {};
      const m = r.metrics || {}, sel = m.selection_metric;
      const metric = (part) => { const s = m[part] || {}; const v = s[sel] !== undefined ? s[sel] : s.score;
                                  return none(v) ? "–" : (100 * v).toFixed(1); };
      return el("tr", {class: "cell", "data-run": id, onclick: () => showRecord(id)}, [
        el("td", {text: (r.task || {}).name || "?"}), el("td", {text: (r.method || {}).name || "?"}),
        el("td", {text: String((r.protocol || {}).seed)}), el("td", {text: metric("test")}),
        el("td", {text: metric("dev")}), el("td", {class: "mono", text: id})]);
    });
    list.append(el("table", {class: "results runs"}, [el("thead", {}, [head]), el("tbody", {}, rows)]));
    view.hidden = false;
    if (runs.length) showRecord(runs[0]);
    else document.getElementById("record-body").replaceChildren(el("p", {text: "No run behind this."}));
  }

  const RECORD_PARTS = [
    ["run", (r) => ({run_id: r.run_id, created: r.created, status: r.status, error: r.error,
                     collection: r._collection, table: r._source})],
    ["method", (r) => ({name: r.method.name, ...(r.method.config || {})})],
    ["training options", (r) => r.training], ["head", (r) => r.head],
    ["task and protocol", (r) => ({task: r.task.name, version: r.task.version, ...r.protocol})],
    ["data", (r) => r.data], ["backbone", (r) => r.backbone],
    ["metrics", (r) => ({selection_metric: r.metrics.selection_metric, dev: r.metrics.dev, test: r.metrics.test})],
    ["parameters", (r) => r.params], ["throughput", (r) => r.throughput], ["time", (r) => r.time],
    ["versions", (r) => r.versions], ["git", (r) => r.git],
  ];
  const SHOWN = new Set(["run_id", "created", "status", "error", "_collection", "_source", "method", "training",
    "head", "task", "protocol", "data", "backbone", "metrics", "params", "throughput", "time", "versions", "git"]);

  function kv(obj) {
    const rows = Object.entries(obj || {}).map(([k, v]) => el("tr", {}, [el("th", {text: k}),
      el("td", {class: "mono", text: v !== null && typeof v === "object" ? JSON.stringify(v) : String(v)})]));
    return el("table", {class: "kv"}, [el("tbody", {}, rows)]);
  }

  function showRecord(id) {
    const r = DATA.records[id];
    const body = document.getElementById("record-body");
    document.querySelectorAll("#record-list tr.current").forEach((tr) => tr.classList.remove("current"));
    const tr = document.querySelector(`#record-list tr[data-run="${CSS.escape(id)}"]`);
    if (tr) tr.classList.add("current");
    if (!r) { body.replaceChildren(el("p", {text: `run ${id}: not in this report`})); return; }
    const parts = [];
    for (const [name, get] of RECORD_PARTS) {
      const value = get(r);
      if (value && Object.keys(value).length) parts.push(el("h3", {text: name}), kv(value));
    }
    for (const k of Object.keys(r).filter((k) => !SHOWN.has(k))) {
      const v = r[k];
      if (v !== null && typeof v === "object" && Object.keys(v).length) parts.push(el("h3", {text: k}), kv(v));
    }
    body.replaceChildren(el("div", {class: "record", "data-run": id}, parts));
  }

  // ------------------------------------------------------------------------------------------------ CSV, page
  function downloadCsv() {
    const quote = (v) => { const s = none(v) ? "" : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
    const lines = [DATA.csv_columns.join(",")];
    for (const sec of DATA.sections.filter((s) => state.collections.has(s.collection))) {
      for (const r of rowsOf(sec)) {
        for (const t of tasksOf(sec)) {
          const c = sec.cells[r.label][t];
          if (!c) continue;
          lines.push([sec.collection, sec.backbone, sec.setting, sec.head, r.label, t, c.mean.toFixed(4),
                      c.std.toFixed(4), c.n, r.trainable, r.trainable_with_head, r.trainable_pct, r.throughput,
                      r.peak_memory_mb].map(quote).join(","));
        }
      }
    }
    const url = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
    const a = el("a", {href: url, download: "sptbench-report.csv"});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function section(sec) {
    const node = el("section", {class: "report-section", id: sec.id, "data-collection": sec.collection}, [
      el("h2", {}, [sectionTitle(sec) + " ", el("small", {text: sec.collection})])]);
    const paretoDiv = el("div", {class: "pareto"}), paretoNote = el("p", {class: "note"});
    node.append(el("div", {class: "side-by-side"}, [el("div", {class: "table-wrap"}, [table(sec)]),
                                                    el("div", {class: "plot"}, [paretoDiv, paretoNote])]));
    node.append(el("details", {class: "notes"}, [el("summary", {text: "notes on the table"}),
      el("ul", {}, sec.notes.map((n) => el("li", {text: n})))]));
    const later = [() => pareto(sec, paretoDiv, paretoNote)];
    node.append(el("h3", {text: "Paired comparisons"}), comparisons(sec, later));
    if (sec.gates) {
      const div = el("div", {class: "gates"});
      node.append(el("h3", {text: "Learned gates α per layer (mean over seeds; k/n: chosen in k of n runs; red: " +
                              "chosen in at least half)"}), div);
      later.push(() => gates(sec, div) || div.replaceChildren(el("p", {class: "note", text: "none selected"})));
    }
    if (sec.layers) {
      const div = el("div", {class: "layers"});
      node.append(el("h3", {text: `${sec.layers.method}: test score against its prompt layer (mean ± std over ` +
                              "seeds; markers: layers the searches chose, with counts). Analysis only: a layer " +
                              "picked here is picked on test."}), div);
      later.push(() => layerCurves(sec, div) || div.replaceChildren(el("p", {class: "note", text: "none selected"})));
    }
    return [node, later];
  }

  function render() {
    while (plotted.length) Plotly.purge(plotted.pop());
    const main = document.getElementById("sections");
    main.replaceChildren();
    const later = [];
    for (const sec of DATA.sections.filter((s) => state.collections.has(s.collection))) {
      const [node, fns] = section(sec);
      main.append(node);
      later.push(...fns);
    }
    later.forEach((fn) => fn());
  }

  document.getElementById("record-close").addEventListener("click", () => {
    document.getElementById("record-view").hidden = true;
  });
  buildFilters();
  render();
  document.body.dataset.ready = "true";
})();
