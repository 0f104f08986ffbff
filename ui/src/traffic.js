// The traffic editor: one slider per live version (shares in percent that always add up to 100), a
// role per version (live or shadow) and shadow fractions; a preview of the split and of the change
// to config.toml; one PUT /admin/models/{m}/traffic applies it all in one swap.
import { api, enc } from "./api.js";
import { fill, h, newId, setText, syncRows } from "./dom.js";
import { versionStyle } from "./charts.js";
import { moveShare, sharesOf } from "./split.js";
import { Outcome } from "./ui.js";

function rolesOf(m) {
  return Object.fromEntries(m.versions.map((v) => [v.version, v.shadow ? "shadow" : "live"]));
}

export class TrafficEditor {
  constructor(ctx, model) {
    this.ctx = ctx;
    this.model = model;
    this.m = null;
    this.draft = null;
    /** Each version's style (the page's Palette shares it with the charts); by position until set. */
    this.palette = null;
    this.outcome = new Outcome("traffic");
    this.rows = h("div", { class: "traffic-rows" });
    this.nowBar = h("div", { class: "split-bar", role: "img" });
    this.afterBar = h("div", { class: "split-bar", role: "img" });
    this.change = h("tbody");
    this.request = h("code");
    this.apply = h("button", { type: "button", class: "primary", disabled: true, onclick: () => this.submit() },
      "Apply traffic change");
    this.reset = h("button", { type: "button", disabled: true, onclick: () => this.discard() }, "Discard");
    this.el = h("div", { class: "traffic" },
      h("p", { class: "help" }, "Shares of live traffic add up to 100 %: moving one slider scales the others "
        + "to share the rest as they did. A shadow gets a copy of a fraction of live traffic and never answers "
        + "callers. Nothing changes until you apply it; no worker restarts."),
      this.rows,
      h("div", { class: "preview", "aria-label": "Preview of the change" },
        h("div", { class: "bars" },
          h("div", { class: "bar-row" }, h("span", { class: "bar-label" }, "Now"), this.nowBar),
          h("div", { class: "bar-row" }, h("span", { class: "bar-label" }, "After"), this.afterBar)),
        h("div", { class: "table-wrap" }, h("table", { class: "data change" },
          h("caption", {}, "Change to config.toml"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Version"), h("th", { scope: "col" }, "Now"),
            h("th", { scope: "col" }, "After"))),
          this.change)),
        h("p", { class: "request" }, "Request: ", this.request)),
      h("div", { class: "actions" }, this.apply, this.reset),
      this.outcome.el);
  }

  /** The model's status entry (GET /admin/models) changed: show it, keeping an edit in progress. */
  update(m) {
    const setKey = m.versions.map((v) => v.version).join(",");
    if (this.m && this.m.versions.map((v) => v.version).join(",") !== setKey) this.draft = null;
    this.m = m;
    if (this.draft && !this.pending) {
      // An edit in progress stays; a change made elsewhere that makes it moot drops it.
      if (!Object.keys(this.body()).length) this.draft = null;
    }
    this.render();
  }

  start() {
    if (this.draft) return;
    const roles = rolesOf(this.m);
    const live = Object.fromEntries(this.m.versions.filter((v) => roles[v.version] === "live")
      .map((v) => [v.version, v.weight]));
    this.draft = { roles, shares: sharesOf(live),
      shadow: Object.fromEntries(this.m.versions.map((v) => [v.version, v.shadow || 0])) };
  }

  /** What the page shows as "after": the draft, or the model as it is. */
  view() {
    if (this.draft) return this.draft;
    const roles = rolesOf(this.m);
    const live = Object.fromEntries(this.m.versions.filter((v) => roles[v.version] === "live")
      .map((v) => [v.version, v.weight]));
    return { roles, shares: sharesOf(live),
      shadow: Object.fromEntries(this.m.versions.map((v) => [v.version, v.shadow || 0])) };
  }

  setShare(version, percent) {
    this.start();
    this.draft.shares = moveShare(this.draft.shares, version, percent);
    this.render();
  }

  setRole(version, role) {
    this.start();
    const d = this.draft;
    if (d.roles[version] === role) return;
    d.roles[version] = role;
    const shares = { ...d.shares };
    if (role === "shadow") {
      delete shares[version];
      if (!d.shadow[version]) d.shadow[version] = 1;
    } else {
      shares[version] = 0;
      d.shadow[version] = 0;
    }
    d.shares = sharesOf(shares);
    this.render();
  }

  setShadow(version, percent) {
    this.start();
    this.draft.shadow[version] = Math.max(0, Math.min(100, Math.round(percent))) / 100;
    this.render();
  }

  discard() {
    this.draft = null;
    this.outcome.clear();
    this.render();
  }

  /** The PUT body: only what differs from the model's traffic now. */
  body() {
    if (!this.draft || !this.m) return {};
    const weights = {};
    const shadow = {};
    for (const v of this.m.versions) {
      const id = v.version;
      const cur = { w: v.weight, s: v.shadow || 0 };
      if (this.draft.roles[id] === "live") {
        const w = this.draft.shares[id] ?? 0;
        if (w !== cur.w) weights[id] = w;
        if (cur.s) shadow[id] = 0;
      } else {
        if (cur.w) weights[id] = 0;
        if (this.draft.shadow[id] !== cur.s) shadow[id] = this.draft.shadow[id];
      }
    }
    const body = {};
    if (Object.keys(weights).length) body.weights = weights;
    if (Object.keys(shadow).length) body.shadow = shadow;
    return body;
  }

  render() {
    const m = this.m;
    if (!m) return;
    const view = this.view();
    const ro = this.ctx.readOnly;
    const order = m.versions.map((v) => v.version);
    const style = (v) => (this.palette ? this.palette.index(v) : order.indexOf(v));
    syncRows(this.rows, m.versions, (v) => v.version, (v) => this.row(v), (row, v) => {
      const id = v.version;
      const role = view.roles[id];
      row._role.value = role;
      row._role.disabled = ro;
      const live = role === "live";
      row._share.hidden = !live;
      row._mirror.hidden = live;
      const share = view.shares[id] ?? 0;
      if (row._slider.value !== String(share)) row._slider.value = String(share);
      row._slider.setAttribute("aria-valuetext", `${share} % of live traffic`);
      row._slider.disabled = ro || Object.keys(view.shares).length < 2;
      setText(row._out, `${share} %`);
      const frac = Math.round(100 * (view.shadow[id] || 0));
      if (row._shadow.value !== String(frac)) row._shadow.value = String(frac);
      row._shadow.setAttribute("aria-valuetext", `${frac} % of live traffic mirrored`);
      row._shadow.disabled = ro;
      setText(row._sout, `${frac} %`);
      row.style.setProperty("--swatch", versionStyle(style(id)).stroke);
    });
    const nowView = { roles: rolesOf(m), shares: sharesOf(Object.fromEntries(m.versions
      .filter((v) => !v.shadow).map((v) => [v.version, v.weight]))),
      shadow: Object.fromEntries(m.versions.map((v) => [v.version, v.shadow || 0])) };
    this.bar(this.nowBar, nowView, order, style, "now");
    this.bar(this.afterBar, view, order, style, "after the change");
    const body = this.body();
    const changed = Object.keys(body).length > 0;
    this.apply.disabled = ro || !changed || this.pending;
    this.reset.disabled = !this.draft || this.pending;
    this.apply.hidden = ro;
    this.reset.hidden = ro;
    const lines = [];
    const desc = (role, weight, shadow) => (role === "live" ? `weight = ${weight}` : `shadow = ${shadow} (weight 0)`);
    for (const v of m.versions) {
      const id = v.version;
      const before = desc(v.shadow ? "shadow" : "live", v.weight, v.shadow);
      const after = this.draft ? desc(view.roles[id], view.shares[id] ?? 0, view.shadow[id]) : before;
      if (after !== before) lines.push([id, before, after]);
    }
    syncRows(this.change, lines.length ? lines : [["", "no change", ""]], (l) => `${l[0]}|${l[1]}|${l[2]}`,
      () => h("tr", {}, h("th", { scope: "row" }), h("td"), h("td")), (row, l) => {
        setText(row.children[0], l[0] ? `v${l[0]}` : "—");
        setText(row.children[1], l[1]);
        setText(row.children[2], l[2]);
      });
    setText(this.request, changed ? `PUT /admin/models/${this.model}/traffic ${JSON.stringify(body)}` : "none");
  }

  bar(el, view, order, style, when) {
    const parts = order.filter((v) => view.roles[v] === "live" && (view.shares[v] || 0) > 0)
      .map((v) => [v, view.shares[v]]);
    const shadows = order.filter((v) => view.roles[v] === "shadow" && view.shadow[v] > 0);
    const words = parts.map(([v, p]) => `v${v} ${p} %`).join(", ")
      + (shadows.length ? `; shadows: ${shadows.map((v) => `v${v} mirrors ${Math.round(100 * view.shadow[v])} %`).join(", ")}` : "");
    el.setAttribute("aria-label", `Split ${when}: ${words || "none"}`);
    syncRows(el, parts, (p) => p[0], () => h("span", { class: "seg" }), (seg, [v, p]) => {
      seg.style.width = `${p}%`;
      seg.style.setProperty("--swatch", versionStyle(style(v)).stroke);
      seg.dataset.dash = String(style(v) % 4);
      setText(seg, p >= 15 ? `v${v} ${p}%` : "");
      seg.title = `v${v}: ${p} %`;
    });
  }

  row(v) {
    const id = v.version;
    const rid = newId("role");
    const sid = newId("share");
    const fid = newId("mirror");
    const row = h("div", { class: "traffic-row" });
    row._role = h("select", { id: rid, onchange: (e) => this.setRole(id, e.target.value) },
      h("option", { value: "live" }, "live"), h("option", { value: "shadow" }, "shadow"));
    row._slider = h("input", { id: sid, type: "range", min: "0", max: "100", step: "1",
      oninput: (e) => this.setShare(id, Number(e.target.value)) });
    row._out = h("output", { for: sid, class: "num" });
    row._shadow = h("input", { id: fid, type: "range", min: "0", max: "100", step: "1",
      oninput: (e) => this.setShadow(id, Number(e.target.value)) });
    row._sout = h("output", { for: fid, class: "num" });
    row._share = h("div", { class: "slider" }, h("label", { for: sid }, `Share of live traffic for v${id}`),
      row._slider, row._out);
    row._mirror = h("div", { class: "slider" }, h("label", { for: fid }, `Fraction mirrored to v${id}`),
      row._shadow, row._sout);
    fill(row, h("span", { class: "swatch", "aria-hidden": "true" }), h("span", { class: "vname" }, `v${id}`),
      h("div", { class: "role" }, h("label", { for: rid }, `Role of v${id}`), row._role),
      row._share, row._mirror);
    return row;
  }

  async submit() {
    const body = this.body();
    if (!Object.keys(body).length) return;
    this.pending = true;
    this.render();
    this.outcome.busy("Applying…");
    try {
      const t = await api("PUT", `/admin/models/${enc(this.model)}/traffic`, body);
      const words = Object.entries(t.weights).map(([v, w]) => (t.shadow[v]
        ? `v${v} shadow ${t.shadow[v]}` : `v${v} weight ${w}`));
      this.outcome.ok(`Applied: ${words.join(", ")}.`);
      this.draft = null;
      if (this.onChanged) await this.onChanged();
    } catch (err) {
      this.outcome.error(err);
    } finally {
      this.pending = false;
      this.render();
    }
  }
}
