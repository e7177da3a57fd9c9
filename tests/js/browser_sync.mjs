// An automerge-repo client in a real browser (Debian's chromium, driven by
// playwright-core) syncing through a Murmur node's WebSocket endpoint: the
// page (browser/page.js, bundled with esbuild into a temp dir and served from
// 127.0.0.1) connects to node A's `/sync`, finds DOC_ID, waits for its title
// and sets browserText = "typed in the browser" (a Text); node B must then
// serve it over HTTP (browser -> A over the websocket, A -> B over QUIC).
//
// Usage: node browser_sync.mjs A_HTTP B_HTTP DOC_ID
//   A_HTTP, B_HTTP: like http://127.0.0.1:7401, two nodes that replicate with
//   each other; DOC_ID: a document on node A with {"title": "from murmur"}.
// Self-check against any automerge-repo sync server (seeds the document and
// reads "node B" with a Node Repo):
//   node browser_sync.mjs --ws-only ws://127.0.0.1:3030/sync ws://127.0.0.1:3030/sync
// Environment: MURMUR_TOKEN, MURMUR_WAIT_MS, MURMUR_WS_TRACE (lib/harness.mjs);
// CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line of what it saw; exits non-zero on any failure, after
// printing the page's status, console and websocket trace.
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { copyFileSync, readFileSync } from "node:fs";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Harness, sleep } from "./lib/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const text = "typed in the browser";
const t = new Harness("browser_sync", process.argv.slice(2));

// Bundles the page into a temp dir: page.js (one ESM file) and index.html.
async function bundle() {
  const out = t.tempDir("browser-page");
  await esbuild.build({
    entryPoints: [join(here, "browser", "page.js")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    outfile: join(out, "page.js"),
    logLevel: "error",
  });
  copyFileSync(join(here, "browser", "index.html"), join(out, "index.html"));
  return out;
}

// Serves the bundle on 127.0.0.1 (ephemeral port).
async function serve(dir) {
  const types = { ".html": "text/html", ".js": "text/javascript" };
  const server = createServer((req, res) => {
    const name = new URL(req.url, "http://x").pathname.slice(1) || "index.html";
    if (!["index.html", "page.js"].includes(name)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": types[extname(name)], "cache-control": "no-store" });
    res.end(readFileSync(join(dir, name)));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return `http://127.0.0.1:${server.address().port}`;
}

await t.run(async () => {
  const docId = await t.seedDoc();
  const dir = await bundle();
  t.mark("bundled");
  const origin = await serve(dir);

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  t.cleanups.push(() => browser.close());
  t.mark("browser_launched");
  const page = await browser.newPage();
  const consoleLines = [];
  page.on("console", (m) => {
    const line = `[page console.${m.type()}] ${m.text()}`;
    consoleLines.push(line);
    if (t.liveTrace) t.liveTrace(line);
  });
  page.on("pageerror", (e) => consoleLines.push(`[page error] ${e.stack || e}`));
  t.extraDiagnostics.push(async () => {
    const status = await page.evaluate(() => JSON.stringify(window.murmurStatus)).catch((e) => `(${e.message})`);
    const wire = await page.evaluate(() => (window.murmurWire ? window.murmurWire() : "(no trace)")).catch((e) => `(${e.message})`);
    return [`page status: ${status}`, ...consoleLines, wire].join("\n");
  });

  const query = new URLSearchParams({
    ws: t.syncUrl(t.aBase),
    doc: docId,
    text,
    wait: String(t.waitMs),
    trace: t.liveTrace ? "1" : "0",
  });
  await page.goto(`${origin}/index.html?${query}`);

  const status = await t.waitUntil("the page to find the document and change it", async () => {
    const s = await page.evaluate(() => window.murmurStatus);
    if (s?.state === "error") return { fatal: `the page failed: ${s.error}` };
    return { ok: s?.state === "changed", seen: s };
  });
  t.mark("page_changed");

  const onB = await t.waitUntil(`node B to serve browserText == "${text}"`, async () => {
    const c = await t.nodeB.content(docId);
    return { ok: c?.browserText === text, seen: c };
  });
  t.mark("nodeB_browserText");

  return {
    doc: docId,
    page: origin,
    browser: browser.version(),
    pageSawDoc: status.seen.content,
    pagePeer: status.seen.peer,
    nodeBContent: onB.seen,
  };
});
