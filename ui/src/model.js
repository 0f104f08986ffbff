// One model: blue-green status (a deploy's warm-up, the previous pool's time left, rollback, release),
// traffic, charts over time, versions (roll out, take out, delete), push, drift, prediction log and audit
// trail. Each number comes from one admin API answer. Without the token (the read-only view) only the
// status, traffic, history and drift are read; the other sections say that they need signing in.
import { ApiError, api, enc, optional } from "./api.js";
import { AuditTable, fetchAudit } from "./audit.js";
import { FeatureChart, Palette, SeriesChart } from "./charts.js";
import { fill, h, newId, setText } from "./dom.js";
import { DriftPanel } from "./drift.js";
import { fmtBytes, fmtDuration, fmtNum, fmtPct, fmtRate, fmtSeconds } from "./format.js";
import { PushPanel } from "./push.js";
import { TrafficEditor } from "./traffic.js";
import { Outcome, badge, needsToken, section, setBadge } from "./ui.js";
import { VersionsPanel } from "./versions.js";

const RANGES = [[300, "5 minutes"], [900, "15 minutes"], [3600, "1 hour"], [21600, "6 hours"]];
// In pairs, as the grid shows them side by side in a wide window: latency, volume and errors, the
// shadow's agreement and divergence, drift overall and per feature, then the workers.
const CHARTS = [
  { series: "p50", title: "Latency p50", fmt: fmtSeconds },
  { series: "p99", title: "Latency p99", fmt: fmtSeconds },
  { series: "rate", title: "Requests per second", fmt: (v) => fmtRate(v) },
  { series: "error_rate", title: "Errors (fraction answered 5xx)", fmt: (v) => fmtPct(v, 1) },
  { series: "agreement", title: "Shadow agreement with the live answer", fmt: (v) => fmtPct(v, 1), max: 1 },
  { series: "divergence", title: "Shadow divergence (median relative difference from the live answer)",
    fmt: (v) => fmtPct(v, 1) },
  { series: "drift_psi", title: "Drift: largest PSI of an input feature", fmt: (v) => fmtNum(v) },
  { series: "feature_psi", title: "Drift per feature (PSI)", fmt: (v) => fmtNum(v), features: true },
  { series: "share", title: "Share of live traffic", fmt: (v) => fmtPct(v, 0), max: 1 },
  { series: "cpu", title: "Worker CPU (cores)", fmt: (v) => fmtNum(v) },
  { series: "memory", title: "Worker memory (resident)", fmt: (v) => fmtBytes(v) },
];

const vlist = (versions) => versions.map((v) => `v${v}`).join(", ");

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
    this.palette = new Palette();

    // Blue-green
    this.pool = h("p", { class: "pool-line" });
    this.standby = h("p", { class: "pool-line standby", "aria-live": "polite" });
    this.warmup = h("progress", { class: "warmup", max: "1", value: "0", hidden: true });
    this.prev = h("p", { class: "pool-line" });
    this.poolOutcome = new Outcome("bluegreen");
    this.rollback = h("button", { type: "button", class: "primary", onclick: () => this.doRollback() }, "Roll back");
    this.release = h("button", { type: "button", class: "danger", onclick: () => this.doRelease(),
      "aria-describedby": "release-help" }, "Release previous pool");
    this.poolActions = h("div", { class: "actions", hidden: true }, this.rollback, this.release,
      h("span", { id: "release-help", class: "help" },
        "Release stops the previous pool now: no rollback to it afterwards, and the versions only it holds can be deleted."));
    const bluegreen = section("Blue-green", "bluegreen", this.pool,
      h("div", { class: "standby-row" }, this.standby, this.warmup), this.prev,
      ctx.readOnly ? null : this.poolActions, this.poolOutcome.el);

    // Traffic
    this.traffic = new TrafficEditor(ctx, model);
    this.traffic.palette = this.palette;
    this.traffic.onChanged = changed;

    // Charts
    const rid = newId("range");
    this.range = h("select", { id: rid, name: "range", onchange: () => this.refresh(true) },
      ...RANGES.map(([s, t]) => h("option", { value: String(s), selected: s === 900 }, t)));
    this.charts = CHARTS.map((c) => (c.features ? new FeatureChart(c) : new SeriesChart({ ...c, palette: this.palette })));
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

    // Prediction log and audit trail: only where this router answers them; without the token they say
    // that they need it, as the versions do.
    const locked = ctx.publicOnly;
    this.predlogBody = h("div");
    this.predlog = section("Prediction log", "predlog",
      locked ? needsToken("where the prediction log is and what it holds is shown") : this.predlogBody);
    this.predlog.hidden = !locked;
    this.audit = new AuditTable(`Changes to ${model}, newest first`);
    this.auditSection = section("Audit trail", "audit",
      locked ? needsToken("the changes made to this model are shown") : this.audit.el);
    this.auditSection.hidden = !locked;

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
      section("Versions", "versions",
        locked ? needsToken("the stored versions, with their metadata, are shown") : this.versions.el),
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
    const locked = this.ctx.publicOnly;  // no token: only the reads the API answers anyone
    const [listing, drift, predlog, audit] = await Promise.all([
      locked ? null : api("GET", `/admin/models/${m}/versions`).catch((e) => (e.status === 404 ? null : Promise.reject(e))),
      api("GET", `/admin/models/${m}/drift`),
      locked ? null : optional(`/admin/models/${m}/predlog`).catch(() => null),
      locked ? null : fetchAudit(this.model, 20).catch(() => null),
    ]);
    this.outcome.clear();
    const allLive = entry.versions.every((v) => v.workers.some((w) => w.live));
    setBadge(this.ready, allLive ? "all versions live" : "a version has no live worker", allLive ? "good" : "bad");
    this.showPools(entry, listing);
    this.palette.see(entry.versions.map((v) => v.version));
    this.traffic.update(entry);
    if (listing) this.versions.update(listing);
    this.drift.update(drift);
    if (!locked) {
      this.showPredlog(predlog);
      this.auditSection.hidden = audit === null;
      if (audit) this.audit.update(audit.entries);
    }
    if (force || Date.now() - this.historyAt >= this.historyEvery) await this.refreshHistory();
  }

  async refreshHistory() {
    const series = CHARTS.map((c) => c.series).join(",");
    const hist = await api("GET", `/admin/models/${enc(this.model)}/history?series=${series}&since=-${this.range.value}`);
    this.historyAt = Date.now();
    this.historyEvery = Math.max(2000, 1000 * hist.interval_s);
    const versions = Object.keys(hist.versions).sort(byVersion);
    this.palette.see(versions);
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
    setText(this.pool, `Active pool: ${entry.pool}, serving versions ${vlist(entry.versions.map((v) => v.version))}.`);
    const sb = entry.standby;
    const stopping = listing ? listing.versions.filter((v) => v.state === "stopping").map((v) => v.version) : [];
    if (sb) {
      // A deploy in progress: its workers load the model, then answer a warm-up request; the swap follows.
      setText(this.standby, `Deploy in progress: the ${sb.pool} pool (versions ${vlist(sb.versions)}) is warming up, `
        + `${sb.live} of ${sb.workers} workers live.`);
      this.warmup.max = Math.max(1, sb.workers);
      this.warmup.value = sb.live;
      this.warmup.setAttribute("aria-label", `Warm-up of the ${sb.pool} pool: ${sb.live} of ${sb.workers} workers live`);
    } else {
      setText(this.standby, stopping.length ? `No deploy in progress; a pool is stopping (versions ${vlist(stopping)}).`
        : "No standby pool: no deploy in progress.");
    }
    this.warmup.hidden = !sb;
    const p = entry.previous;
    if (p) {
      const left = p.expires_in_s === null || p.expires_in_s === undefined ? ""
        : ` for another ${fmtDuration(p.expires_in_s)}`;
      setText(this.prev, `Previous pool: ${p.pool} (versions ${vlist(p.versions)}), kept warm for a rollback${left}.`);
      setText(this.rollback, `Roll back to the ${p.pool} pool`);
    } else {
      setText(this.prev, "No previous pool is warm: nothing to roll back to.");
    }
    this.previous = p;
    this.poolActions.hidden = !p;
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
    await this.poolAction("Rolling back…", "rollback", (r) => `The ${r.active} pool is active again `
      + `(versions ${vlist(r.versions)}; swap ${r.swap_us} µs).`);
  }

  async doRelease() {
    const p = this.previous;
    const which = p ? `the previous (${p.pool}) pool of ${this.model}, versions ${vlist(p.versions)}` : "the previous pool";
    if (!window.confirm(`Stop ${which} now? There is no rollback to it afterwards.`)) return;
    await this.poolAction("Releasing the previous pool…", "release", (r) => `Released the ${r.pool} pool `
      + `(versions ${vlist(r.versions)}): it is stopping, and there is no rollback to it from now on. `
      + "The versions only it held can be deleted once it has stopped.");
  }

  /** One POST /admin/models/{m}/{action} with {}: its answer (or the API's error) under the buttons. */
  async poolAction(busy, action, words) {
    this.rollback.disabled = true;
    this.release.disabled = true;
    this.poolOutcome.busy(busy);
    try {
      const r = await api("POST", `/admin/models/${enc(this.model)}/${action}`, {});
      this.poolOutcome.ok(words(r));
      await this.refresh(true);
    } catch (err) {
      this.poolOutcome.error(err);
    } finally {
      this.rollback.disabled = false;
      this.release.disabled = false;
    }
  }
}
