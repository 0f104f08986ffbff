// How numbers read on the page. Nothing is computed here that the API did not answer.

export function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1000) return Math.round(v).toLocaleString("en");
  return Number(v.toPrecision(digits)).toString();
}

export function fmtRate(v) {
  return v === null || v === undefined ? "–" : `${fmtNum(v)}/s`;
}

export function fmtPct(fraction, digits = 1) {
  if (fraction === null || fraction === undefined || Number.isNaN(fraction)) return "–";
  return `${(100 * fraction).toFixed(digits)} %`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s === 0) return "0";
  if (s < 1e-3) return `${fmtNum(s * 1e6)} µs`;
  if (s < 1) return `${fmtNum(s * 1e3)} ms`;
  return `${fmtNum(s)} s`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

export function fmtTime(unixSeconds) {
  if (!unixSeconds) return "–";
  const d = new Date(unixSeconds * 1000);
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

/** The newest point of a history series (null: no value in that interval, or no point yet). */
export function latest(values) {
  return values && values.length ? values[values.length - 1] : null;
}

/** A span of seconds as people say it: "45 s", "4 min 52 s", "1 h 05 min". */
export function fmtDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  const n = Math.max(0, Math.round(s));
  if (n < 60) return `${n} s`;
  if (n < 3600) return `${Math.floor(n / 60)} min ${String(n % 60).padStart(2, "0")} s`;
  return `${Math.floor(n / 3600)} h ${String(Math.floor((n % 3600) / 60)).padStart(2, "0")} min`;
}

/** A moment of today by its time alone, an earlier one with its date. */
export function fmtSince(unixSeconds) {
  if (!unixSeconds) return "–";
  const d = new Date(unixSeconds * 1000);
  if (d.toDateString() === new Date().toDateString()) return d.toLocaleTimeString("en-GB");
  return fmtTime(unixSeconds);
}
