// The models overview: every model with its versions, weights, shadows, active pool, health, and the
// newest point of its request rate, error rate and p99 (GET /admin/models, GET .../history).
import { api, enc } from "./api.js";
import { fill, h, setText, syncRows } from "./dom.js";
import { fmtPct, fmtRate, fmtSeconds, latest } from "./format.js";
import { Outcome, badge, setBadge } from "./ui.js";

export function workersText(v) {
  const live = v.workers.filter((w) => w.live).length;
  return `${live}/${v.workers.length} live`;
}

export function roleText(v, total) {
  if (v.shadow) return `shadow, mirrors ${fmtPct(v.shadow, 0)}`;
  if (!v.weight) return "idle (weight 0)";
  return `${fmtPct(v.weight / (total || 1))} (weight ${v.weight})`;
}

export class OverviewPage {
  constructor(ctx) {
    this.title = "Models";
    this.ctx = ctx;
    this.outcome = new Outcome("overview");
    this.ready = badge("…", "");
    this.list = h("div", { class: "cards" });
    this.el = h("div", { class: "page" },
      h("div", { class: "page-head" }, h("h1", {}, "Models"), this.ready),
      this.outcome.el, this.list);
    this.history = {};
  }

  async refresh() {
    const status = await api("GET", "/admin/models");
    this.outcome.clear();
    setBadge(this.ready, status.draining ? "draining" : status.ready ? "ready" : "not ready",
      status.ready && !status.draining ? "good" : "bad");
    const hist = await Promise.all(status.models.map((m) => api("GET",
      `/admin/models/${enc(m.model)}/history?series=rate,error_rate,p99&since=-120`).catch(() => null)));
    status.models.forEach((m, i) => { this.history[m.model] = hist[i]; });
    syncRows(this.list, status.models, (m) => m.model, (m) => this.card(m), (el, m) => this.update(el, m));
  }

  failed(err) {
    this.outcome.error(err);
  }

  card(m) {
    const el = h("article", { class: "card model-card", "aria-labelledby": `model-${m.model}` });
    el._pool = h("span", { class: "pool" });
    el._prev = h("span", { class: "pool-prev" });
    el._rows = h("tbody");
    fill(el,
      h("div", { class: "card-head" },
        h("h2", { id: `model-${m.model}` }, h("a", { href: `#/models/${enc(m.model)}` }, m.model)),
        el._pool, el._prev),
      h("div", { class: "table-wrap" }, h("table", { class: "data" },
        h("caption", { class: "sr-only" }, `Versions of ${m.model}`),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Version"), h("th", { scope: "col" }, "Traffic"),
          h("th", { scope: "col" }, "Workers"), h("th", { scope: "col", class: "num" }, "Requests"),
          h("th", { scope: "col", class: "num" }, "Errors"), h("th", { scope: "col", class: "num" }, "p99"))),
        el._rows)));
    return el;
  }

  update(el, m) {
    setText(el._pool, `${m.pool} pool active`);
    setText(el._prev, m.previous ? `${m.previous.pool} pool warm for a rollback (versions ${m.previous.versions.join(", ")})`
      : "no previous pool");
    const total = Object.values(m.weights).reduce((a, b) => a + b, 0);
    const hist = this.history[m.model];
    syncRows(el._rows, m.versions, (v) => v.version, () => h("tr", {},
      h("th", { scope: "row" }), h("td"), h("td"), h("td", { class: "num" }), h("td", { class: "num" }),
      h("td", { class: "num" })), (row, v) => {
      const c = row.children;
      const d = hist && hist.versions[v.version];
      setText(c[0], `v${v.version}`);
      setText(c[1], roleText(v, total));
      const live = v.workers.filter((w) => w.live).length;
      fill(c[2], badge(workersText(v), live === v.workers.length ? "good" : live ? "warn" : "bad"));
      setText(c[3], fmtRate(d ? latest(d.rate) : null));
      setText(c[4], fmtPct(d ? latest(d.error_rate) : null, 2));
      setText(c[5], fmtSeconds(d ? latest(d.p99) : null));
    });
  }
}
