// The arithmetic of the traffic sliders: shares in whole percents that always add up to 100.
// Moving one version's share scales the others to share the rest in their proportions: the rule a
// rollout's {"percent": P} follows in the control plane (docs/admin.md), here only to preview the
// weights the page will send, which the API then validates as it would any others.

/** Integers in proportion to `values` (all >= 0) that add up to `total` (largest remainder). */
export function apportion(values, total) {
  const sum = values.reduce((a, b) => a + b, 0);
  if (values.length === 0) return [];
  const exact = sum > 0 ? values.map((v) => (v * total) / sum) : values.map(() => total / values.length);
  const out = exact.map(Math.floor);
  let left = total - out.reduce((a, b) => a + b, 0);
  const order = exact.map((v, i) => [v - Math.floor(v), i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, i] of order) {
    if (left <= 0) break;
    out[i] += 1;
    left -= 1;
  }
  return out;
}

/** Each live version's share now, in whole percents adding up to 100: {version: percent}. */
export function sharesOf(weights) {
  const names = Object.keys(weights);
  const pct = apportion(names.map((v) => Math.max(0, Number(weights[v]) || 0)), 100);
  return Object.fromEntries(names.map((v, i) => [v, pct[i]]));
}

/**
 * `shares` with `version` set to `percent` and the others scaled to share the rest as they did
 * (evenly when they all had none).
 */
export function moveShare(shares, version, percent) {
  const p = Math.max(0, Math.min(100, Math.round(percent)));
  const others = Object.keys(shares).filter((v) => v !== version);
  if (others.length === 0) return { ...shares, [version]: 100 };
  const rest = apportion(others.map((v) => shares[v]), 100 - p);
  const out = {};
  for (const v of Object.keys(shares)) out[v] = v === version ? p : rest[others.indexOf(v)];
  return out;
}
