// Shared by repo_sync.mjs and browser_sync.mjs (Node only): command-line
// handling, automerge-repo clients with traced websockets, bounded waits, and
// a node's HTTP side (or, with --ws-only, the same played by Repos connected
// to any automerge-repo sync server, e.g. the reference one).
//
// Environment: MURMUR_TOKEN (sent as ?token= on the websocket URLs and as
// `Authorization: Bearer` over HTTP); MURMUR_WAIT_MS (each wait, default
// 20000); MURMUR_WS_TRACE=1 prints every websocket message as it goes (the
// trace is always printed on failure).
import { Repo, ImmutableString } from "@automerge/automerge-repo";
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TracedWebSocketClientAdapter } from "./wire_trace.js";

export { Repo, ImmutableString };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const plain = (doc) => JSON.parse(JSON.stringify(doc ?? null));

export class Harness {
  // name: the script's name; argv: its arguments (A B DOC_ID, or --ws-only A_WS B_WS).
  constructor(name, argv) {
    const args = [...argv];
    this.name = name;
    this.wsOnly = args[0] === "--ws-only";
    if (this.wsOnly) args.shift();
    if (args.length !== (this.wsOnly ? 2 : 3)) {
      console.error(`usage: node ${name}.mjs A_HTTP B_HTTP DOC_ID | --ws-only A_WS B_WS`);
      process.exit(2);
    }
    [this.aBase, this.bBase, this.docId] = args;
    this.token = process.env.MURMUR_TOKEN || "";
    this.waitMs = Number(process.env.MURMUR_WAIT_MS || 20000);
    this.liveTrace = process.env.MURMUR_WS_TRACE ? (line) => console.error(line) : undefined;
    this.start = Date.now();
    this.timings = {};
    this.adapters = [];
    this.repos = [];
    this.tempDirs = [];
    this.cleanups = [];
    this.extraDiagnostics = [];
    this.nodeA = this.wsOnly ? this.wsNode(this.aBase, "observerA") : this.httpNode(this.aBase);
    this.nodeB = this.wsOnly ? this.wsNode(this.bBase, "observerB") : this.httpNode(this.bBase);
  }

  mark(name) {
    this.timings[name] = Date.now() - this.start;
  }

  tempDir(label) {
    const dir = mkdtempSync(join(tmpdir(), `murmur-${label}-`));
    this.tempDirs.push(dir);
    return dir;
  }

  // The websocket URL of a node given by its HTTP address (or, with
  // --ws-only, given as is).
  syncUrl(base) {
    const url = this.wsOnly ? base : base.replace(/^http/, "ws").replace(/\/$/, "") + "/sync";
    return this.token ? `${url}?token=${encodeURIComponent(this.token)}` : url;
  }

  // A Repo connected to one node's websocket; with storage, NodeFS in a
  // fresh temp dir (so it has a storageId and is not ephemeral).
  client(name, base, { storage = false } = {}) {
    const adapter = new TracedWebSocketClientAdapter(this.syncUrl(base), { name, log: this.liveTrace });
    this.adapters.push(adapter);
    const repo = new Repo({
      network: [adapter],
      storage: storage ? new NodeFSStorageAdapter(this.tempDir(name)) : undefined,
    });
    this.repos.push(repo);
    return repo;
  }

  // Polls check() (returning {ok, seen} or {fatal: message}) until ok; fails
  // after waitMs saying what was awaited and what was last seen.
  async waitUntil(what, check) {
    const deadline = Date.now() + this.waitMs;
    let seen;
    for (;;) {
      try {
        const r = await check();
        if (r.ok) return r;
        if (r.fatal) throw Object.assign(new Error(`while waiting for ${what}: ${r.fatal}`), { fatal: true });
        seen = r.seen;
      } catch (e) {
        if (e.fatal) throw e;
        seen = `error: ${e.message}`;
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${this.waitMs} ms waiting for ${what}; last seen: ${JSON.stringify(seen)}`);
      }
      await sleep(100);
    }
  }

  async withTimeout(what, promise) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${this.waitMs} ms waiting for ${what}`)), this.waitMs);
    });
    try {
      return await Promise.race([promise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async findDoc(repo, url, who) {
    try {
      return await this.withTimeout(`${who}: repo.find(${url})`, repo.find(url));
    } catch (e) {
      throw new Error(`${who}: find(${url}) failed: ${e.message}`);
    }
  }

  // Waits until the handle's document has String(doc[key]) === value.
  async docHas(handle, who, key, value) {
    return this.waitUntil(`${who} to see ${key} == ${JSON.stringify(value)}`, () => {
      const doc = handle.doc();
      return { ok: doc && doc[key] !== undefined && String(doc[key]) === value, seen: plain(doc) };
    });
  }

  // The document that the Rust test creates on node A ({"title": "from
  // murmur"}, a `put` string); made here by a client of A with --ws-only.
  async seedDoc() {
    if (!this.wsOnly) return this.docId;
    const seeder = this.client("seeder", this.aBase);
    const h = seeder.create({ title: new ImmutableString("from murmur") });
    await seeder.flush();
    this.docId = h.documentId;
    return this.docId;
  }

  // A node's HTTP side: what it serves for a document (null when it does
  // not hold it) and a `put` change.
  httpNode(base) {
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    return {
      async content(id) {
        const r = await fetch(`${base}/docs/${id}`, { headers });
        if (r.status === 404) return null;
        if (!r.ok) throw new Error(`GET ${base}/docs/${id}: ${r.status} ${await r.text()}`);
        return (await r.json()).content;
      },
      async put(id, key, value) {
        const body = JSON.stringify({ ops: [{ op: "put", path: [key], value }], ack: "durable" });
        const r = await fetch(`${base}/docs/${id}/changes`, {
          method: "POST",
          headers: { ...headers, "content-type": "application/json" },
          body,
        });
        if (!r.ok) throw new Error(`POST ${base}/docs/${id}/changes: ${r.status} ${await r.text()}`);
      },
    };
  }

  // The same two operations played by clients of a sync server: one
  // ephemeral Repo per document, replaced while the server answers that it
  // does not have the document.
  wsNode(base, name) {
    const handles = {};
    let n = 0;
    const handle = async (id) => {
      if (handles[id]) return handles[id];
      const repo = this.client(`${name}-${++n}`, base);
      try {
        handles[id] = await this.withTimeout(`${name}: find`, repo.find(`automerge:${id}`));
        return handles[id];
      } catch {
        await repo.shutdown();
        return null;
      }
    };
    return {
      async content(id) {
        const h = await handle(id);
        return h ? plain(h.doc()) : null;
      },
      async put(id, key, value) {
        const h = await handle(id);
        if (!h) throw new Error(`${name}: document ${id} not found`);
        h.change((d) => {
          d[key] = new ImmutableString(value);
        });
      },
    };
  }

  // Runs main(); prints its summary as one JSON line, or on failure the
  // error, the timings and every websocket trace; then cleans up and exits.
  async run(main) {
    let code = 0;
    // The websocket adapter rethrows socket errors other than ECONNREFUSED
    // (e.g. an HTTP error status on the upgrade) from its event handler.
    process.on("uncaughtException", (e) => {
      console.error(`${this.name}: FAILED (uncaught): ${e.stack || e}`);
      console.error(`timings (ms since start): ${JSON.stringify(this.timings)}`);
      for (const a of this.adapters) console.error(a.formatTrace());
      process.exit(1);
    });
    try {
      const summary = await main();
      console.log(JSON.stringify({ ...summary, timingsMs: this.timings }));
    } catch (e) {
      code = 1;
      console.error(`${this.name}: FAILED: ${e.stack || e}`);
      console.error(`timings (ms since start): ${JSON.stringify(this.timings)}`);
      for (const a of this.adapters) console.error(a.formatTrace());
      for (const d of this.extraDiagnostics) {
        try {
          console.error(await d());
        } catch (err) {
          console.error(`(diagnostics failed: ${err.message})`);
        }
      }
    }
    for (const c of this.cleanups.reverse()) {
      await Promise.race([Promise.resolve().then(c).catch(() => {}), sleep(5000)]);
    }
    await Promise.race([Promise.allSettled(this.repos.map((r) => r.shutdown())), sleep(2000)]);
    for (const d of this.tempDirs) rmSync(d, { recursive: true, force: true });
    process.exit(code);
  }
}
