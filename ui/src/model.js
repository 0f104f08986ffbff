// One model: blue-green status and rollback, traffic, charts over time, versions (roll out, take out,
// delete), push, drift, prediction log and audit trail. Each number comes from one admin API answer.
import { ApiError, api, enc, optional } from "./api.js";
import { AuditTable, fetchAudit } from "./audit.js";
import { SeriesChart } from "./charts.js";
import { fill, h, newId, setText } from "./dom.js";
import { DriftPanel } from "./drift.js";
import { fmtBytes, fmtNum, fmtPct, fmtRate, fmtSeconds } from "./format.js";
import { PushPanel } from "./push.js";
import { TrafficEditor } from "./traffic.js";
import { Outcome, badge, section, setBadge } from "./ui.js";
import { VersionsPanel } from "./versions.js";

const RANGES = [[300, "5 minutes"], [900, "15 minutes"], [3600, "1 hour"], [21600, "6 hours"]];
const CHARTS = [
  { series: "p50", title: "Latency p50", fmt: fmtSeconds },
  { series: "p99", title: "Latency p99", fmt: fmtSeconds },
  { series: "rate", title: "Requests per second", fmt: (v) => fmtRate(v) },
  { series: "share", title: "Share of live traffic", fmt: (v) => fmtPct(v, 0), max: 1 },
  { series: "error_rate", title: "Errors (fraction answered 5xx)", fmt: (v) => fmtPct(v, 1) },
  { series: "agreement", title: "Shadow agreement with the live answer", fmt: (v) => fmtPct(v, 1), max: 1 },
  { series: "drift_psi", title: "Drift: largest PSI of an input feature", fmt: (v) => fmtNum(v) },
  { series: "cpu", title: "Worker CPU (cores)", fmt: (v) => fmtNum(v) },
  { series: "memory", title: "Worker memory (resident)", fmt: (v) => fmtBytes(v) },
];

function byVersion(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}

export class ModelPage {
  constructor(ctx, model) {
    this.title = model;
    this.ctx = ctx;
    this.model = model;
    this.outcome = new Outcome("model");
    this.ready = badge("…", "");
    this.historyAt = 0;
    this.historyEvery = 2000;
    const changed = () => this.refresh(true);

    // Blue-green
    this.pool = h("p", { class: "pool-line" });
    this.standby = h("p", { class: "pool-line standby", "aria-live": "polite" });
    this.prev = h("p", { class: "pool-line" });
    this.rollbackOutcome = new Outcome("rollback");
    this.rollback = h("button", { type: "button", class: "primary", hidden: true, onclick: () => this.doRollback() },
      "Roll back");
    const bluegreen = section("Blue-green", "bluegreen", this.pool, this.standby, this.prev,
      ctx.readOnly ? null : this.rollback, this.rollbackOutcome.el);

    // Traffic
    this.traffic = new TrafficEditor(ctx, model);
    this.traffic.onChanged = changed;

    // Charts
    const rid = newId("range");
    this.range = h("select", { id: rid, name: "range", onchange: () => this.refresh(true) },
      ...RANGES.map(([s, t]) => h("option", { value: String(s), selected: s === 900 }, t)));
    this.charts = CHARTS.map((c) => new SeriesChart(c));
    const charts = section("Over time", "charts",
      h("div", { class: "field inline" }, h("label", { for: rid }, "Time range"), this.range),
      h("div", { class: "chart-grid" }, ...this.charts.map((c) => c.el)));

    // Versions, push, drift
    this.versions = new VersionsPanel(ctx, model);
    this.versions.onChanged = changed;
    this.versions.deploy.onChanged = changed;
    this.push = new PushPanel(ctx, model);
    this.push.onChanged = changed;
    this.drift = new DriftPanel();

    // Prediction log and audit trail: only where this router answers them.
    this.predlogBody = h("div");
    this.predlog = section("Prediction log", "predlog", this.predlogBody);
    this.predlog.hidden = true;
    this.audit = new AuditTable(`Changes to ${model}, newest first`);
    this.auditSection = section("Audit trail", "audit", this.audit.el);
    this.auditSection.hidden = true;

    const jump = (id, text) => h("a", { href: `#/models/${enc(model)}`, onclick: (e) => {
      e.preventDefault();
      document.getElementById(id)?.scrollIntoView();
      document.getElementById(id)?.querySelector("h2")?.focus();
    } }, text);
    this.el = h("div", { class: "page" },
      h("div", { class: "page-head" }, h("h1", {}, model), this.ready),
      h("nav", { class: "toc", "aria-label": "Sections" }, jump("bluegreen", "Blue-green"),
        jump("traffic", "Traffic"), jump("charts", "Over time"), jump("versions", "Versions"),
        ctx.readOnly ? null : jump("push", "Push"), jump("drift", "Drift")),
      this.outcome.el,
      bluegreen,
      section("Traffic", "traffic", this.traffic.el),
      charts,
      section("Versions", "versions", this.versions.el),
      ctx.readOnly ? null : section("Push a version", "push", this.push.el),
      section("Drift", "drift", this.drift.el),
      this.predlog,
      this.auditSection);
    for (const hd of this.el.querySelectorAll("section h2")) hd.tabIndex = -1;
  }

  async refresh(force = false) {
    const m = enc(this.model);
    const status = await api("GET", "/admin/models");
    const entry = status.models.find((x) => x.model === this.model);
    if (!entry) throw new ApiError(404, `unknown model '${this.model}'`, "GET", "/admin/models");
    const [listing, drift, predlog, audit] = await Promise.all([
      api("GET", `/admin/models/${m}/versions`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
      api("GET", `/admin/models/${m}/drift`),
      optional(`/admin/models/${m}/predlog`).catch(() => null),
      fetchAudit(this.model, 20).catch(() => null),
    ]);
    this.outcome.clear();
    setBadge(this.ready, entry.versions.every((v) => v.workers.some((w) => w.live)) ? "all versions live" : "a version has no live worker",
      entry.versions.every((v) => v.workers.some((w) => w.live)) ? "good" : "bad");
    this.showPools(entry, listing);
    this.traffic.update(entry);
    if (listing) this.versions.update(listing);
    this.drift.update(drift);
    this.showPredlog(predlog);
    this.auditSection.hidden = audit === null;
    if (audit) this.audit.update(audit.entries);
    if (force || Date.now() - this.historyAt >= this.historyEvery) await this.refreshHistory();
  }

  async refreshHistory() {
    const series = CHARTS.map((c) => c.series).join(",");
    const hist = await api("GET", `/admin/models/${enc(this.model)}/history?series=${series}&since=-${this.range.value}`);
    this.historyAt = Date.now();
    this.historyEvery = Math.max(2000, 1000 * hist.interval_s);
    const versions = Object.keys(hist.versions).sort(byVersion);
    for (const c of this.charts) c.update(hist, versions);
  }

  failed(err) {
    this.outcome.error(err);
  }

  restyle() {
    for (const c of this.charts) c.restyle();
    this.refresh(true).catch((err) => this.failed(err));
  }

  showPools(entry, listing) {
    setText(this.pool, `Active pool: ${entry.pool}, serving versions ${entry.versions.map((v) => `v${v.version}`).join(", ")}.`);
    const warming = listing ? listing.versions.filter((v) => v.state === "standby").map((v) => `v${v.version}`) : [];
    const stopping = listing ? listing.versions.filter((v) => v.state === "stopping").map((v) => `v${v.version}`) : [];
    setText(this.standby, warming.length ? `A standby pool is warming up: ${warming.join(", ")} (the swap follows when every worker answered its warm-up).`
      : stopping.length ? `Stopping a pool: ${stopping.join(", ")}.` : "No standby pool: no deploy in progress.");
    if (entry.previous) {
      setText(this.prev, `Previous pool: ${entry.previous.pool} (versions ${entry.previous.versions.map((v) => `v${v}`).join(", ")}), `
        + "kept warm for a rollback.");
      this.rollback.hidden = false;
      this.rollback.textContent = `Roll back to the ${entry.previous.pool} pool`;
    } else {
      setText(this.prev, "No previous pool is warm: nothing to roll back to.");
      this.rollback.hidden = true;
    }
  }

  showPredlog(p) {
    this.predlog.hidden = !p;
    if (!p) return;
    const key = JSON.stringify(p);
    if (this.predlogKey === key) return;
    this.predlogKey = key;
    const row = (k, v) => (v === undefined || v === null ? [] : [h("dt", {}, k), h("dd", {}, v)]);
    const files = (p.files || []).slice(0, 10).map((f) => h("li", {}, h("code", {}, f.name), ` (${fmtBytes(f.bytes)})`));
    const count = p.file_count ?? (p.files || []).length;
    fill(this.predlogBody,
      h("dl", { class: "meta" },
        ...row("Folder", h("code", {}, p.path || "–")),
        ...row("Format", p.format),
        ...row("Share of requests sampled", fmtPct(p.rate, 1)),
        ...row("Writer", p.writer),
        ...row("Rows sampled", p.sampled),
        ...row("Rows written", p.written),
        ...row("Rows dropped", p.dropped),
        ...row("Files", count === undefined ? undefined : `${count}${p.bytes !== undefined ? `, ${fmtBytes(p.bytes)}` : ""}`)),
      files.length ? h("ul", { class: "files", "aria-label": "Newest files" }, ...files)
        : h("p", { class: "help" }, "No file written yet."));
  }

  async doRollback() {
    if (!window.confirm(`Roll ${this.model} back to its previous pool?`)) return;
    this.rollback.disabled = true;
    this.rollbackOutcome.busy("Rolling back…");
    try {
      const r = await api("POST", `/admin/models/${enc(this.model)}/rollback`, {});
      this.rollbackOutcome.ok(`The ${r.active} pool is active again (versions ${r.versions.map((v) => `v${v}`).join(", ")}; `
        + `swap ${r.swap_us} µs).`);
      await this.refresh(true);
    } catch (err) {
      this.rollbackOutcome.error(err);
    } finally {
      this.rollback.disabled = false;
    }
  }
}
