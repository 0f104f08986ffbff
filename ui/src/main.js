// The web UI of model-router: a client of the admin API (docs/admin.md), nothing more.
// Pages: sign-in, the models overview, a model's detail, the audit trail. Routes live in the hash
// (#/models/fraud), so any path under /ui/ loads the same page.
import { ApiError, auth } from "./api.js";
import { fill, h, setText } from "./dom.js";
import { AuditPage } from "./audit.js";
import { ModelPage } from "./model.js";
import { OverviewPage } from "./overview.js";
import { SignInPage } from "./signin.js";

const REFRESH_MS = 2000;

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const banner = document.getElementById("banner");
let page = null;
let timer = null;
let refreshing = false;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (!auth.signedIn) return { name: "signin" };
  if (parts[0] === "models" && parts[1]) return { name: "model", model: parts[1] };
  if (parts[0] === "audit") return { name: "audit" };
  return { name: "overview" };
}

function renderNav(current) {
  const link = (href, text, name) => h("a", { href, "aria-current": current === name ? "page" : null }, text);
  if (!auth.signedIn) {
    fill(nav);
    fill(banner);
    return;
  }
  // Without the token the audit trail cannot be read: no link to it, and "Sign in" instead of "Sign out".
  fill(nav,
    link("#/", "Models", "overview"),
    auth.publicOnly ? null : link("#/audit", "Audit trail", "audit"),
    h("button", { type: "button", class: "link", onclick: signOut }, auth.publicOnly ? "Sign in" : "Sign out"));
  let words = null;
  if (auth.publicOnly) {
    words = "Read-only view without the admin token: models, traffic, charts and drift. The stored versions, "
      + "the prediction log, the audit trail and every change need signing in.";
  } else if (auth.readOnly) {
    words = "Read-only view: every control that changes something is hidden.";
  }
  fill(banner, words ? h("p", { class: "readonly-banner" }, words) : null);
}

/** Go to the overview (or, signed out, the sign-in page): one show() whether or not the hash changes. */
function home() {
  if (location.hash && location.hash !== "#/") location.hash = "#/";
  else show();
}

function signOut() {
  auth.signOut();
  home();
}

const ctx = {
  get readOnly() {
    return auth.readOnly;
  },
  /** No token: only the reads the API answers anyone; the sections that need one say so. */
  get publicOnly() {
    return auth.publicOnly;
  },
  /** An answer that says the sign-in no longer holds (401, 403 with a token) leads back to it. */
  authFailed(err) {
    return err instanceof ApiError && (err.status === 401 || (err.status === 403 && auth.token));
  },
  signedIn() {
    home();
  },
};

async function refresh() {
  if (!page || refreshing || document.hidden || !page.refresh) return;
  refreshing = true;
  const current = page;
  try {
    await current.refresh();
  } catch (err) {
    if (current !== page) return;
    if (ctx.authFailed(err)) {
      // The token no longer opens the admin API (changed, or the router restarted with another one).
      auth.signOut();
      show(err);
    } else if (current.failed) {
      current.failed(err);
    }
  } finally {
    refreshing = false;
  }
}

function show(signInError) {
  if (page && page.destroy) page.destroy();
  clearInterval(timer);
  const r = route();
  renderNav(r.name);
  if (r.name === "signin") page = new SignInPage(ctx, signInError);
  else if (r.name === "model") page = new ModelPage(ctx, r.model);
  else if (r.name === "audit") page = new AuditPage(ctx);
  else page = new OverviewPage(ctx);
  fill(main, page.el);
  document.title = `${page.title} — model-router`;
  const heading = main.querySelector("h1");
  if (heading && r.name !== "signin") {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

window.addEventListener("hashchange", () => show());
document.addEventListener("visibilitychange", () => refresh());
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  if (page && page.restyle) page.restyle();
});

setText(document.getElementById("where"), location.host);
show();

