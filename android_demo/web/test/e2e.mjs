// Browser test of the web prototype: a real headless Chromium (phone viewport, touch) via playwright-core,
// the real onnxruntime-web (wasm), a bundle written by `edge-rec export`.
//
//   node test/e2e.mjs --bundle BUNDLE_DIR [--expected python_rankings.json] [--out DIR]
//
// Checks: the feed renders; the page's scores equal the bundle's golden outputs (1e-5); the initial
// ranking equals the Python runtime's (when --expected is given); swiping up skips, penalises the creator
// and reorders what comes next. Saves a screenshot. Last line: "N passed, N failed"; exit 1 on a failure.
import { createServer } from "node:http";
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const args = Object.fromEntries(process.argv.slice(2).reduce((a, v, i, all) => (v.startsWith("--") ? [...a, [v.slice(2), all[i + 1]]] : a), []));
const WEB = resolve(fileURLToPath(new URL("..", import.meta.url)));
const BUNDLE = resolve(args.bundle ?? "");
const OUT = resolve(args.out ?? join(WEB, ".test-out"));
if (!existsSync(join(BUNDLE, "manifest.json"))) { console.error(`--bundle ${BUNDLE} has no manifest.json`); process.exit(2); }
mkdirSync(OUT, { recursive: true });

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".json": "application/json", ".wasm": "application/wasm", ".webmanifest": "application/manifest+json" };
const ROOTS = [["/ort/", join(WEB, "node_modules", "onnxruntime-web", "dist")], ["/litert/", join(WEB, "node_modules", "@litertjs")],
               ["/bundle/", BUNDLE], ["/", WEB]];
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  for (const [prefix, dir] of ROOTS) {
    if (!path.startsWith(prefix)) continue;
    const file = normalize(join(dir, path.slice(prefix.length) || "index.html"));
    if (!file.startsWith(dir) || !existsSync(file) || !statSync(file).isFile()) break;
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
    return;
  }
  res.writeHead(404).end("not found");
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${server.address().port}`;

const results = [];
async function check(name, fn) {
  try { await fn(); results.push([name, true]); console.log(`  ✔ ${name}`); }
  catch (e) { results.push([name, false]); console.log(`  ✘ ${name}\n      ${e.message}`); }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu"] });
try {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true,
    hasTouch: true, userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/150 Mobile Safari/537.36" });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${base}/index.html?nosw`);
  await check("the feed renders with the bundle's model", async () => {
    await page.evaluate(() => window.edgeRec.ready);
    assert(errors.length === 0, `page errors: ${errors.join("; ")}`);
    const title = await page.textContent("#now .title");
    assert(/item \d+/.test(title), `top card says ${JSON.stringify(title)}`);
    const n = await page.locator("#next li").count();
    assert(n > 0, "no 'up next' items");
  });
  const golden = JSON.parse(readFileSync(join(BUNDLE, "golden.json"), "utf8")).cases[0];
  await check("scores equal the golden outputs of the same file (1e-5)", async () => {
    const model = await page.evaluate(() => window.edgeRec.model());
    const got = await page.evaluate(() => window.edgeRec.goldenScores());
    const want = golden.artifacts[model]?.score?.data;
    assert(want, `golden.json has no outputs for ${model}`);
    const byId = new Map(golden.item_ids.map((id, i) => [id, want[i]]));
    let worst = 0;
    got.item_ids.forEach((id, i) => { worst = Math.max(worst, Math.abs(got.score[i] - byId.get(id))); });
    assert(got.item_ids.length === golden.item_ids.length && worst <= 1e-5, `max abs difference ${worst}`);
  });
  if (args.expected) {
    const all = JSON.parse(readFileSync(args.expected, "utf8"));
    await check("the ranking equals the Python runtime's (policy on)", async () => {
      // the page runs fp32 (int8 with ?precision=int8, where it passed its gates): compare with the same file
      const model = await page.evaluate(() => window.edgeRec.model());
      const expected = model.includes(".int8.") ? all.policy_on : all.fp32.policy_on;
      const r = await page.evaluate(() => window.edgeRec.ranking());
      assert(JSON.stringify(r.map((x) => x.item_id)) === JSON.stringify(expected.map((x) => x.item_id)), "orders differ");
      const worst = Math.max(...r.map((x, i) => Math.abs(x.final_score - expected[i].final_score)));
      assert(worst <= 1e-5, `final scores differ by ${worst}`);
    });
  }
  await check("LiteRT.js gives every .tflite bucket's golden outputs (1e-5)", async () => {
    const got = await page.evaluate((inputs) => window.edgeRec.litertGolden(inputs), golden.inputs);
    const files = Object.keys(got);
    assert(files.length >= 2, `only ${files.length} tflite files ran`);
    for (const f of files) {
      const want = golden.artifacts[f].score.data;
      const worst = Math.max(...want.map((w, i) => Math.abs(w - got[f][i])));
      assert(worst <= 1e-5, `${f}: max abs difference ${worst}`);
    }
  });
  await check("the feed also runs on LiteRT.js (.tflite buckets)", async () => {
    const p2 = await ctx.newPage();
    const errs = [];
    p2.on("pageerror", (e) => errs.push(e.message));
    await p2.goto(`${base}/index.html?nosw&engine=litert`);
    await p2.evaluate(() => window.edgeRec.ready);
    const label = await p2.evaluate(() => window.edgeRec.engine());
    const r = await p2.evaluate(() => window.edgeRec.ranking());
    assert(label.startsWith("LiteRT.js") && r.length === golden.item_ids.length && errs.length === 0, `${label}; ${errs.join("; ")}`);
    await p2.close();
  });
  await check("swiping up skips the item, penalises its creator and reorders what comes next", async () => {
    let reordered = false, penalised = 0;
    for (let s = 0; s < 3; s++) {
      const before = await page.evaluate(() => window.edgeRec.ranking());
      const box = await page.locator("#now").boundingBox();
      const x = box.x + box.width / 2, y = box.y + box.height * 0.8;
      await page.mouse.move(x, y); await page.mouse.down(); await page.mouse.move(x, y - 150, { steps: 5 }); await page.mouse.up();
      await page.waitForFunction((id) => window.edgeRec.ranking()[0]?.item_id !== id, before[0].item_id);
      const after = await page.evaluate(() => window.edgeRec.ranking());
      assert(!after.some((r) => r.item_id === before[0].item_id), "the skipped item is still in the feed");
      const rest = before.slice(1).map((r) => r.item_id);
      if (JSON.stringify(after.map((r) => r.item_id)) !== JSON.stringify(rest)) reordered = true;
      const old = new Map(before.map((r) => [r.item_id, r.final_score - r.score]));
      for (const r of after) if (r.creator_id === before[0].creator_id && old.get(r.item_id) - (r.final_score - r.score) >= 0.29) penalised++;
      const sameCreator = after.filter((r) => r.creator_id === before[0].creator_id).length;
      assert(penalised > 0 || sameCreator === 0, "the skipped creator's other items were not penalised");
    }
    assert(reordered, "three skips never changed the order of the items that follow");
    assert(await page.evaluate(() => JSON.parse(localStorage.getItem("edge-rec:history")).length) > 0, "no history stored on the device");
  });
  await page.screenshot({ path: join(OUT, "web_prototype.png") });
  console.log(`  screenshot: ${join(OUT, "web_prototype.png")}`);
} finally {
  await browser.close();
  server.close();
}
const passed = results.filter(([, ok]) => ok).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(results.length === passed ? 0 : 1);
