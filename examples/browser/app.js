// The page: an automerge-repo Repo whose network is a Murmur node's
// WebSocket (`/sync`). It finds the document named in the URL, shows it,
// and edits its `notes` text as you type. Automerge's wasm is loaded from
// base64 (automerge-repo's `slim` entry points), so bundling needs no
// plugin.
import { Repo, initializeBase64Wasm } from "@automerge/automerge-repo/slim";
import { automergeWasmBase64 } from "@automerge/automerge/automerge.wasm.base64";
import { updateText } from "@automerge/automerge/slim";
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";

const params = new URLSearchParams(location.search);
const status = (text) => (document.getElementById("status").textContent = text);

async function main() {
  await initializeBase64Wasm(automergeWasmBase64);
  const sync = params.get("sync");
  const repo = new Repo({ network: [new WebSocketClientAdapter(sync)] });
  status(`finding ${params.get("doc")} through ${sync.replace(/token=[^&]*/, "token=…")}`);
  const handle = await repo.find(`automerge:${params.get("doc")}`);
  const notes = document.getElementById("notes");
  const show = () => {
    const doc = handle.doc();
    document.getElementById("doc").textContent = JSON.stringify(doc, null, 2);
    const text = typeof doc.notes === "string" ? doc.notes : "";
    if (notes.value !== text) notes.value = text;
  };
  handle.on("change", show);
  show();
  notes.disabled = false;
  notes.addEventListener("input", () => {
    handle.change((d) => {
      if (typeof d.notes !== "string") d.notes = "";
      updateText(d, ["notes"], notes.value);
    });
  });
  status(`synced with ${sync.split("?")[0]}`);
}

main().catch((error) => status(`error: ${error}`));
