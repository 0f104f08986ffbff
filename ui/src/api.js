// The admin API, as the page calls it: every action is one request, and an error is shown as the API
// worded it. The token is kept in sessionStorage: it lasts while the tab is open, and no other tab,
// site or later visit sees it.

const KEY = "model-router.admin-token";
const MODE = "model-router.read-only";
const ACCESS = "model-router.access";
const USER = "model-router.user";

export const auth = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  get readOnly() {
    return sessionStorage.getItem(MODE) === "1";
  },
  /**
   * True in the view without a token: only the reads the admin API answers anyone (status, traffic,
   * history, drift) are made; the store's versions, the prediction log and the audit trail are not.
   */
  get publicOnly() {
    return sessionStorage.getItem(ACCESS) === "public";
  },
  /** The name the audit trail records beside the caller's address (X-Router-User); not a credential. */
  get user() {
    return sessionStorage.getItem(USER);
  },
  signIn(token, readOnly, user, publicOnly = false) {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
    if (user) sessionStorage.setItem(USER, user);
    else sessionStorage.removeItem(USER);
    sessionStorage.setItem(MODE, readOnly || publicOnly ? "1" : "0");
    sessionStorage.setItem(ACCESS, publicOnly ? "public" : "admin");
  },
  signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(MODE);
    sessionStorage.removeItem(ACCESS);
    sessionStorage.removeItem(USER);
  },
  get signedIn() {
    return sessionStorage.getItem(MODE) !== null;
  },
};

/** An answer other than 2xx: `status` and the API's own `{"error": ...}` message. */
export class ApiError extends Error {
  constructor(status, message, method, path) {
    super(message);
    this.status = status;
    this.method = method;
    this.path = path;
  }

  /** How the page shows it: the status and the API's words, nothing reworded. */
  get shown() {
    return this.status ? `${this.status}: ${this.message}` : this.message;
  }
}

function headers(extra = {}) {
  const out = { ...extra };
  const token = auth.token;
  if (token) out.Authorization = `Bearer ${token}`;
  // Header values are Latin-1: a name outside it is sent without the characters that do not fit.
  const user = auth.user && auth.user.replace(/[^\x20-\x7e\xa0-\xff]/g, "");
  if (user) out["X-Router-User"] = user;
  return out;
}

async function decode(res, method, path) {
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const message = data && typeof data.error === "string" ? data.error : text || res.statusText;
    throw new ApiError(res.status, message, method, path);
  }
  return data;
}

/**
 * One admin API call. `body` (an object) goes as JSON: the API takes writes only with
 * `Content-Type: application/json`. Resolves to the decoded answer; rejects with ApiError.
 */
export async function api(method, path, body, token) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    cache: "no-store", credentials: "omit" };
  if (token !== undefined) {
    if (token) init.headers.Authorization = `Bearer ${token}`;
    else delete init.headers.Authorization;
  }
  if (body !== undefined) init.body = JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `the router did not answer (${err.message})`, method, path);
  }
  return decode(res, method, path);
}

/** GET that answers null for a 404 (an endpoint this router does not have). */
export async function optional(path) {
  try {
    return await api("GET", path);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 404 || err.status === 405)) return null;
    throw err;
  }
}

export const enc = encodeURIComponent;

/**
 * Push a model file: POST /admin/models/{m}/versions/{v} with the file as the body. XMLHttpRequest,
 * not fetch, because only it reports upload progress. Resolves to {status, data}.
 */
export function pushFile(model, version, file, description, onProgress) {
  const q = description ? `?description=${enc(description)}` : "";
  const path = `/admin/models/${enc(model)}/versions/${enc(version)}${q}`;
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    // The API takes a push only with one of its archive types; a File's own type may be empty.
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.upload.onload = () => onProgress(file.size, file.size, true);
    xhr.onerror = () => reject(new ApiError(0, "the upload was cut off (network error)", "POST", path));
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve({ status: xhr.status, data });
      else reject(new ApiError(xhr.status, data && data.error ? data.error : xhr.statusText, "POST", path));
    };
    xhr.send(file);
  });
}
