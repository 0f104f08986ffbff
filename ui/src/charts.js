// Charts over time of the daemon's history (GET /admin/models/{m}/history), drawn with uPlot.
// Each version is a line with its own colour and its own dash pattern, so the lines can be told apart
// without colour; the legend names them, and a text summary under each chart gives the newest values.
import uPlot from "uplot";
import { h, setText } from "./dom.js";

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
 * A chart of one history series per version. `fmt` formats a value for the axis, legend and summary.
 * `update(history, versions)` sets new data; a change of the version set rebuilds the plot
 * (the figure keeps its size, so nothing around it moves).
 */
export class SeriesChart {
  constructor({ title, series, fmt, min, max }) {
    this.title = title;
    this.series = series;
    this.fmt = fmt;
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
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--grid"), width: 1 },
      ticks: { stroke: cssVar("--grid"), width: 1 } };
    const fmt = this.fmt;
    const { min, max } = this.range;
    this.plot = new uPlot({
      width: this.width(),
      height: HEIGHT,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, lo, hi) => {
        if (lo === null || hi === null) return [min ?? 0, max ?? 1];
        // From zero, with headroom above the highest point (a flat line does not hide in the frame).
        const [a, b] = uPlot.rangeNum(Math.min(0, lo), Math.max(hi, 1e-9), 0.1, true);
        return [min ?? a, max ?? b];
      } } },
      axes: [axis, { ...axis, size: 78, values: (u, vals) => vals.map((v) => fmt(v)) }],
      series: [{ label: "time" }, ...versions.map((v, i) => ({
        label: `v${v}`, width: 2, spanGaps: false, points: { show: false },
        value: (u, val) => fmt(val), ...versionStyle(i),
      }))],
      legend: { live: true },
    }, [[], ...versions.map(() => [])], this.box);
    this.plot.root.querySelector("canvas")?.setAttribute("aria-hidden", "true");
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
