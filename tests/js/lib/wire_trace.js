// A WebSocketClientAdapter that records every automerge-repo message it sends
// and receives, CBOR-decoded, plus socket open/close/error events, so that a
// failing test can show exactly what went over the wire. Shared by the Node
// scripts and the browser page (bundled with esbuild).
//
// The sync payload (`data` of sync/request messages) is summarized with
// Automerge.decodeSyncMessage: first byte (0x42 sync message, 0x43 one with
// capabilities), heads, need, have, and the changes it carries.
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket";
import { cbor } from "@automerge/automerge-repo/slim";
import { decodeSyncMessage, decodeChange } from "@automerge/automerge/slim";

// Trace times are milliseconds since this module loaded (one clock for all
// adapters of a process).
const T0 = Date.now();

const hex = (bytes, max = 16) =>
  Array.from(bytes.subarray(0, max), (b) => b.toString(16).padStart(2, "0")).join("") +
  (bytes.length > max ? "…" : "");

// Automerge storage chunks: magic 856f4a83, 4-byte checksum, type byte
// (0 document, 1 change, 2 compressed change), LEB128 length, body.
function chunkTypes(bytes) {
  const names = ["document", "change", "compressed-change"];
  const types = [];
  let i = 0;
  while (i < bytes.length) {
    if (bytes[i] !== 0x85 || bytes[i + 1] !== 0x6f || bytes[i + 2] !== 0x4a || bytes[i + 3] !== 0x83) {
      types.push(`no magic at ${i}: ${hex(bytes.subarray(i), 12)}`);
      break;
    }
    const type = bytes[i + 8];
    let len = 0;
    let shift = 0;
    let j = i + 9;
    for (; j < bytes.length; j++) {
      len += (bytes[j] & 0x7f) * 2 ** shift;
      shift += 7;
      if (!(bytes[j] & 0x80)) break;
    }
    types.push(`${names[type] ?? "type" + type}(${len})`);
    i = j + 1 + len;
  }
  return types;
}

function describeSync(bytes) {
  const out = { bytes: bytes.length, first: "0x" + hex(bytes, 1) };
  try {
    const m = decodeSyncMessage(bytes);
    out.heads = m.heads.map((h) => h.slice(0, 12));
    out.need = m.need.map((h) => h.slice(0, 12));
    out.have = m.have.map((h) => ({
      lastSync: h.lastSync.map((x) => x.slice(0, 12)),
      bloomBytes: h.bloom.length,
    }));
    out.changes = m.changes.map((c) => {
      try {
        const d = decodeChange(c);
        return { hash: d.hash.slice(0, 12), seq: d.seq, ops: d.ops.length, deps: d.deps.length };
      } catch (e) {
        // Not one change chunk: say which chunks it holds (a whole
        // document, several changes, ...).
        return { bytes: c.length, chunks: chunkTypes(c), note: String(e.message ?? e) };
      }
    });
  } catch (e) {
    out.undecodable = String(e && e.message ? e.message : e);
    out.hex = hex(bytes, 48);
  }
  return out;
}

// Turn one decoded protocol message into something JSON.stringify shows well.
export function summarize(message) {
  if (message === null || typeof message !== "object") return message;
  const out = {};
  for (const [key, value] of Object.entries(message)) {
    if (value instanceof Uint8Array) {
      if (key === "data" && (message.type === "sync" || message.type === "request")) {
        out[key] = describeSync(value);
      } else if (key === "data" && message.type === "ephemeral") {
        try {
          out[key] = { bytes: value.length, cbor: summarize(cbor.decode(value)) };
        } catch {
          out[key] = { bytes: value.length, hex: hex(value, 48) };
        }
      } else {
        out[key] = { bytes: value.length, hex: hex(value, 48) };
      }
    } else if (Array.isArray(value)) {
      out[key] = value.map((v) => (v instanceof Uint8Array ? { bytes: v.length, hex: hex(v) } : v));
    } else if (value && typeof value === "object") {
      out[key] = summarize(value);
    } else {
      out[key] = value;
    }
  }
  return out;
}

export class TracedWebSocketClientAdapter extends WebSocketClientAdapter {
  // name: label for the log; log(line): called for each event when set.
  constructor(url, { name = "client", log, retryInterval } = {}) {
    super(url, retryInterval);
    this.traceName = name;
    this.traceLog = log;
    this.trace = [];
  }

  record(dir, what) {
    const entry = { t: Date.now() - T0, dir, ...what };
    this.trace.push(entry);
    if (this.trace.length > 2000) this.trace.splice(0, 1000);
    if (this.traceLog) this.traceLog(`[wire ${this.traceName}] ${JSON.stringify(entry)}`);
  }

  connect(peerId, peerMetadata) {
    super.connect(peerId, peerMetadata);
    const socket = this.socket;
    this.record("event", { event: "connecting", url: String(this.url).replace(/([?&]token=)[^&]*/, "$1***") });
    socket.addEventListener("open", () => this.record("event", { event: "open" }));
    socket.addEventListener("close", (e) =>
      this.record("event", { event: "close", code: e.code, reason: String(e.reason ?? "") }),
    );
    socket.addEventListener("error", (e) =>
      this.record("event", { event: "error", error: String(e?.error?.message ?? e?.message ?? "") }),
    );
  }

  send(message) {
    try {
      this.record("->", { msg: summarize(message) });
    } catch (e) {
      this.record("->", { unsummarizable: String(e) });
    }
    return super.send(message);
  }

  receiveMessage(messageBytes) {
    if (typeof messageBytes === "string") {
      this.record("<-", { textFrame: messageBytes.slice(0, 500) });
      return super.receiveMessage(messageBytes);
    }
    const bytes = new Uint8Array(messageBytes);
    try {
      this.record("<-", { msg: summarize(cbor.decode(bytes)) });
    } catch (e) {
      this.record("<-", { undecodable: String(e), bytes: bytes.length, hex: hex(bytes, 64) });
    }
    return super.receiveMessage(messageBytes);
  }

  formatTrace() {
    return this.trace.map((e) => `[wire ${this.traceName}] ${JSON.stringify(e)}`).join("\n");
  }
}
