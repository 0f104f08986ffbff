// The model store's versions of a model (GET /admin/models/{m}/versions) with their metadata, and the
// actions on them: roll out (POST .../rollout), take out of the active set (POST .../drop), delete
// from the store (DELETE .../versions/{v}).
import { api, enc } from "./api.js";
import { fill, h, newId, setText, syncRows } from "./dom.js";
import { fmtBytes } from "./format.js";
import { Outcome, badge, scrollTable } from "./ui.js";

const STATE_TEXT = {
  serving: "serving", shadow: "shadow", idle: "idle (weight 0)", previous: "previous pool (warm)",
  standby: "standby (warming up)", stopping: "stopping", stored: "stored only",
};
const IN_SET = new Set(["serving", "shadow", "idle"]);

export function signature(meta) {
  if (!meta) return "–";
  const t = (x) => `${x.name} ${x.datatype} [${x.shape.join(", ")}]`;
  return `${(meta.inputs || []).map(t).join(", ")} → ${(meta.outputs || []).map(t).join(", ")}`;
}

export function rolloutText(r) {
  const how = { deploy: `deployed blue-green, the ${r.active} pool is active (swap ${r.swap_us} µs)`,
    traffic: "already in the active set: only its traffic changed, no worker restarted",
    create: `a new model, serving from the ${r.active} pool` }[r.action] || r.action;
  const split = Object.entries(r.weights).map(([v, w]) => (r.shadow[v] ? `v${v} shadow ${r.shadow[v]}` : `v${v} weight ${w}`));
  return `v${r.version}: ${how}. Now ${split.join(", ")}.`;
}

export class VersionsPanel {
  constructor(ctx, model) {
    this.ctx = ctx;
    this.model = model;
    this.outcome = new Outcome("versions");
    this.total = h("p", { class: "help" });
    this.rows = h("tbody");
    this.table = h("table", { class: "data versions" },
      h("caption", { class: "sr-only" }, `Stored versions of ${model}`),
      h("thead", {}, h("tr", {}, ...["Version", "State", "Size", "Pushed", "Description", "Signature", "sha256", ""]
        .map((t) => h("th", { scope: "col" }, t || h("span", { class: "sr-only" }, "Actions"))))),
      this.rows);
    this.deploy = new DeployForm(ctx, model);
    this.el = h("div", {}, this.total, scrollTable(this.table, `Stored versions of ${model}`), this.outcome.el,
      ctx.readOnly ? null : this.deploy.el);
  }

  update(listing) {
    setText(this.total, `${listing.versions.length} stored version(s), ${fmtBytes(listing.bytes)} in all.`);
    syncRows(this.rows, listing.versions, (v) => v.version, (v) => this.row(v), (row, v) => this.fillRow(row, v));
    this.deploy.update(listing);
  }

  row(v) {
    const row = h("tr", {}, h("th", { scope: "row" }), h("td"), h("td", { class: "num" }), h("td"),
      h("td", { class: "desc" }), h("td", { class: "sig" }), h("td", { class: "mono" }), h("td", { class: "row-actions" }));
    const id = v.version;
    row._rollout = h("button", { type: "button", onclick: () => this.deploy.choose(id) }, "Roll out…");
    row._drop = h("button", { type: "button", onclick: () => this.drop(id) }, "Take out of service");
    row._rm = h("button", { type: "button", class: "danger", onclick: () => this.remove(id) }, "Delete from store");
    row._desc = h("span");
    row._meta = h("pre", { class: "meta-json", tabindex: "0" });  // focusable: it may scroll, and a keyboard must reach it
    fill(row.children[4], row._desc, h("details", {}, h("summary", {}, `meta.json of v${id}`), row._meta));
    for (const b of [row._rollout, row._drop, row._rm]) b.setAttribute("aria-label", `${b.textContent} v${id}`);
    if (!this.ctx.readOnly) fill(row.children[7], row._rollout, row._drop, row._rm);
    return row;
  }

  fillRow(row, v) {
    const c = row.children;
    const meta = v.meta || {};
    setText(c[0], `v${v.version}`);
    const stateWords = STATE_TEXT[v.state] || v.state;
    const extra = v.state === "serving" ? ` · weight ${v.weight}` : v.state === "shadow" ? ` · mirrors ${v.shadow}` : "";
    if (c[1].textContent !== stateWords + extra) {
      fill(c[1], badge(stateWords, v.state === "serving" ? "good" : v.state === "shadow" ? "info" : ""), extra);
    }
    setText(c[2], fmtBytes(v.bytes));
    setText(c[3], meta.created || "–");
    setText(row._desc, meta.description || v.problem || "");
    setText(row._meta, JSON.stringify(meta, null, 2));
    setText(c[5], signature(v.meta));
    setText(c[6], meta.sha256 ? meta.sha256.slice(0, 12) : "–");
    c[6].title = meta.sha256 || "";
    row._drop.hidden = !IN_SET.has(v.state);
    row._rm.hidden = IN_SET.has(v.state);
    row._rollout.hidden = v.state === "serving" || v.state === "shadow";
  }

  async drop(version) {
    if (!window.confirm(`Take v${version} of ${this.model} out of the active set? It stays in the store, `
      + "and warm in the previous pool for a rollback.")) return;
    this.outcome.busy(`Taking v${version} out: the other versions start in a standby pool, warm up, then swap in…`);
    try {
      const r = await api("POST", `/admin/models/${enc(this.model)}/versions/${enc(version)}/drop`, {});
      this.outcome.ok(`v${r.dropped} is out of the active set (still stored); versions ${r.versions.join(", ")} `
        + `serve from the ${r.active} pool (swap ${r.swap_us} µs).`);
      if (this.onChanged) await this.onChanged();
    } catch (err) {
      this.outcome.error(err);
    }
  }

  async remove(version) {
    if (!window.confirm(`Delete v${version} of ${this.model} from the store? This cannot be undone.`)) return;
    this.outcome.busy(`Deleting v${version}…`);
    try {
      const r = await api("DELETE", `/admin/models/${enc(this.model)}/versions/${enc(version)}`);
      this.outcome.ok(`Deleted v${r.version} from the store (${fmtBytes(r.bytes)} freed).`);
      if (this.onChanged) await this.onChanged();
    } catch (err) {
      this.outcome.error(err);
    }
  }
}

/** "Add a stored version": POST .../versions/{v}/rollout with a percent, a weight or a shadow fraction. */
class DeployForm {
  constructor(ctx, model) {
    this.ctx = ctx;
    this.model = model;
    this.outcome = new Outcome("deploy");
    const vid = newId("dv");
    const aid = newId("amount");
    this.version = h("select", { id: vid, name: "version", required: true });
    this.amount = h("input", { id: aid, name: "amount", type: "number", min: "0", step: "any", required: true,
      value: "10", "aria-describedby": `${aid}-help` });
    this.help = h("p", { id: `${aid}-help`, class: "help" });
    this.kinds = {};
    const kinds = [["percent", "Share of live traffic (%)"], ["weight", "Weight (the others keep theirs)"],
      ["shadow", "Shadow (fraction mirrored, 0–1)"]];
    const radios = kinds.map(([k, text]) => {
      const id = newId("kind");
      this.kinds[k] = h("input", { id, type: "radio", name: "kind", value: k, checked: k === "percent",
        onchange: () => this.describe() });
      return h("div", { class: "check" }, this.kinds[k], h("label", { for: id }, text));
    });
    this.button = h("button", { type: "submit", class: "primary" }, "Roll out");
    this.el = h("form", { class: "deploy", onsubmit: (e) => this.submit(e), "aria-labelledby": `${vid}-title` },
      h("h3", { id: `${vid}-title` }, "Add a stored version"),
      h("div", { class: "form-grid" },
        h("div", { class: "field" }, h("label", { for: vid }, "Version"), this.version),
        h("fieldset", { class: "field" }, h("legend", {}, "How"), ...radios),
        h("div", { class: "field" }, h("label", { for: aid }, "Amount"), this.amount, this.help)),
      h("div", { class: "actions" }, this.button),
      this.outcome.el);
    this.describe();
  }

  kind() {
    return Object.keys(this.kinds).find((k) => this.kinds[k].checked);
  }

  describe() {
    const k = this.kind();
    setText(this.help, {
      percent: "Its share of live traffic; the other live versions share the rest as they do now.",
      weight: "Its weight; the other versions keep theirs.",
      shadow: "A copy of this fraction of live traffic goes to it; it never answers callers.",
    }[k]);
    this.amount.max = k === "percent" ? "100" : k === "shadow" ? "1" : "";
  }

  update(listing) {
    const versions = listing.versions.filter((v) => v.state !== "serving" && v.state !== "shadow").map((v) => v.version);
    const have = [...this.version.options].map((o) => o.value);
    if (have.join(",") !== versions.join(",")) {
      const keep = this.version.value;
      fill(this.version, ...versions.map((v) => h("option", { value: v }, `v${v}`)));
      if (versions.includes(keep)) this.version.value = keep;
    }
    this.button.disabled = versions.length === 0 || this.pending;
  }

  choose(version) {
    this.version.value = version;
    this.amount.focus();
  }

  async submit(e) {
    e.preventDefault();
    const version = this.version.value;
    const kind = this.kind();
    const value = Number(this.amount.value);
    if (!version) return;
    this.pending = true;
    this.button.disabled = true;
    this.outcome.busy(`Rolling out v${version}: a version not serving yet starts in a standby pool, warms up, `
      + "then the pools swap…");
    try {
      const r = await api("POST", `/admin/models/${enc(this.model)}/versions/${enc(version)}/rollout`,
        { [kind]: value });
      this.outcome.ok(rolloutText(r));
      if (this.onChanged) await this.onChanged();
    } catch (err) {
      this.outcome.error(err);
    } finally {
      this.pending = false;
      this.button.disabled = false;
    }
  }
}
