// The models overview: every model with its versions, weights, shadows, active pool, a deploy's warm-up,
// the previous pool's time left, health, and the newest point of its request rate, error rate and p99
// (GET /admin/models, GET .../history: both answer without the token).
import { api, enc } from "./api.js";
import { fill, h, setText, syncRows } from "./dom.js";
import { fmtDuration, fmtPct, fmtRate, fmtSeconds, latest } from "./format.js";
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
    el._standby = h("span", { class: "pool-prev" });
    el._warmup = h("progress", { class: "warmup", max: "1", value: "0", hidden: true });
    el._rows = h("tbody");
    fill(el,
      h("div", { class: "card-head" },
        h("h2", { id: `model-${m.model}` }, h("a", { href: `#/models/${enc(m.model)}` }, m.model)),
        el._pool, el._prev, el._standby, el._warmup),
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
    const p = m.previous;
    const left = p && p.expires_in_s !== null && p.expires_in_s !== undefined ? `, ${fmtDuration(p.expires_in_s)} left` : "";
    setText(el._prev, p ? `${p.pool} pool warm for a rollback (versions ${p.versions.join(", ")}${left})` : "no previous pool");
    const sb = m.standby;
    setText(el._standby, sb ? `deploy in progress: ${sb.pool} pool warming up, ${sb.live}/${sb.workers} workers live` : "");
    el._standby.hidden = !sb;
    el._warmup.hidden = !sb;
    if (sb) {
      el._warmup.max = Math.max(1, sb.workers);
      el._warmup.value = sb.live;
      el._warmup.setAttribute("aria-label", `Warm-up of the ${sb.pool} pool of ${m.model}`);
    }
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
