// DOM building blocks: the page builds its elements once and then only updates their text and values,
// so a refresh moves nothing on the screen and never takes the focus away.

/** An element: h("button", {class: "x", onclick: fn}, "text", child...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Set text only when it changed (no needless repaint, no lost selection). */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

/**
 * Keep the rows of `parent` in step with `items`: one row per key, made by `create(item)` once
 * and refreshed by `update(row, item)` on every call; rows whose key went are removed.
 */
export function syncRows(parent, items, key, create, update) {
  const have = new Map();
  for (const row of parent.children) have.set(row.dataset.key, row);
  let prev = null;
  for (const item of items) {
    const k = String(key(item));
    let row = have.get(k);
    if (!row) {
      row = create(item);
      row.dataset.key = k;
    }
    have.delete(k);
    const want = prev ? prev.nextSibling : parent.firstChild;
    if (want !== row) parent.insertBefore(row, want);
    update(row, item);
    prev = row;
  }
  for (const row of have.values()) row.remove();
}

let uid = 0;
/** A unique id for label/control pairs. */
export function newId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}
