#!/usr/bin/env node
// Runner for the typists benchmark: for each N, runs the reference sync
// server (@automerge/automerge-repo-sync-server) and a Murmur node, each
// fresh, one after the other (the order alternates from one N to the next),
// drives each with the same load generator (murmur-typists with --typists,
// else typists.mjs), and prints a markdown table.
//
//   node run.mjs --murmur ../../target/release/murmur [--ns 4,8,16,64,256]
//        [--typists ../../target/release/murmur-typists]
//        [--secs 20] [--rate 10] [--drain 30] [--out results.json]
//        [--servers reference,murmur] [--reps 1] [--workers 1]
//        [--shape counter|text] [--quiet-load 0] [--nice 0] [--keep]
//
// --quiet-load L waits (up to 3 minutes) before each run until the 1-minute
// load average is below L; --nice N runs server and generator under nice -n N
// (root may give a negative N to put them ahead of other work on the machine).
import { spawn } from "node:child_process"
import { createServer } from "node:net"
import { mkdtempSync, mkdirSync, rmSync, readFileSync, writeFileSync, openSync, existsSync } from "node:fs"
import { tmpdir, cpus } from "node:os"
import { join, dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { createRequire } from "node:module"

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
const sleep = ms => new Promise(r => setTimeout(r, ms))
const log = (...a) => process.stderr.write(`[run ${new Date().toISOString().slice(11, 19)}] ${a.join(" ")}\n`)

function parseArgs(argv) {
  const o = { murmur: null, ns: [4, 8, 16, 64, 256], secs: 20, rate: 10, drain: 30, out: null, servers: ["reference", "murmur"], reps: 1, workers: 1, shape: "counter", api: "low", quietLoad: 0, nice: 0, keep: false, typists: null }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const v = () => argv[++i]
    if (a === "--murmur") o.murmur = v()
    else if (a === "--ns") o.ns = v().split(",").map(Number)
    else if (a === "--secs") o.secs = +v()
    else if (a === "--rate") o.rate = +v()
    else if (a === "--drain") o.drain = +v()
    else if (a === "--out") o.out = v()
    else if (a === "--servers") o.servers = v().split(",")
    else if (a === "--reps") o.reps = +v()
    else if (a === "--workers") o.workers = +v()
    else if (a === "--shape") o.shape = v()
    else if (a === "--api") o.api = v()
    else if (a === "--quiet-load") o.quietLoad = +v()
    else if (a === "--nice") o.nice = +v()
    else if (a === "--keep") o.keep = true
    else if (a === "--typists") o.typists = v()
    else throw new Error(`unknown argument ${a}`)
  }
  if (o.servers.includes("murmur") && !o.murmur) {
    log("no --murmur given: running the reference server only")
    o.servers = o.servers.filter(s => s !== "murmur")
  }
  if (o.murmur) o.murmur = resolve(o.murmur)
  if (o.typists) o.typists = resolve(o.typists)
  return o
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer()
    s.on("error", rej)
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address()
      s.close(() => res(port))
    })
  })
}

const loadavg = () => +readFileSync("/proc/loadavg", "utf8").split(" ")[0]

function niced(o, cmd, args) {
  return o.nice ? ["nice", ["-n", String(o.nice), cmd, ...args]] : [cmd, args]
}

function run(cmd, args, opts) {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts })
    let out = ""
    let err = ""
    p.stdout.on("data", d => (out += d))
    p.stderr.on("data", d => (err += d))
    p.on("error", rej)
    p.on("exit", code => (code === 0 ? res(out) : rej(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err}`))))
  })
}

async function waitHttp(port, proc, ms) {
  const until = Date.now() + ms
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode} before it listened`)
    try {
      await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(1000) })
      return
    } catch {
      await sleep(100)
    }
  }
  throw new Error(`server did not answer HTTP on port ${port} within ${ms} ms`)
}

async function startServer(o, kind, dir) {
  const port = await freePort()
  const logFd = openSync(join(dir, "server.log"), "w")
  let proc
  if (kind === "reference") {
    // The package's start script is `node ./src/index.js`; PORT and DATA_DIR
    // are its only settings. Spawned directly so that the PID is the server's.
    const entry = join(dirname(require.resolve("@automerge/automerge-repo-sync-server/package.json")), "src", "index.js")
    const [cmd, args] = niced(o, process.execPath, [entry])
    proc = spawn(cmd, args, { cwd: dir, env: { ...process.env, PORT: String(port), DATA_DIR: join(dir, "data") }, stdio: ["ignore", logFd, logFd] })
  } else {
    const data = join(dir, "node")
    await run(o.murmur, ["init", "--dir", data, "--force", "--listen", "127.0.0.1:0", "--http", `127.0.0.1:${port}`])
    const [cmd, args] = niced(o, o.murmur, ["run", "--config", join(data, "config.toml")])
    proc = spawn(cmd, args, { cwd: dir, stdio: ["ignore", logFd, logFd] })
  }
  await waitHttp(port, proc, 30000)
  // With nice, proc.pid is nice's pid, which execs the server: the same pid.
  return { proc, port, url: kind === "reference" ? `ws://127.0.0.1:${port}` : `ws://127.0.0.1:${port}/sync` }
}

async function stopServer(s) {
  if (s.proc.exitCode !== null) return s.proc.exitCode
  s.proc.kill("SIGTERM")
  for (let i = 0; i < 50 && s.proc.exitCode === null && s.proc.signalCode === null; i++) await sleep(100)
  if (s.proc.exitCode === null && s.proc.signalCode === null) {
    s.proc.kill("SIGKILL")
    await sleep(200)
  }
  return null
}

async function oneRun(o, kind, n, rep, root) {
  if (o.quietLoad > 0) {
    const until = Date.now() + 180000
    while (loadavg() >= o.quietLoad && Date.now() < until) await sleep(5000)
  }
  const dir = join(root, `${kind}-n${n}-r${rep}`)
  mkdirSync(dir, { recursive: true })
  const load0 = loadavg()
  let server
  try {
    server = await startServer(o, kind, dir)
  } catch (e) {
    return { server: kind, n, rep, error: `start: ${e.message}`, dir }
  }
  log(`${kind} N=${n}: server pid ${server.proc.pid} at ${server.url} (load ${load0})`)
  // The load: murmur-typists (Rust) with --typists, else typists.mjs; the
  // same protocol, document and JSON line either way.
  const common = ["--url", server.url, "--n", String(n), "--rate", String(o.rate), "--secs", String(o.secs), "--drain", String(o.drain)]
  const [cmd, args] = o.typists
    ? niced(o, o.typists, [...common, "--server-pid", String(server.proc.pid)])
    : niced(o, process.execPath, [
        join(here, "typists.mjs"),
        ...common,
        "--workers", String(o.workers),
        "--shape", o.shape,
        "--api", o.api,
        "--server-pid", String(server.proc.pid),
      ])
  let result
  for (let attempt = 0; attempt < 2; attempt++) {
  try {
    const out = await new Promise((res, rej) => {
      const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] })
      let buf = ""
      const timer = setTimeout(() => p.kill("SIGKILL"), (o.secs * 4 + o.drain + 240) * 1000)
      p.stdout.on("data", d => (buf += d))
      p.on("exit", () => {
        clearTimeout(timer)
        res(buf)
      })
      p.on("error", rej)
    })
    const line = out.trim().split("\n").pop()
    result = JSON.parse(line || '{"error":"no output"}')
  } catch (e) {
    result = { error: e.message }
  }
  // Node 20's V8 has aborted the generator now and then ("Fatal error ...
  // unreachable code" in the deoptimizer) before it printed anything: the
  // server is fresh only before the first attempt, so a retry gets a new one.
  if (!(result.error === "no output" && attempt === 0)) break
  log(`${kind} N=${n}: the generator died without a result; once more with a fresh server`)
  await stopServer(server)
  rmSync(join(dir, kind === "reference" ? "data" : "node"), { recursive: true, force: true })
  server = await startServer(o, kind, dir)
  args[args.indexOf("--server-pid") + 1] = String(server.proc.pid)
  args[args.indexOf("--url") + 1] = server.url
  }
  const exitedEarly = server.proc.exitCode !== null || server.proc.signalCode !== null
  await stopServer(server)
  if (exitedEarly) result.server_exited = server.proc.exitCode ?? server.proc.signalCode
  if (!o.keep) rmSync(join(dir, kind === "reference" ? "data" : "node"), { recursive: true, force: true })
  return { server: kind, n, rep, load_before: load0, dir, ...result }
}

const fmt = x => (x === null || x === undefined ? "—" : typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(0)) : String(x))

function table(rows) {
  const lines = [
    "| server | N | p50 ms | p99 ms | lost | server CPU % | generator CPU % | converged | generator-bound | gen. send lag p99 ms | disconnects |",
    "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
  ]
  for (const r of rows) {
    if (r.error) {
      lines.push(`| ${r.server} | ${r.n} | error: ${r.error.replaceAll("|", "/").slice(0, 120)} | | | | | no | | | |`)
      continue
    }
    lines.push(
      `| ${r.server} | ${r.n} | ${fmt(r.p50_ms)} | ${fmt(r.p99_ms)} | ${r.lost} of ${r.keystrokes} | ${fmt(r.server_cpu_typing_pct)} | ${fmt(r.gen_cpu_typing_pct)} | ${r.converged ? "yes" : "no"} | ${r.generator_bound ? "YES" : "no"} | ${fmt(r.send_lag_p99_ms)} | ${r.disconnects} |`,
    )
  }
  return lines.join("\n")
}

async function main() {
  const o = parseArgs(process.argv.slice(2))
  const out = o.out ?? join(here, `results-${new Date().toISOString().replace(/[:.]/g, "-")}.json`)
  const root = mkdtempSync(join(tmpdir(), "murmur-ws-bench-"))
  log(`servers ${o.servers.join(", ")}; N ${o.ns.join(", ")}; ${o.secs} s at ${o.rate}/s, drain ${o.drain} s; logs under ${root}`)
  const meta = { typists: o.typists, api: o.api, workers: o.workers, started: new Date().toISOString(), args: process.argv.slice(2), murmur: o.murmur, node: process.version, cpus: cpus().length, cpu_model: cpus()[0]?.model, shape: o.shape }
  const rows = []
  const save = () => writeFileSync(out, JSON.stringify({ meta, runs: rows }, null, 1) + "\n")
  let flip = false
  for (const n of o.ns) {
    for (let rep = 0; rep < o.reps; rep++) {
      const order = flip ? [...o.servers].reverse() : o.servers
      flip = !flip
      for (const kind of order) {
        const r = await oneRun(o, kind, n, rep, root)
        log(`${kind} N=${n}: ${r.error ? "error " + r.error : `p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, lost ${r.lost}, server CPU ${r.server_cpu_typing_pct}%, generator CPU ${r.gen_cpu_typing_pct}%, converged ${r.converged}`}`)
        rows.push(r)
        save()
      }
    }
  }
  meta.finished = new Date().toISOString()
  save()
  const sorted = [...rows].sort((a, b) => a.n - b.n || a.server.localeCompare(b.server) || a.rep - b.rep)
  process.stdout.write(table(sorted) + "\n\nraw results: " + out + "\n")
}

main().catch(e => {
  log(`failed: ${e.stack || e}`)
  process.exit(1)
})
