// Pieces every page uses: the outcome of an action, badges, section headings.
import { ApiError } from "./api.js";
import { h, setText } from "./dom.js";

/**
 * Where an action's answer shows: the API's error as it gave it (role=alert, read out at once), or
 * what the change did (role=status). Its space is kept, so a message does not push the page around.
 */
export class Outcome {
  constructor(name) {
    this.el = h("div", { class: "outcome", "aria-live": "polite", "data-for": name });
  }

  busy(text) {
    this.el.className = "outcome busy";
    this.el.setAttribute("role", "status");
    setText(this.el, text);
  }

  ok(text) {
    this.el.className = "outcome ok";
    this.el.setAttribute("role", "status");
    setText(this.el, text);
  }

  error(err) {
    this.el.className = "outcome error";
    this.el.setAttribute("role", "alert");
    setText(this.el, err instanceof ApiError ? `Refused — ${err.shown}` : `Error — ${err.message || err}`);
  }

  clear() {
    this.el.className = "outcome";
    this.el.removeAttribute("role");
    setText(this.el, "");
  }
}

/** A badge whose meaning is in its words, the colour only repeats it. */
export function badge(text, kind) {
  return h("span", { class: `badge ${kind || ""}` }, text);
}

export function setBadge(el, text, kind) {
  el.className = `badge ${kind || ""}`;
  setText(el, text);
}

export function section(title, id, ...children) {
  const hid = `${id}-title`;
  return h("section", { class: "panel", id, "aria-labelledby": hid }, h("h2", { id: hid }, title), ...children);
}

/**
 * A table that may be wider than a narrow window: it scrolls on its own, and the region takes the
 * keyboard focus so that it can be scrolled without a mouse.
 */
export function scrollTable(table, label) {
  return h("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" }, table);
}

/**
 * What a section that needs the admin token shows in the view without one: it says so plainly, instead
 * of an empty table or an error.
 */
export function needsToken(what) {
  return h("p", { class: "needs-token" }, `Needs signing in: ${what} only with the admin token.`);
}
