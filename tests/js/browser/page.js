// The browser side of browser_sync.mjs (bundled with esbuild, served with
// index.html): an automerge-repo Repo in the page, connected over the
// websocket given as ?ws=, finds ?doc=, waits for its title and sets
// browserText (a Text: assigning a string makes one in automerge 3).
// Status goes to window.murmurStatus; the wire trace to window.murmurWire().
// ?trace=1 also logs every websocket message to the console as it goes.
//
// automerge's wasm is loaded from base64 (the `slim` entry points), so the
// bundle needs no wasm plugin.
import { Repo, initializeBase64Wasm } from "@automerge/automerge-repo/slim";
import { automergeWasmBase64 } from "@automerge/automerge/automerge.wasm.base64";
import { TracedWebSocketClientAdapter } from "../lib/wire_trace.js";

const params = new URLSearchParams(location.search);
const wsUrl = params.get("ws");
const docId = params.get("doc");
const text = params.get("text") || "typed in the browser";
const waitMs = Number(params.get("wait") || 20000);

const status = { state: "starting", ws: wsUrl, doc: docId };
window.murmurStatus = status;
const show = (fields) => {
  Object.assign(status, fields);
  document.getElementById("status").textContent = JSON.stringify(status, null, 2);
};

let adapter;
window.murmurWire = () => (adapter ? adapter.formatTrace() : "(no adapter)");

function timeout(what) {
  return new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`timed out after ${waitMs} ms waiting for ${what}`)), waitMs),
  );
}

async function main() {
  await initializeBase64Wasm(automergeWasmBase64);
  show({ state: "wasm-ready" });
  adapter = new TracedWebSocketClientAdapter(wsUrl, {
    name: "browser",
    log: params.get("trace") === "1" ? (line) => console.log(line) : undefined,
  });
  const repo = new Repo({ network: [adapter] });
  window.murmurRepo = repo;
  const handle = await Promise.race([repo.find(`automerge:${docId}`), timeout("repo.find")]);
  show({ state: "found", doc: docId });
  await Promise.race([
    new Promise((resolve) => {
      const check = () => {
        if (String(handle.doc()?.title) === "from murmur") resolve();
        else setTimeout(check, 50);
      };
      check();
    }),
    timeout('title == "from murmur"'),
  ]);
  handle.change((d) => {
    d.browserText = text;
  });
  show({
    state: "changed",
    peer: adapter.remotePeerId,
    content: JSON.parse(JSON.stringify(handle.doc())),
    heads: handle.heads(),
  });
  handle.on("change", () => show({ content: JSON.parse(JSON.stringify(handle.doc())) }));
}

main().catch((e) => show({ state: "error", error: String(e && e.stack ? e.stack : e) }));
