#!/usr/bin/env node
// Load generator for the typists benchmark: N lightweight clients speak
// automerge-repo's network protocol "1" (CBOR over a WebSocket) to ONE server
// and type into ONE document, each at --rate changes/s for --secs seconds.
// Every client holds an @automerge/automerge document and a sync state.
// Prints one JSON line of results on stdout; progress goes to stderr.
//
//   node typists.mjs --url ws://127.0.0.1:3030 --n 8 [--rate 10] [--secs 20]
//        [--drain 30] [--workers 1] [--shape counter|text] [--api low|high]
//        [--server-pid PID] [--trace FILE]
//
// --api low (default) drives each client's document through the wasm
// Automerge handle and SyncState of @automerge/automerge 3.5.0 itself;
// --api high through its public JS API (A.change, A.receiveSyncMessage),
// which converts the sync state to and from JS on every call and keeps a
// materialised JS document: about a third more generator CPU.
//
// Document shape (--shape):
//   counter (default): the creator makes a root map with one map per client,
//     `c<i>: {}`. Keystroke k of client i is one change that puts
//     `c<i>.n = k`. A receiver sees it as a `put` patch at ["c<i>", "n"];
//     since Automerge applies one actor's changes in order, seeing k means
//     keystrokes up to k have all arrived. O(new changes) per message.
//   text: as counter, and each keystroke also appends one character to a
//     shared `text` (real typing, but Automerge 3 pays more per applied
//     change on a long text, on the clients and on the server).
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads"
import { randomBytes, randomUUID } from "node:crypto"
import { readFileSync, createWriteStream } from "node:fs"
import { fileURLToPath } from "node:url"
import * as A from "@automerge/automerge"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { Encoder, decode } from "cbor-x"
import WebSocket from "ws"
import bs58check from "bs58check"

// The wasm module @automerge/automerge itself loaded (same file, so the same
// instance): its Automerge handles and SyncState objects, used directly by
// --api low, skip the JS layer's per-call sync state import/export and the
// materialised JS document.
const require = createRequire(import.meta.url)
const W = require(join(dirname(require.resolve("@automerge/automerge")), "../mjs/wasm_bindgen_output/nodejs/automerge_wasm.cjs"))

const now = () => performance.timeOrigin + performance.now()
const sleep = ms => new Promise(r => setTimeout(r, ms))
const log = (...a) => process.stderr.write(`[typists ${new Date().toISOString().slice(11, 23)}] ${a.join(" ")}\n`)

// automerge-repo encodes with exactly these options (helpers/cbor.js).
const encoder = new Encoder({ tagUint8Array: false, useRecords: false })
const encode = obj => encoder.encode(obj)

// ---------------------------------------------------------------- a group of clients

class Group {
  constructor(cfg) {
    this.cfg = cfg
    const { n, K } = cfg
    this.n = n
    this.K = K
    // Per keystroke (index client*K + k): how many receivers in this group
    // have it, the latest arrival among them, and (for own clients) when sent.
    this.cnt = new Uint16Array(n * K)
    this.maxArr = new Float64Array(n * K)
    this.sentAt = new Float64Array(n * K)
    this.lag = [] // actual - scheduled send time, ms
    this.clients = []
    this.stopping = false
    this.stats = { msgsIn: 0, msgsOut: 0, bytesIn: 0, bytesOut: 0, disconnects: 0, wsErrors: 0, docUnavailable: 0, errors: [], otherTypes: {} }
    this.trace = cfg.trace ? createWriteStream(cfg.trace + (cfg.groupIdx ? `.${cfg.groupIdx}` : "")) : null
    for (const i of cfg.clientIdxs) this.clients.push(this.#newClient(i))
    this.docId = cfg.docId
  }

  #newClient(i) {
    return {
      i,
      peerId: `typist-${this.cfg.tag}-${i}`,
      ws: null,
      serverId: null,
      joined: false,
      doc: null, // --api high: the Automerge document (null until it has one)
      h: this.cfg.api === "low" ? W.create({}) : null, // --api low: the wasm document
      own: null, // --api low: object id of this client's map c<i>
      textObj: null,
      sync: this.#initSync(),
      lastSeen: new Int32Array(this.n).fill(-1),
      seen: 0, // foreign keystrokes seen
      textLen: 0,
      sent: 0,
      onPeer: null,
      onSync: null,
    }
  }

  #initSync() {
    return this.cfg.api === "low" ? W.initSyncState() : A.initSyncState()
  }

  #heads(c) {
    if (this.cfg.api === "low") return c.h.getHeads()
    return c.doc ? A.getHeads(c.doc) : []
  }

  #traceMsg(c, dir, msg, bytes) {
    if (!this.trace) return
    const m = { ...msg }
    if (m.data instanceof Uint8Array) {
      const raw = m.data
      m.data = { bytes: raw.byteLength }
      if (m.type === "sync" || m.type === "request") {
        try {
          const d = A.decodeSyncMessage(raw)
          m.data.heads = d.heads
          m.data.need = d.need
          m.data.have = d.have.map(h => ({ lastSync: h.lastSync, bloomBytes: h.bloom.byteLength }))
          m.data.changes = d.changes.length
        } catch (e) {
          m.data.decodeError = String(e)
        }
      }
    }
    this.trace.write(JSON.stringify({ t: now(), client: c.i, dir, frameBytes: bytes, msg: m }) + "\n")
  }

  #send(c, msg) {
    if (!c.ws || c.ws.readyState !== WebSocket.OPEN) return
    const buf = encode(msg)
    this.stats.msgsOut++
    this.stats.bytesOut += buf.byteLength
    this.#traceMsg(c, "out", msg, buf.byteLength)
    c.ws.send(buf)
  }

  #sendSync(c) {
    if (!c.joined) return
    const hasDoc = this.#heads(c).length > 0
    let msg
    if (this.cfg.api === "low") {
      msg = c.h.generateSyncMessage(c.sync)
    } else {
      const [s, m] = A.generateSyncMessage(c.doc ?? A.init(), c.sync)
      c.sync = s
      msg = m
    }
    if (msg) {
      this.#send(c, {
        type: hasDoc ? "sync" : "request",
        senderId: c.peerId,
        targetId: c.serverId,
        documentId: this.docId,
        data: msg,
      })
    }
  }

  #connect(c) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.cfg.url, { perMessageDeflate: false })
      c.ws = ws
      c.joined = false
      let settled = false
      c.onPeer = () => {
        settled = true
        resolve()
      }
      ws.on("open", () => {
        this.#send(c, {
          type: "join",
          senderId: c.peerId,
          supportedProtocolVersions: ["1"],
          peerMetadata: { isEphemeral: true },
        })
      })
      ws.on("message", (data, isBinary) => this.#onMessage(c, data, isBinary))
      ws.on("error", err => {
        this.stats.wsErrors++
        if (this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: ws error: ${err.message}`)
        if (!settled) {
          settled = true
          reject(err)
        }
      })
      ws.on("close", (code, reason) => {
        c.joined = false
        if (this.stopping) return
        this.stats.disconnects++
        if (this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: closed ${code} ${reason}`)
        if (!settled) {
          settled = true
          reject(new Error(`closed before peer: ${code} ${reason}`))
          return
        }
        // Reconnect like automerge-repo's client adapter does (after a pause),
        // with a fresh sync state.
        setTimeout(() => {
          if (this.stopping) return
          c.sync = this.#initSync()
          this.#connect(c).then(() => this.#sendSync(c)).catch(() => {})
        }, 1000)
      })
    })
  }

  #onMessage(c, data, isBinary) {
    const t = now()
    this.stats.msgsIn++
    this.stats.bytesIn += data.byteLength
    let msg
    try {
      msg = decode(data)
    } catch (e) {
      if (this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: undecodable frame (${isBinary ? "binary" : "text"}, ${data.byteLength} bytes): ${e.message}`)
      return
    }
    this.#traceMsg(c, "in", msg, data.byteLength)
    if (!isBinary && this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: text frame`)
    switch (msg.type) {
      case "peer":
        c.serverId = msg.senderId
        c.joined = true
        if (msg.selectedProtocolVersion !== "1" && this.stats.errors.length < 20)
          this.stats.errors.push(`client ${c.i}: selectedProtocolVersion ${msg.selectedProtocolVersion}`)
        c.onPeer?.()
        break
      case "sync":
      case "request": {
        if (msg.documentId !== this.docId) {
          if (this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: ${msg.type} for other document ${msg.documentId}`)
          break
        }
        let patches = null
        if (this.cfg.api === "low") {
          c.h.receiveSyncMessage(c.sync, msg.data)
          patches = c.h.diffIncremental()
        } else {
          const [d, s] = A.receiveSyncMessage(c.doc ?? A.init(), c.sync, msg.data, {
            patchCallback: p => {
              patches = p
            },
          })
          c.doc = d
          c.sync = s
        }
        if (patches) this.#onPatches(c, patches, t)
        this.#sendSync(c)
        c.onSync?.()
        break
      }
      case "doc-unavailable":
        this.stats.docUnavailable++
        c.onUnavailable?.()
        break
      case "error":
        if (this.stats.errors.length < 20) this.stats.errors.push(`client ${c.i}: server error: ${msg.message}`)
        break
      default:
        this.stats.otherTypes[msg.type] = (this.stats.otherTypes[msg.type] || 0) + 1
    }
  }

  #onPatches(c, patches, t) {
    const K = this.K
    for (const p of patches) {
      const path = p.path
      if (p.action === "put" && path.length === 2 && path[1] === "n") {
        const from = Number(path[0].slice(1))
        const k = p.value
        if (from === c.i || !(k < K)) continue
        for (let j = c.lastSeen[from] + 1; j <= k; j++) {
          const idx = from * K + j
          this.cnt[idx]++
          if (t > this.maxArr[idx]) this.maxArr[idx] = t
        }
        if (k > c.lastSeen[from]) {
          c.seen += k - c.lastSeen[from]
          c.lastSeen[from] = k
        }
      } else if (p.action === "splice" && path[0] === "text") {
        c.textLen += p.value.length
      } else if (p.action === "del" && path[0] === "text") {
        c.textLen -= p.length || 1
      }
    }
  }

  // -- RPC methods (called by the coordinator)

  // Client 0 creates the document and syncs it up under a fresh id.
  async create() {
    const c = this.clients[0]
    if (this.cfg.api === "low") {
      for (let i = 0; i < this.n; i++) c.h.putObject("_root", "c" + i, {})
      if (this.cfg.shape === "text") c.h.putObject("_root", "text", "")
      c.h.commit()
      c.h.updateDiffCursor()
    } else {
      const init = {}
      for (let i = 0; i < this.n; i++) init["c" + i] = {}
      if (this.cfg.shape === "text") init.text = ""
      c.doc = A.from(init)
    }
    // automerge-repo's ids are bs58check of the 16 bytes of a v4 UUID (1.x
    // refuses other byte strings: isValidDocumentId checks the UUID bits).
    this.docId = bs58check.encode(Buffer.from(randomUUID().replaceAll("-", ""), "hex"))
    await this.#connect(c)
    const heads = this.#heads(c)
    const acked = new Promise((resolve, reject) => {
      c.onSync = () => {
        if (heads.every(h => c.sync.sharedHeads.includes(h))) resolve()
      }
      c.onUnavailable = () => reject(new Error("server answered doc-unavailable to the creator's sync"))
    })
    this.#sendSync(c)
    await Promise.race([acked, sleep(30000).then(() => Promise.reject(new Error("server did not acknowledge the new document within 30 s")))])
    c.onSync = null
    c.onUnavailable = null
    return { docId: this.docId, heads }
  }

  async connectAll(docId, heads, batch) {
    this.docId = docId
    const want = heads.slice().sort().join(",")
    const todo = this.clients.filter(c => this.#heads(c).length === 0)
    const one = async c => {
      await this.#connect(c)
      let tries = 0
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`client ${c.i} did not get the document within 60 s`)), 60000)
        c.onSync = () => {
          if (this.#heads(c).sort().join(",") === want) {
            clearTimeout(timer)
            resolve()
          }
        }
        c.onUnavailable = () => {
          if (++tries > 20) {
            clearTimeout(timer)
            reject(new Error(`client ${c.i}: doc-unavailable ${tries} times`))
            return
          }
          setTimeout(() => {
            c.sync = this.#initSync()
            this.#sendSync(c)
          }, 250)
        }
        this.#sendSync(c)
      })
      c.onSync = null
      c.onUnavailable = null
    }
    for (let s = 0; s < todo.length; s += batch) await Promise.all(todo.slice(s, s + batch).map(one))
    return true
  }

  start(t0, period) {
    const { n, K } = this
    const text = this.cfg.shape === "text"
    const low = this.cfg.api === "low"
    for (const c of this.clients) {
      if (low) {
        c.own = c.h.getWithType("_root", "c" + c.i)[1]
        if (text) c.textObj = c.h.getWithType("_root", "text")[1]
      }
      const offset = (c.i * period) / n
      let k = 0
      const tick = () => {
        const due = t0 + offset + k * period
        const t = now()
        if (t < due - 1) {
          setTimeout(tick, due - t)
          return
        }
        this.lag.push(t - due)
        const kk = k
        const ch = "abcdefghijklmnopqrstuvwxyz"[kk % 26]
        if (low) {
          if (text) c.h.splice(c.textObj, c.textLen, 0, ch)
          c.h.put(c.own, "n", kk)
          c.h.commit()
          c.h.updateDiffCursor() // own changes are not arrivals
        } else {
          c.doc = A.change(c.doc, d => {
            if (text) A.splice(d, ["text"], c.textLen, 0, ch)
            d["c" + c.i].n = kk
          })
        }
        if (text) c.textLen++
        this.sentAt[c.i * K + kk] = t
        c.sent++
        this.lastSend = Math.max(this.lastSend || 0, t)
        this.#sendSync(c)
        k++
        if (k < K) setTimeout(tick, Math.max(0, t0 + offset + k * period - now()))
      }
      setTimeout(tick, Math.max(0, t0 + offset - now()))
    }
    return true
  }

  status() {
    const want = (this.n - 1) * this.K
    let sent = 0
    let done = 0
    for (const c of this.clients) {
      sent += c.sent
      if (c.seen >= want) done++
    }
    return { sent, done, clients: this.clients.length, lastSend: this.lastSend || 0 }
  }

  async finish() {
    this.stopping = true
    const heads = this.clients.map(c => this.#heads(c).sort().join(","))
    for (const c of this.clients) c.ws?.terminate()
    if (this.trace) await new Promise(r => this.trace.end(r))
    return { cnt: this.cnt, maxArr: this.maxArr, sentAt: this.sentAt, lag: Float64Array.from(this.lag), heads, stats: this.stats }
  }
}

// ---------------------------------------------------------------- worker side

if (!isMainThread) {
  const group = new Group(workerData)
  parentPort.on("message", async ({ id, method, args }) => {
    try {
      const result = await group[method](...args)
      parentPort.postMessage({ id, result })
    } catch (e) {
      parentPort.postMessage({ id, error: String(e?.stack || e) })
    }
  })
}

// ---------------------------------------------------------------- coordinator

function parseArgs(argv) {
  const o = { url: null, n: 4, rate: 10, secs: 20, drain: 30, workers: 1, shape: "counter", api: "low", serverPid: null, trace: null, batch: 16 }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const v = () => argv[++i]
    if (a === "--url") o.url = v()
    else if (a === "--n") o.n = +v()
    else if (a === "--rate") o.rate = +v()
    else if (a === "--secs") o.secs = +v()
    else if (a === "--drain") o.drain = +v()
    else if (a === "--workers") o.workers = +v()
    else if (a === "--shape") o.shape = v()
    else if (a === "--api") o.api = v()
    else if (a === "--server-pid") o.serverPid = +v()
    else if (a === "--trace") o.trace = v()
    else if (a === "--connect-batch") o.batch = +v()
    else throw new Error(`unknown argument ${a}`)
  }
  if (!o.url) throw new Error("--url is required")
  if (!(o.n >= 2)) throw new Error("--n must be at least 2")
  if (!["low", "high"].includes(o.api)) throw new Error("--api is low or high")
  if (!["counter", "text"].includes(o.shape)) throw new Error("--shape is counter or text")
  return o
}

// utime+stime of a process (all its threads), in ms; null if it is gone.
const CLK_TCK = 100 // getconf CLK_TCK on Linux x86-64
function procCpuMs(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8")
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ")
    return ((+f[11] + +f[12]) * 1000) / CLK_TCK
  } catch {
    return null
  }
}
function procRssMB(pid) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/)
    return m ? +m[1] / 1024 : null
  } catch {
    return null
  }
}
const selfCpuMs = () => {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1000
}

function pct(sorted, q) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
}
const round = x => (x === null || x === undefined ? null : Math.round(x * 10) / 10)

async function main() {
  const o = parseArgs(process.argv.slice(2))
  const K = Math.round(o.rate * o.secs)
  const period = 1000 / o.rate
  const tag = randomBytes(4).toString("hex")
  const W = Math.max(1, Math.min(o.workers, o.n))
  const base = { url: o.url, n: o.n, K, shape: o.shape, api: o.api, tag, trace: o.trace }

  // Groups: with one worker the clients run on the main thread.
  const groups = []
  for (let g = 0; g < W; g++) {
    const clientIdxs = []
    for (let i = g; i < o.n; i += W) clientIdxs.push(i)
    const cfg = { ...base, clientIdxs, groupIdx: g }
    if (W === 1) {
      const local = new Group(cfg)
      groups.push({ call: async (method, ...args) => local[method](...args), close: async () => {} })
    } else {
      const w = new Worker(fileURLToPath(import.meta.url), { workerData: cfg })
      const pending = new Map()
      let next = 0
      w.on("message", ({ id, result, error }) => {
        const p = pending.get(id)
        pending.delete(id)
        error ? p.reject(new Error(error)) : p.resolve(result)
      })
      w.on("error", e => log(`worker ${g} error: ${e.stack || e}`))
      groups.push({
        call: (method, ...args) =>
          new Promise((resolve, reject) => {
            const id = next++
            pending.set(id, { resolve, reject })
            w.postMessage({ id, method, args })
          }),
        close: () => w.terminate(),
      })
    }
  }

  const tSetup = now()
  const { docId, heads } = await groups[0].call("create")
  log(`document ${docId} created by client 0; connecting ${o.n - 1} more clients`)
  await Promise.all(groups.map(g => g.call("connectAll", docId, heads, Math.max(1, Math.ceil(o.batch / W)))))
  const setupMs = now() - tSetup
  log(`all ${o.n} clients hold the document (${Math.round(setupMs)} ms); typing ${o.secs} s at ${o.rate}/s`)

  const t0 = now() + 500
  const cpu0 = { gen: selfCpuMs(), srv: o.serverPid ? procCpuMs(o.serverPid) : null, t: t0 }
  await Promise.all(groups.map(g => g.call("start", t0, period)))
  // Sample the server's RSS once a second, and wait for typing to end.
  let rssMax = null
  const expectedPerGroup = await Promise.all(groups.map(g => g.call("status")))
  const totalClients = expectedPerGroup.reduce((a, s) => a + s.clients, 0)
  let cpu1 = null
  let typingEnd = null
  let drainEnd = null
  let converged = false
  while (true) {
    await sleep(250)
    if (o.serverPid) {
      const r = procRssMB(o.serverPid)
      if (r !== null) rssMax = Math.max(rssMax ?? 0, r)
    }
    const st = await Promise.all(groups.map(g => g.call("status")))
    const sent = st.reduce((a, s) => a + s.sent, 0)
    const done = st.reduce((a, s) => a + s.done, 0)
    const t = now()
    if (typingEnd === null && sent === o.n * K) {
      typingEnd = Math.max(...st.map(s => s.lastSend))
      cpu1 = { gen: selfCpuMs(), srv: o.serverPid ? procCpuMs(o.serverPid) : null, t }
      log(`typing done (${Math.round((typingEnd - t0) / 100) / 10} s); draining up to ${o.drain} s`)
    }
    if (typingEnd !== null && done === totalClients) {
      drainEnd = t
      converged = true
      break
    }
    if (typingEnd !== null && t > typingEnd + o.drain * 1000) {
      drainEnd = t
      break
    }
    if (typingEnd === null && t > t0 + o.secs * 1000 * 4 + 60000) {
      log("typing did not finish in time (generator far behind schedule)")
      drainEnd = t
      break
    }
  }
  const cpu2 = { gen: selfCpuMs(), srv: o.serverPid ? procCpuMs(o.serverPid) : null, t: now() }
  if (cpu1 === null) cpu1 = cpu2 // typing never finished: the whole run is the typing window

  const parts = await Promise.all(groups.map(g => g.call("finish")))
  await Promise.all(groups.map(g => g.close()))

  const N = o.n
  const cnt = new Uint32Array(N * K)
  const maxArr = new Float64Array(N * K)
  const sentAt = new Float64Array(N * K)
  const lag = []
  const finalHeads = []
  const stats = { msgsIn: 0, msgsOut: 0, bytesIn: 0, bytesOut: 0, disconnects: 0, wsErrors: 0, docUnavailable: 0, errors: [], otherTypes: {} }
  for (const p of parts) {
    for (let x = 0; x < N * K; x++) {
      cnt[x] += p.cnt[x]
      if (p.maxArr[x] > maxArr[x]) maxArr[x] = p.maxArr[x]
      if (p.sentAt[x] > sentAt[x]) sentAt[x] = p.sentAt[x]
    }
    for (const l of p.lag) lag.push(l)
    finalHeads.push(...p.heads)
    for (const k of ["msgsIn", "msgsOut", "bytesIn", "bytesOut", "disconnects", "wsErrors", "docUnavailable"]) stats[k] += p.stats[k]
    stats.errors.push(...p.stats.errors)
    for (const [k, v] of Object.entries(p.stats.otherTypes)) stats.otherTypes[k] = (stats.otherTypes[k] || 0) + v
  }
  const lat = []
  let lost = 0
  let unsent = 0
  for (let x = 0; x < N * K; x++) {
    if (sentAt[x] === 0) {
      unsent++
      continue
    }
    if (cnt[x] >= N - 1) lat.push(maxArr[x] - sentAt[x])
    else lost++
  }
  lat.sort((a, b) => a - b)
  lag.sort((a, b) => a - b)
  const distinctHeads = new Set(finalHeads).size
  const cpuPct = (a, b, key) => (a && b && a[key] !== null && b[key] !== null ? (100 * (b[key] - a[key])) / (b.t - a.t) : null)
  const result = {
    url: o.url,
    n: N,
    rate: o.rate,
    secs: o.secs,
    drain: o.drain,
    shape: o.shape,
    api: o.api,
    workers: W,
    keystrokes: N * K,
    unsent,
    lost,
    p50_ms: round(pct(lat, 0.5)),
    p99_ms: round(pct(lat, 0.99)),
    max_ms: round(lat.length ? lat[lat.length - 1] : null),
    converged: converged && lost === 0 && unsent === 0 && distinctHeads === 1,
    distinct_heads: distinctHeads,
    setup_ms: Math.round(setupMs),
    typing_s: typingEnd ? round((typingEnd - t0) / 1000) : null,
    drain_s: typingEnd ? round((drainEnd - typingEnd) / 1000) : null,
    send_lag_p50_ms: round(pct(lag, 0.5)),
    send_lag_p99_ms: round(pct(lag, 0.99)),
    server_cpu_typing_pct: round(cpuPct(cpu0, cpu1, "srv")),
    server_cpu_total_pct: round(cpuPct(cpu0, cpu2, "srv")),
    server_rss_max_mb: round(rssMax),
    gen_cpu_typing_pct: round(cpuPct(cpu0, cpu1, "gen")),
    gen_cpu_total_pct: round(cpuPct(cpu0, cpu2, "gen")),
    // The generator, not the server, limits the run when it cannot keep to the
    // typing schedule or its own CPU is near its cores' worth.
    generator_bound: pct(lag, 0.99) > 100 || cpuPct(cpu0, cpu1, "gen") > 90 * W,
    loadavg_1m: +readFileSync("/proc/loadavg", "utf8").split(" ")[0],
    ...stats,
  }
  process.stdout.write(JSON.stringify(result) + "\n")
  process.exit(0)
}

if (isMainThread) {
  main().catch(e => {
    log(`failed: ${e.stack || e}`)
    process.stdout.write(JSON.stringify({ error: String(e.message || e) }) + "\n")
    process.exit(1)
  })
}
