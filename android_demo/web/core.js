// The edge-rec loop for the browser: manifest checks, features from the raw feed, bucket padding and
// the post-ranking policy — the same rules as the Python runtime (edge_rec/runtime.py, policy.py) and
// the Kotlin core (android_demo/core). The golden file in the bundle pins all three.

export class EdgeRecError extends Error {}

/** Manifest essentials (the page trusts the bundle the app shipped; the JVM core and Python verify sha256). */
export function readManifest(m) {
  const major = String(m.schema_version || "").split(".")[0];
  if (major !== "1") throw new EdgeRecError(`bundle schema version ${m.schema_version} is not readable here (reads 1.x)`);
  const dims = m.modalities.dims;
  const modalities = m.modalities.kept.map((k) => [k, dims[k]]);
  const f = m.features.cand_dense;
  return {
    inputNames: m.signature.inputs.map((t) => t.name),
    modalities, pruned: new Set(m.modalities.pruned), histLen: m.model.hist_len,
    dur: [f.duration.mean, f.duration.std], fresh: [f.freshness.shift, f.freshness.scale],
    pop: [f.popularity.mean, f.popularity.std],
  };
}

/** Embedding: float list, {int8, scale} or {fp16_b64} -> Float32Array. */
export function decodeEmbedding(v, where) {
  let out;
  if (Array.isArray(v)) out = Float32Array.from(v);
  else if (v && v.int8) out = Float32Array.from(v.int8, (q) => q * (v.scale ?? 1));
  else if (v && v.fp16_b64) {
    const b = Uint8Array.from(atob(v.fp16_b64), (c) => c.charCodeAt(0));
    out = new Float32Array(b.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = halfToFloat(b[2 * i] | (b[2 * i + 1] << 8));
  } else throw new EdgeRecError(`${where}: an embedding needs a list, int8 + scale, or fp16_b64`);
  if (out.some((x) => !Number.isFinite(x))) throw new EdgeRecError(`${where}: embedding holds NaN or inf`);
  return out;
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Model inputs for one request: {name: {data: Float32Array, dims: number[]}}. */
export function features(spec, cands, now, history, historyTotal) {
  const n = cands.length, x = {};
  const seen = new Set();
  for (const c of cands) {
    if (seen.has(c.item_id)) throw new EdgeRecError(`duplicate item id ${c.item_id} in the feed`);
    seen.add(c.item_id);
    for (const m of Object.keys(c.embeddings || {}))
      if (!spec.modalities.some(([k]) => k === m) && !spec.pruned.has(m)) throw new EdgeRecError(`candidate ${c.item_id}: unknown modality ${m}`);
  }
  for (const [m, d] of spec.modalities) {
    const emb = new Float32Array(n * d), mask = new Float32Array(n);
    cands.forEach((c, i) => {
      const raw = c.embeddings?.[m];
      if (raw == null) return;
      const v = c._dec?.[m] ?? decodeEmbedding(raw, `candidate ${c.item_id} ${m}`);
      if (v.length !== d) throw new EdgeRecError(`candidate ${c.item_id}: modality ${m} has ${v.length} dims; the bundle expects ${d}`);
      emb.set(v, i * d); mask[i] = 1;
    });
    x[`cand_${m}`] = { data: emb, dims: [n, d] };
    x[`cand_mask_${m}`] = { data: mask, dims: [n] };
  }
  const dense = new Float32Array(n * 3);
  cands.forEach((c, i) => {
    dense[3 * i] = (Math.log1p(c.duration_s) - spec.dur[0]) / spec.dur[1];
    dense[3 * i + 1] = (Math.log1p(Math.max(now - c.upload_ts, 0) / 3600) - spec.fresh[0]) / spec.fresh[1];
    dense[3 * i + 2] = (Math.log1p(c.clicks ?? 0) - spec.pop[0]) / spec.pop[1];
  });
  x.cand_dense = { data: dense, dims: [n, 3] };
  const L = spec.histLen, dh = spec.modalities.reduce((a, [, d]) => a + d, 0) + 3;
  const past = history.filter((e) => e.ts < now), last = past.slice(-L), off = L - last.length;
  const hemb = new Float32Array(L * dh), hw = new Float32Array(L), hage = new Float32Array(L);
  last.forEach((e, j) => {
    const row = (off + j) * dh;
    let o = 0;
    for (const [m, d] of spec.modalities) {
      const raw = e.embeddings?.[m];
      if (raw != null) { const v = decodeEmbedding(raw, `history ${e.item_id} ${m}`); if (v.length === d) hemb.set(v, row + o); }
      o += d;
    }
    const wr = e.duration_ms > 0 ? e.watch_ms / e.duration_ms : 0;
    hemb[row + o] = Math.min(Math.max(wr, 0), 1.5); hemb[row + o + 1] = e.like ? 1 : 0; hemb[row + o + 2] = e.skip ? 1 : 0;
    hw[off + j] = 1; hage[off + j] = Math.log1p(Math.max(now - e.ts, 0) / 3600);
  });
  const hour = ((now % 86400) / 86400) * 2 * Math.PI;
  x.hist_emb = { data: hemb, dims: [L, dh] };
  x.hist_weight = { data: hw, dims: [L] };
  x.hist_age = { data: hage, dims: [L] };
  x.context = { data: Float32Array.from([Math.log1p(historyTotal ?? past.length), Math.sin(hour), Math.cos(hour)]), dims: [3] };
  return Object.fromEntries(spec.inputNames.map((k) => [k, x[k]]));
}

export const DEFAULT_POLICY = { enabled: true, mmrLambda: 0.8, maxPerCreator: 2, skipPenalty: 0.3, negativePenalty: 0.5,
  freshnessBoost: 0.1, freshnessTauH: 24, window: 20 };

/** Post-ranking policy (port of edge_rec/policy.py): returns {order, adjusted}. */
export function applyPolicy(p, score, fused, fusedDim, creators, agesH, signals, k = score.length) {
  const n = score.length;
  const byScore = (s) => [...s.keys()].sort((a, b) => (s[b] - s[a]) || (a - b));
  if (!p.enabled) return { order: byScore(score).slice(0, k), adjusted: Float64Array.from(score) };
  const adj = Float64Array.from(score, (s, i) => {
    const c = creators[i], sig = c != null ? signals.get(c) : undefined;
    const pen = sig ? p.skipPenalty * sig.skips + p.negativePenalty * sig.negative : 0;
    return s - pen + p.freshnessBoost * Math.exp(-agesH[i] / p.freshnessTauH);
  });
  let lo = Infinity, hi = -Infinity;
  for (const a of adj) { lo = Math.min(lo, a); hi = Math.max(hi, a); }
  const rel = Float64Array.from(adj, (a) => (hi > lo ? (a - lo) / (hi - lo) : 1));
  const ranked = byScore(adj), window = Math.min(k, p.window), short = ranked.slice(0, Math.min(n, 4 * window));
  const useMmr = fused != null && p.mmrLambda < 1;
  const base = Float64Array.from(short, (j) => (useMmr ? p.mmrLambda : 1) * rel[j]);
  const cur = Float64Array.from(base), penMax = new Float64Array(short.length);
  const unit = useMmr ? short.map((j) => {
    const v = Array.from(fused.subarray(j * fusedDim, (j + 1) * fusedDim), Number);
    const norm = Math.max(Math.sqrt(v.reduce((a, b) => a + b * b, 0)), 1e-12);
    return v.map((t) => t / norm);
  }) : null;
  const per = new Map(), chosen = [];
  while (chosen.length < window) {
    let j = -1;
    for (let i = 0; i < cur.length; i++) if (cur[i] !== -Infinity && (j < 0 || cur[i] > cur[j])) j = i;
    if (j < 0) break;
    cur[j] = base[j] = -Infinity;
    chosen.push(short[j]);
    const c = creators[short[j]];
    if (p.maxPerCreator != null && c != null) {
      per.set(c, (per.get(c) ?? 0) + 1);
      if (per.get(c) >= p.maxPerCreator) short.forEach((s, i) => { if (creators[s] === c) cur[i] = base[i] = -Infinity; });
    }
    if (useMmr) for (let i = 0; i < short.length; i++) {
      let dot = 0;
      for (let t = 0; t < fusedDim; t++) dot += unit[j][t] * unit[i][t];
      penMax[i] = Math.max(penMax[i], (1 - p.mmrLambda) * dot);
      cur[i] = base[i] - penMax[i];
    }
  }
  const taken = new Set(chosen);
  return { order: chosen.concat(ranked.filter((i) => !taken.has(i))).slice(0, k), adjusted: adj };
}

/** Creator signals from the last hour of history (skips, negative comments). */
export function creatorSignals(history, now) {
  const s = new Map();
  for (const e of history) {
    if (e.creator_id == null || e.ts < now - 3600 || e.ts > now) continue;
    const v = s.get(e.creator_id) ?? { skips: 0, negative: 0 };
    v.skips += e.skip ? 1 : 0; v.negative += e.sentiment != null && e.sentiment < 0 ? 1 : 0;
    s.set(e.creator_id, v);
  }
  return s;
}

/** Rows [lo, hi) of a {data, dims} tensor. */
export function sliceRows(t, lo, hi) {
  const r = t.dims.slice(1).reduce((a, b) => a * b, 1);
  return { data: t.data.subarray(lo * r, hi * r), dims: [hi - lo, ...t.dims.slice(1)] };
}

/** Pad to n rows by repeating the last row: int8 models with dynamic activation ranges then see no new min or max. */
export function padRows(t, n) {
  const rows = t.dims[0];
  if (rows >= n || rows === 0) return t;
  const r = t.dims.slice(1).reduce((a, b) => a * b, 1), out = new Float32Array(n * r);
  out.set(t.data.subarray(0, rows * r));
  for (let i = rows; i < n; i++) out.set(t.data.subarray((rows - 1) * r, rows * r), i * r);
  return { data: out, dims: [n, ...t.dims.slice(1)] };
}

export function concatRows(ts) {
  if (ts.length === 1) return ts[0];
  const data = new Float32Array(ts.reduce((a, t) => a + t.data.length, 0));
  let o = 0;
  for (const t of ts) { data.set(t.data, o); o += t.data.length; }
  return { data, dims: [ts.reduce((a, t) => a + t.dims[0], 0), ...ts[0].dims.slice(1)] };
}
