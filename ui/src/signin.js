// Sign-in: the admin token, checked with one read of GET /admin/models, then kept in sessionStorage.
// The admin API's own rule decides: with a token configured every call needs it; without one,
// loopback callers are let in with none (leave the field empty).
import { api, auth } from "./api.js";
import { h } from "./dom.js";
import { Outcome } from "./ui.js";

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
      h("button", { type: "submit", class: "primary" }, "Sign in"),
      this.outcome.el);
    this.el = h("div", { class: "page narrow" }, h("h1", {}, "Sign in to model-router"), form);
    if (error) this.outcome.error(error);
    queueMicrotask(() => this.user.focus());
  }

  async submit(e) {
    e.preventDefault();
    const token = this.token.value.trim();
    this.outcome.busy("Checking…");
    try {
      await api("GET", "/admin/models", undefined, token || null);
    } catch (err) {
      this.outcome.error(err);
      return;
    }
    auth.signIn(token, this.readOnly.checked, this.user.value.trim());
    this.ctx.signedIn();
  }
}
