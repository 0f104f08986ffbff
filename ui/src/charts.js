// Charts over time of the daemon's history (GET /admin/models/{m}/history), drawn with uPlot.
// Each version (or feature) is a line with its own colour and its own dash pattern, so the lines can be
// told apart without colour; the legend names them, and a text summary under each chart gives the
// newest values.
import uPlot from "uplot";
import { fill, h, newId, setText } from "./dom.js";

const DASHES = [[], [8, 4], [2, 3], [10, 3, 2, 3], [4, 4], [1, 5]];
const HEIGHT = 180;

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** The line style of the i-th version (colour from the theme, dash by position). */
export function versionStyle(i) {
  return { stroke: cssVar(`--series-${(i % 6) + 1}`), dash: DASHES[i % DASHES.length] };
}

/**
 * Which style each version has on a page: one for good, in the order the page first sees the versions
 * (in version order among those seen together), so that a version has the same colour and dash in the
 * traffic rows, the split bars and every chart, whatever each of them lists.
 */
export class Palette {
  constructor() {
    this.seen = new Map();
  }

  see(versions) {
    for (const v of [...versions].sort((a, b) => a.localeCompare(b, "en", { numeric: true }))) this.index(v);
  }

  index(version) {
    if (!this.seen.has(version)) this.seen.set(version, this.seen.size);
    return this.seen.get(version);
  }
}

/** The i-th of more lines than colours: past the sixth, the dash moves on, so no two lines look alike. */
function lineStyle(i) {
  return { stroke: cssVar(`--series-${(i % 6) + 1}`), dash: DASHES[(i + Math.floor(i / 6)) % DASHES.length] };
}

/** A uPlot in `box` with one line per label: the shared look of every chart here. */
function makePlot(box, width, labels, styles, fmt, { min, max }, span = () => null) {
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 },
    ticks: { stroke: cssVar("--grid"), width: 1 } };
  const plot = new uPlot({
    width,
    height: HEIGHT,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true, range: (u, lo, hi) => span() ?? [lo, hi] }, y: { range: (u, lo, hi) => {
      if (lo === null || hi === null) return [min ?? 0, max ?? 1];
      // From zero, with headroom above the highest point (a flat line does not hide in the frame).
      const [a, b] = uPlot.rangeNum(Math.min(0, lo), Math.max(hi, 1e-9), 0.1, true);
      return [min ?? a, max ?? b];
    } } },
    axes: [axis, { ...axis, size: 78, values: (u, vals) => vals.map((v) => fmt(v)) }],
    series: [{ label: "time" }, ...labels.map((label, i) => ({
      label, width: 2, spanGaps: false, points: { show: false },
      value: (u, val) => fmt(val), ...styles[i],
    }))],
    legend: { live: true },
  }, [[], ...labels.map(() => [])], box);
  plot.root.querySelector("canvas")?.setAttribute("aria-hidden", "true");
  return plot;
}

/** The newest value of a series that is not null (null when there is none). */
function lastValue(values) {
  for (let i = (values || []).length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

/**
 * A chart of one history series per version. `fmt` formats a value for the axis, legend and summary.
 * `update(history, versions)` sets new data; a change of the version set rebuilds the plot
 * (the figure keeps its size, so nothing around it moves).
 */
export class SeriesChart {
  constructor({ title, series, fmt, min, max, palette }) {
    this.title = title;
    this.series = series;
    this.fmt = fmt;
    this.palette = palette || new Palette();
    this.range = { min, max };
    this.plot = null;
    this.key = "";
    this.box = h("div", { class: "chart-box" });
    this.summary = h("p", { class: "chart-summary" }, "no points yet");
    this.el = h("figure", { class: "chart", "data-series": series },
      h("figcaption", {}, title), this.box, this.summary);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: HEIGHT });
    });
    this.resize.observe(this.box);
  }

  width() {
    return Math.max(200, this.box.clientWidth);
  }

  build(versions) {
    if (this.plot) this.plot.destroy();
    this.plot = makePlot(this.box, this.width(), versions.map((v) => `v${v}`),
      versions.map((v) => versionStyle(this.palette.index(v))), this.fmt, this.range);
  }

  /** New data: `history` is the API's answer, `versions` the versions to draw, in order. */
  update(history, versions) {
    const key = versions.join(",");
    if (!this.plot || key !== this.key) {
      this.key = key;
      this.build(versions);
    }
    const tables = versions.map((v) => {
      const d = history.versions[v] || { t: [] };
      return [d.t, d[this.series] || d.t.map(() => null)];
    });
    const data = tables.length ? uPlot.join(tables) : [[]];
    this.plot.setData(data);
    const last = versions.map((v) => {
      const d = history.versions[v];
      const vals = d ? d[this.series] : null;
      const value = vals && vals.length ? vals[vals.length - 1] : null;
      return `v${v}: ${value === null ? "–" : this.fmt(value)}`;
    });
    this.el.dataset.points = versions.map((v) => {
      const vals = (history.versions[v] || {})[this.series] || [];
      return `${v}=${vals.filter((x) => x !== null).length}`;
    }).join(" ");
    setText(this.summary, last.length ? `Newest point — ${last.join(", ")}` : "no versions");
  }

  /** Draw again with the theme's colours (after the system switched between light and dark). */
  restyle() {
    this.key = "";
  }
}

/**
 * "Drift per feature": the PSI of each feature of one version over time (the history's `feature_psi`,
 * which has its own times, drawn over the same span as the other charts). One version at a time, chosen
 * in the chart's own menu (at first the one whose newest PSI is highest), and at most MAX_FEATURES lines:
 * the features with the highest PSI now.
 */
export const MAX_FEATURES = 8;

export class FeatureChart {
  constructor({ title, fmt }) {
    this.series = "feature_psi";
    this.fmt = fmt;
    this.range = { min: undefined, max: undefined };
    this.plot = null;
    this.key = "";
    this.lines = [];
    this.chosen = null;
    this.history = null;
    this.span = null;
    const sid = newId("feature-version");
    this.select = h("select", { id: sid, name: "feature-version", onchange: () => {
      this.chosen = this.select.value;
      this.draw();
    } });
    this.box = h("div", { class: "chart-box tall" });  // room for a legend of up to MAX_FEATURES lines
    this.summary = h("p", { class: "chart-summary" }, "no drift report yet");
    this.el = h("figure", { class: "chart", "data-series": this.series },
      h("figcaption", {}, h("span", {}, title),
        h("span", { class: "chart-pick" }, h("label", { for: sid }, "Version"), this.select)),
      this.box, this.summary);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: HEIGHT });
    });
    this.resize.observe(this.box);
  }

  width() {
    return Math.max(200, this.box.clientWidth);
  }

  /** New data: `history` is the API's answer, `versions` its versions in order. */
  update(history, versions) {
    this.history = history;
    // The span of the history's other series, so that this chart's times line up with theirs.
    const ts = versions.flatMap((v) => {
      const t = (history.versions[v] || {}).t || [];
      return t.length ? [t[0], t[t.length - 1]] : [];
    });
    this.span = ts.length ? [Math.min(...ts), Math.max(...ts)] : null;
    const have = versions.filter((v) => {
      const f = (history.versions[v] || {}).feature_psi;
      return f && f.t.length && (Object.keys(f.inputs).length || Object.keys(f.outputs).length);
    });
    if (!have.includes(this.chosen)) {
      // At first (or when the chosen version has no report any more): the version drifting most now.
      const top = (v) => Math.max(-1, ...this.features(v).map((f) => f.now ?? -1));
      this.chosen = have.length ? have.reduce((a, b) => (top(b) > top(a) ? b : a)) : null;
    }
    const options = [...this.select.options].map((o) => o.value);
    if (options.join(",") !== have.join(",")) {
      fill(this.select, ...(have.length ? have.map((v) => h("option", { value: v }, `v${v}`))
        : [h("option", { value: "" }, "none yet")]));
    }
    this.select.disabled = have.length === 0;
    if (this.chosen !== null) this.select.value = this.chosen;
    this.draw();
  }

  /** The features of version `v`: key, label, values and newest value. */
  features(v) {
    const f = (this.history.versions[v] || {}).feature_psi;
    if (!f) return [];
    const out = [];
    for (const io of ["inputs", "outputs"]) {
      for (const [name, values] of Object.entries(f[io] || {})) {
        out.push({ key: `${io}/${name}`, label: `${io === "inputs" ? "in" : "out"}: ${name}`, values,
          now: lastValue(values) });
      }
    }
    return out;
  }

  draw() {
    const v = this.chosen;
    this.el.dataset.version = v ?? "";
    if (v === null || !this.history) {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      this.key = "";
      this.el.dataset.points = "";
      setText(this.summary, "no drift report yet");
      return;
    }
    const all = this.features(v);
    const top = [...all].sort((a, b) => (b.now ?? -1) - (a.now ?? -1) || a.key.localeCompare(b.key))
      .slice(0, MAX_FEATURES);
    // The same features keep their lines (and colours) while they stay among the highest.
    const set = top.map((f) => f.key).sort().join("|");
    const byKey = Object.fromEntries(all.map((f) => [f.key, f]));
    if (!this.plot || `${v}#${set}` !== this.key) {
      this.key = `${v}#${set}`;
      this.lines = top.map((f) => f.key);
      if (this.plot) this.plot.destroy();
      this.plot = makePlot(this.box, this.width(), this.lines.map((k) => byKey[k].label),
        this.lines.map((k, i) => lineStyle(i)), this.fmt, this.range, () => this.span);
    }
    const t = this.history.versions[v].feature_psi.t;
    this.plot.setData([t, ...this.lines.map((k) => byKey[k].values)]);
    this.el.dataset.points = this.lines.map((k) => `${k}=${byKey[k].values.filter((x) => x !== null).length}`).join(" ");
    // The summary names the three highest now; the legend and the lines have the rest.
    const highest = this.lines.map((k) => byKey[k]).filter((f) => f.now !== null)
      .sort((a, b) => b.now - a.now).slice(0, 3).map((f) => `${f.label} ${this.fmt(f.now)}`);
    const drawn = all.length > this.lines.length ? ` (${this.lines.length} of ${all.length} features drawn)` : "";
    setText(this.summary, `v${v}, highest PSI now — ${highest.join(", ") || "–"}${drawn}`);
  }

  /** Draw again with the theme's colours (after the system switched between light and dark). */
  restyle() {
    this.key = "";
  }
}
