// Sign-in: the admin token, checked with one call that needs it (GET /admin/audit?limit=1), then kept in
// sessionStorage. The admin API's own rule decides: with a token configured every change and every read
// of the store, the prediction log and the audit trail needs it; without one, loopback callers are let in
// with none (leave the field empty). The read-only view needs no token: the status, traffic, history and
// drift reads answer anyone (docs/admin.md, "Access").
import { ApiError, api, auth } from "./api.js";
import { h } from "./dom.js";
import { Outcome } from "./ui.js";

/** The call that tells whether a token (or none) opens the admin API: one that the API guards. */
const CHECK = "/admin/audit?limit=1";

export class SignInPage {
  constructor(ctx, error) {
    this.title = "Sign in";
    this.ctx = ctx;
    this.outcome = new Outcome("signin");
    this.user = h("input", { id: "user", name: "user", autocomplete: "username", spellcheck: "false",
      "aria-describedby": "user-help" });
    this.token = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password",
      "aria-describedby": "token-help", spellcheck: "false" });
    this.readOnly = h("input", { id: "read-only", name: "read-only", type: "checkbox" });
    const form = h("form", { class: "signin", onsubmit: (e) => this.submit(e) },
      h("div", { class: "field" },
        h("label", { for: "user" }, "Your name (optional)"),
        this.user,
        h("p", { id: "user-help", class: "help" },
          "Recorded in the audit trail beside your address, so that others see who changed what.")),
      h("div", { class: "field" },
        h("label", { for: "token" }, "Admin token"),
        this.token,
        h("p", { id: "token-help", class: "help" },
          "The router's ROUTER_ADMIN_TOKEN. Leave it empty on a router without a token (it answers "
          + "callers on this machine only). It is kept in this tab until you sign out or close it.")),
      h("div", { class: "field check" }, this.readOnly,
        h("label", { for: "read-only" }, "Read-only view (hide every control that changes something)")),
      h("div", { class: "actions" },
        h("button", { type: "submit", class: "primary" }, "Sign in"),
        h("button", { type: "button", "aria-describedby": "view-help", onclick: () => this.view() }, "View read-only")),
      h("p", { id: "view-help", class: "help" },
        "No token needed: the models, their traffic, charts and drift. The stored versions, the prediction "
        + "log, the audit trail and every change need the token."),
      this.outcome.el);
    this.el = h("div", { class: "page narrow" }, h("h1", {}, "Sign in to model-router"), form);
    if (error) this.outcome.error(error);
    queueMicrotask(() => this.user.focus());
  }

  async submit(e) {
    e.preventDefault();
    const token = this.token.value.trim();
    if (!token && this.readOnly.checked) {
      await this.view();
      return;
    }
    this.outcome.busy("Checking…");
    try {
      await api("GET", CHECK, undefined, token || null);
    } catch (err) {
      this.outcome.error(err);
      return;
    }
    auth.signIn(token, this.readOnly.checked, this.user.value.trim());
    this.ctx.signedIn();
  }

  /**
   * The read-only view, without a token. Where the API answers this caller everything without one (a
   * router without a token, called from this machine) the view shows everything; otherwise only what
   * the API answers anyone.
   */
  async view() {
    this.outcome.busy("Opening the read-only view…");
    let publicOnly = false;
    try {
      await api("GET", CHECK, undefined, null);
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) {
        this.outcome.error(err);
        return;
      }
      publicOnly = true;
      try {
        await api("GET", "/admin/models", undefined, null);
      } catch (err2) {
        this.outcome.error(err2);
        return;
      }
    }
    auth.signIn("", true, this.user.value.trim(), publicOnly);
    this.ctx.signedIn();
  }
}
