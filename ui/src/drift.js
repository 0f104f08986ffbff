// Data drift per version (GET /admin/models/{m}/drift): which features drift from the version's
// reference sample, by how much (PSI, Jensen-Shannon, Kolmogorov-Smirnov), and since when.
import { fill, h, setText, syncRows } from "./dom.js";
import { fmtNum, fmtSince } from "./format.js";
import { badge, scrollTable } from "./ui.js";

function state(f, judged) {
  if (f.drifting) return [f.since ? `drifting since ${fmtSince(f.since)}` : "drifting", "bad"];
  if (f.warning) return ["warning", "warn"];
  return judged ? ["ok", "good"] : ["too few rows to judge", ""];
}

export class DriftPanel {
  constructor() {
    this.note = h("p", { class: "help" });
    this.list = h("div", { class: "drift-list" });
    this.el = h("div", {}, this.note, this.list);
  }

  update(d) {
    if (!d.enabled) {
      setText(this.note, "Drift monitoring is off for this model ([models.drift] enabled = false).");
      fill(this.list);
      return;
    }
    const t = d.thresholds;
    setText(this.note, `Against each version's reference sample. Thresholds: PSI warning ${t.psi_warning}, `
      + `drift ${t.psi_drift}; JS ${t.js_drift}; KS ${t.ks_drift}; judged from ${t.min_window} rows.`);
    syncRows(this.list, Object.entries(d.versions), ([v]) => v, ([v]) => {
      const el = h("div", { class: "drift-version" });
      el._title = h("h3", {}, `v${v} `);
      el._badge = h("span");
      el._title.append(el._badge);
      el._info = h("p", { class: "help" });
      el._rows = h("tbody");
      el._table = scrollTable(h("table", { class: "data" },
        h("caption", { class: "sr-only" }, `Drift of v${v}, per feature`),
        h("thead", {}, h("tr", {}, ...["Feature", "PSI", "JS", "KS", "State"].map((x, i) => h("th",
          { scope: "col", class: i && i < 4 ? "num" : "" }, x)))), el._rows), `Drift of v${v}`);
      fill(el, el._title, el._info, el._table);
      return el;
    }, (el, [, s]) => {
      if (!s) {
        fill(el._badge, badge("no report yet", ""));
        setText(el._info, "No worker of this version has reported yet.");
        el._table.hidden = true;
        return;
      }
      // Below min_window rows the workers judge nothing (docs/monitoring.md): no flag is not "ok" yet.
      const judged = s.inputs.window >= d.thresholds.min_window;
      const [word, kind] = state(s, judged);
      if (el._badge.textContent !== word) fill(el._badge, badge(word, kind));
      const ref = s.inputs.reference ? `${s.inputs.reference} reference rows` : `collecting the reference (${s.inputs.collecting} rows)`;
      setText(el._info, `Window of ${s.inputs.window} rows; ${ref}.`);
      const feats = [];
      for (const group of ["inputs", "outputs"]) {
        for (const [name, f] of Object.entries(s[group].features)) feats.push({ name: `${group === "inputs" ? "in" : "out"}: ${name}`, ...f });
      }
      feats.sort((a, b) => (b.psi ?? -1) - (a.psi ?? -1));
      el._table.hidden = feats.length === 0;  // no feature until the reference is complete
      syncRows(el._rows, feats, (f) => f.name, () => h("tr", {}, h("th", { scope: "row" }),
        h("td", { class: "num" }), h("td", { class: "num" }), h("td", { class: "num" }), h("td")), (row, f) => {
        const c = row.children;
        setText(c[0], f.name);
        setText(c[1], fmtNum(f.psi));
        setText(c[2], fmtNum(f.js));
        setText(c[3], fmtNum(f.ks));
        const [w, k] = state(f, judged);
        if (c[4].textContent !== w) fill(c[4], badge(w, k));
      });
    });
  }
}
