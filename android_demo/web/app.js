// The feed page: bundle -> features -> onnxruntime-web (wasm) -> policy -> reranked feed -> feedback,
// with the viewer's history kept in localStorage (it never leaves the device).
import { DEFAULT_POLICY, applyPolicy, concatRows, creatorSignals, features, padRows, readManifest, sliceRows } from "./core.js";

const params = new URLSearchParams(location.search);
const BUNDLE = params.get("bundle") ?? "bundle";
const HISTORY_KEY = "edge-rec:history";
const SWIPE_S = 20;                      // simulated seconds per swipe (the sample feed has its own clock)
const S = {};

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// fp32 unless the page is opened with ?precision=int8: onnxruntime-web's dynamic int8 kernels do not
// always reproduce native onnxruntime's numbers (0.2 off in score on a tiny student, 2026-12-01), so
// the int8 file's golden outputs cannot be promised here; for a page the fp32 file is small anyway.
function pickModel(m) {
  const order = params.get("precision") === "int8" ? ["int8", "fp32"] : ["fp32", "int8"];
  for (const prec of order) {
    const a = m.artifacts.find((x) => x.format === "onnx" && x.precision === prec);
    if (a && m.parity?.onnx?.[prec]?.passed) return a;
  }
  throw new Error("the bundle has no ONNX model that passed its gates");
}

/** onnxruntime-web (wasm) on the bundle's ONNX model: dynamic N. */
async function ortEngine(manifest) {
  const art = pickModel(manifest);
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  const session = await ort.InferenceSession.create(`${BUNDLE}/${art.path}`, { executionProviders: ["wasm"] });
  return {
    label: `onnxruntime-web ${ort.env.versions?.web ?? ""} · ${art.path.split("/").pop()}`, files: [art.path],
    async run(x) {
      const feeds = {};
      for (const [k, t] of Object.entries(x)) feeds[k] = new ort.Tensor("float32", t.data, t.dims);
      const out = await session.run(feeds);
      return Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { data: t.data, dims: t.dims }]));
    },
  };
}

/** LiteRT.js (wasm, XNNPack) on the bundle's .tflite buckets: padded to the smallest bucket that fits,
 *  by repeating the last real candidate, and chunked beyond the biggest (as every other runtime does). */
async function litertEngine(manifest, precision = params.get("precision") ?? "int8") {
  const { loadLiteRt, loadAndCompile, Tensor } = await import("@litertjs/core");
  S.litertLoaded ??= loadLiteRt(new URL("litert/core/wasm/", location.href).href);   // once per page
  await S.litertLoaded;
  const arts = manifest.artifacts.filter((a) => a.format === "tflite" && a.precision === precision).sort((a, b) => a.bucket - b.bucket);
  if (!arts.length) throw new Error(`the bundle has no tflite/${precision} models`);
  const models = new Map();
  for (const a of arts) models.set(a.bucket, await loadAndCompile(`${BUNDLE}/${a.path}`, { accelerator: "wasm" }));
  const runBucket = async (x, n, bucket) => {
    const inputs = {};
    for (const [k, t] of Object.entries(x)) {
      const padded = k.startsWith("cand_") ? padRows(t, bucket) : t;
      inputs[k] = new Tensor(padded.data, padded.dims);
    }
    const out = await models.get(bucket).run(inputs);
    const res = {};
    for (const [k, t] of Object.entries(out)) {
      const data = t.toTypedArray();
      const width = data.length / bucket;
      res[k] = { data: Float32Array.from(data.subarray(0, n * width)), dims: width === 1 ? [n] : [n, width] };
      t.delete();
    }
    Object.values(inputs).forEach((t) => t.delete());
    return res;
  };
  const buckets = arts.map((a) => a.bucket), big = buckets[buckets.length - 1];
  return {
    label: `LiteRT.js · ${arts.map((a) => a.path.split("/").pop()).join(", ")}`, files: arts.map((a) => a.path), runBucket,
    async run(x) {
      const n = x.cand_dense.dims[0], parts = [];
      for (let lo = 0; lo < Math.max(n, 1); lo += big) {
        const hi = Math.min(n, lo + big);
        const chunk = Object.fromEntries(Object.entries(x).map(([k, t]) => [k, k.startsWith("cand_") ? sliceRows(t, lo, hi) : t]));
        parts.push(await runBucket(chunk, hi - lo, buckets.find((b) => b >= hi - lo) ?? big));
      }
      return Object.fromEntries(Object.keys(parts[0]).map((k) => [k, concatRows(parts.map((p) => p[k]))]));
    },
  };
}

async function score(cands, now) {
  const x = features(S.spec, cands, now, S.history, S.total + S.added);
  const out = await S.engine.run(x);
  return { score: Float64Array.from(out.score.data), p_click: out.p_click.data, p_finish: out.p_finish.data,
           p_like: out.p_like.data, fused: out.fused?.data, fusedDim: out.fused?.dims[1] };
}

async function rerank() {
  const cands = S.remaining, now = S.now;
  const o = await score(cands, now);
  const ages = cands.map((c) => Math.max(now - c.upload_ts, 0) / 3600);
  const { order, adjusted } = applyPolicy(S.policy, o.score, o.fused, o.fusedDim, cands.map((c) => c.creator_id), ages,
                                          creatorSignals(S.history, now));
  S.ranking = order.map((i, r) => ({ rank: r + 1, item_id: cands[i].item_id, creator_id: cands[i].creator_id,
    score: o.score[i], final_score: adjusted[i], p_click: o.p_click[i], p_finish: o.p_finish[i], p_like: o.p_like[i],
    duration_s: cands[i].duration_s, hue: hue(cands[i]) }));
}

function hue(c) {               // a stand-in thumbnail: the visual embedding's first components as a colour
  const v = c._dec?.visual ?? [];
  return Math.round(((Math.atan2(v[1] ?? 0, v[0] ?? 1) / Math.PI + 1) * 180 + c.item_id * 7) % 360);
}

function render() {
  const [top, ...rest] = S.ranking;
  const now = document.getElementById("now");
  now.style.background = top ? `linear-gradient(160deg, hsl(${top.hue} 60% 45%), hsl(${(top.hue + 60) % 360} 50% 18%))` : "#222";
  now.innerHTML = top ? `<div class="title">item ${top.item_id}</div>
    <div>creator ${top.creator_id} · ${top.duration_s.toFixed(0)} s</div>
    <div class="score">score ${top.score.toFixed(3)} · click ${(100 * top.p_click).toFixed(0)} % · finish ${(100 * top.p_finish).toFixed(0)} %</div>`
    : `<div class="title">that's the feed</div>`;
  document.getElementById("next").innerHTML = rest.slice(0, 12).map((r) => `
    <li data-item="${r.item_id}"><div class="thumb" style="background:hsl(${r.hue} 55% 40%)"></div>
      <div class="meta"><b>#${r.rank}</b> item ${r.item_id} · creator ${r.creator_id}
        <div class="score">score ${r.score.toFixed(3)} → ${r.final_score.toFixed(3)}</div>
        <div class="bar"><i style="width:${(100 * r.p_click).toFixed(1)}%"></i></div></div></li>`).join("");
  document.getElementById("why").textContent = S.lastAction ?? "";
}

async function feedback(kind) {
  const top = S.ranking[0];
  if (!top) return;
  const c = S.remaining.find((x) => x.item_id === top.item_id);
  const dur = c.duration_s * 1000;
  S.history.push({ item_id: c.item_id, creator_id: c.creator_id, ts: S.now, duration_ms: dur,
                   watch_ms: kind === "like" ? dur : Math.min(1000, dur), like: kind === "like", skip: kind === "skip",
                   finish: kind === "like", embeddings: c.embeddings });
  S.added += 1;
  localStorage.setItem(HISTORY_KEY, JSON.stringify(S.history));
  S.remaining = S.remaining.filter((x) => x.item_id !== c.item_id);
  S.now += SWIPE_S;
  S.lastAction = `after you ${kind === "like" ? "liked" : "skipped"} item ${c.item_id}`;
  await rerank();
  render();
}

async function boot() {
  const [manifest, feed] = await Promise.all([getJson(`${BUNDLE}/manifest.json`), getJson(`${BUNDLE}/sample_feed.json`)]);
  S.spec = readManifest(manifest);
  S.manifest = manifest;
  S.engine = params.get("engine") === "litert" ? await litertEngine(manifest) : await ortEngine(manifest);
  S.feed = feed;
  S.policy = { ...DEFAULT_POLICY };
  S.now = feed.now;
  S.remaining = feed.candidates.slice();
  const stored = localStorage.getItem(HISTORY_KEY);
  S.history = stored ? JSON.parse(stored) : feed.history.slice();
  S.total = feed.history_total ?? feed.history.length;
  S.added = stored ? S.history.length - feed.history.length : 0;
  document.getElementById("engine").textContent = S.engine.label;
  await rerank();
  render();
  const card = document.getElementById("now");
  let y0 = null;
  card.addEventListener("pointerdown", (e) => { y0 = e.clientY; });
  card.addEventListener("pointerup", (e) => { if (y0 != null && y0 - e.clientY > 60) feedback("skip"); y0 = null; });
  card.addEventListener("dblclick", () => feedback("like"));
  document.getElementById("skip").onclick = () => feedback("skip");
  document.getElementById("like").onclick = () => feedback("like");
  document.getElementById("forget").onclick = () => { localStorage.removeItem(HISTORY_KEY); location.reload(); };
  if ("serviceWorker" in navigator && !params.has("nosw")) navigator.serviceWorker.register("sw.js").catch(() => {});
}

// what the browser test drives and reads
window.edgeRec = {
  ready: boot().then(() => true, (e) => { document.getElementById("status").textContent = `error: ${e.message}`; throw e; }),
  ranking: () => S.ranking.map((r) => ({ ...r })),
  model: () => S.engine.files[0],
  engine: () => S.engine.label,
  /** every .tflite file of the bundle run by LiteRT.js on one golden case's inputs (padded to its bucket) */
  litertGolden: async (inputs) => {
    const out = {};
    for (const prec of ["fp32", "int8"]) {
      const eng = await litertEngine(S.manifest, prec);
      const x = Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, { data: Float32Array.from(t.data), dims: t.shape }]));
      const n = x.cand_dense.dims[0];
      for (const path of eng.files) {
        const bucket = S.manifest.artifacts.find((a) => a.path === path).bucket;
        if (bucket < n) continue;
        out[path] = Array.from((await eng.runBucket(x, n, bucket)).score.data);
      }
    }
    return out;
  },
  /** scores of the sample feed's candidates, in feed order, at the feed's own time (the golden request) */
  goldenScores: async () => { const o = await score(S.feed.candidates, S.feed.now); return { item_ids: S.feed.candidates.map((c) => c.item_id), score: Array.from(o.score) }; },
  skip: () => feedback("skip"),
  like: () => feedback("like"),
};
