// The audit trail of the control plane (GET /admin/audit?model=M&limit=N): who changed what, when,
// and how it went. Shown only where the router answers it.
import { optional, enc } from "./api.js";
import { fill, h, newId, setText, syncRows } from "./dom.js";
import { fmtTime } from "./format.js";
import { Outcome, badge, needsToken, scrollTable } from "./ui.js";

export class AuditTable {
  constructor(caption) {
    this.rows = h("tbody");
    this.el = scrollTable(h("table", { class: "data audit" },
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, ...["When", "Who", "Action", "Model", "Version", "Result", "Details"]
        .map((t) => h("th", { scope: "col" }, t)))), this.rows), caption);
  }

  update(entries) {
    const shown = entries.length ? entries : [null];
    syncRows(this.rows, shown, (e) => (e ? `${e.time}|${e.action}|${e.model}|${e.version}` : "none"),
      () => h("tr", {}, h("td"), h("td"), h("td"), h("td"), h("td"), h("td"), h("td", { class: "detail" })),
      (row, e) => {
        const c = row.children;
        if (!e) {
          setText(c[0], "No change recorded yet.");
          return;
        }
        setText(c[0], fmtTime(e.time));
        setText(c[1], e.who || "–");
        setText(c[2], e.action);
        setText(c[3], e.model || "–");
        setText(c[4], e.version ? `v${e.version}` : "–");
        if (c[5].textContent !== e.result) {
          fill(c[5], badge(e.result, e.result === "ok" ? "good" : e.result === "refused" ? "warn" : "bad"));
        }
        const detail = e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : "";
        setText(c[6], [e.error, detail].filter(Boolean).join(" — "));
      });
  }
}

/** GET /admin/audit, or null where the router does not have it (404). */
export function fetchAudit(model, limit) {
  const q = [model ? `model=${enc(model)}` : "", `limit=${limit}`].filter(Boolean).join("&");
  return optional(`/admin/audit?${q}`);
}

export class AuditPage {
  constructor(ctx) {
    this.title = "Audit trail";
    this.ctx = ctx;
    this.outcome = new Outcome("audit");
    const mid = newId("model");
    const lid = newId("limit");
    this.model = h("input", { id: mid, name: "model", autocomplete: "off", placeholder: "all models",
      onchange: () => this.refresh() });
    this.limit = h("select", { id: lid, name: "limit", onchange: () => this.refresh() },
      ...[50, 200, 1000].map((n) => h("option", { value: String(n) }, String(n))));
    this.table = new AuditTable("Changes, newest first");
    this.missing = h("p", { class: "help", hidden: true }, "This router does not keep an audit trail.");
    this.el = h("div", { class: "page" }, h("h1", {}, "Audit trail"),
      h("p", { class: "help" }, "Every change made through the control plane (admin API, CLI, this page), newest first."),
      h("div", { class: "form-grid filters" },
        h("div", { class: "field" }, h("label", { for: mid }, "Model"), this.model),
        h("div", { class: "field" }, h("label", { for: lid }, "Entries"), this.limit)),
      this.outcome.el, this.missing, this.table.el);
    if (ctx.publicOnly) {
      // Reached by its address in the view without the token: say what it needs instead of a refusal.
      this.el.replaceChildren(this.el.firstChild, needsToken("the audit trail is shown"));
    }
  }

  async refresh() {
    if (this.ctx.publicOnly) return;
    const a = await fetchAudit(this.model.value.trim(), this.limit.value);
    this.outcome.clear();
    this.missing.hidden = a !== null;
    this.table.el.hidden = a === null;
    if (a) this.table.update(a.entries);
  }

  failed(err) {
    this.outcome.error(err);
  }
}
