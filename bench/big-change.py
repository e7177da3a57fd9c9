#!/usr/bin/env python3
"""How long one big change request holds up a node (issue 9, item 5).

Starts `murmur run` (the binary given, default target/release/murmur) on a
fresh data dir, creates a document, then sends one change request of a
large list (`--elements`, default 520,000 elements: a 1 MiB body) while a
second client polls GET /docs/{other} every 5 ms. Prints how long the big
request took, its status, and the other requests' p50/p99/max latency
during it. Usage: bench/big-change.py [--bin PATH] [--elements N]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time
import urllib.request, urllib.error

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/release/murmur")
ap.add_argument("--elements", type=int, default=520_000)
args = ap.parse_args()

tmp = tempfile.mkdtemp(prefix="murmur-bigchange-")
base = "http://127.0.0.1:7491"
try:
    subprocess.run([args.bin, "init", "--dir", tmp, "--listen", "127.0.0.1:7490",
                    "--http", "127.0.0.1:7491"], check=True, capture_output=True)
    node = subprocess.Popen([args.bin, "run", "--config", os.path.join(tmp, "config.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def call(method, path, body=None, timeout=120):
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for _ in range(200):
        try:
            call("GET", "/status", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    _, body = call("POST", "/docs")
    big = json.loads(body)["id"]
    _, body = call("POST", "/docs")
    other = json.loads(body)["id"]
    call("POST", f"/docs/{other}/changes", {"ops": [{"op": "put", "path": ["k"], "value": 1}]})

    latencies, stop = [], threading.Event()
    def poll():
        while not stop.is_set():
            t = time.perf_counter()
            call("GET", f"/docs/{other}")
            latencies.append(time.perf_counter() - t)
            time.sleep(0.005)
    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    before = len(latencies)
    t = time.perf_counter()
    status, reply = call("POST", f"/docs/{big}/changes",
                         {"ops": [{"op": "put", "path": ["items"], "value": [0] * args.elements}]})
    took = time.perf_counter() - t
    time.sleep(0.2)
    stop.set()
    poller.join()
    during = sorted(latencies[before:]) or [0.0]
    p = lambda q: during[min(len(during) - 1, int(q * len(during)))] * 1000
    print(f"big request: {args.elements} elements, HTTP {status} in {took*1000:.0f} ms"
          + ("" if status < 300 else f" ({reply[:160].decode(errors='replace')})"))
    print(f"other requests during it: n={len(during)} p50={p(0.5):.1f} ms p99={p(0.99):.1f} ms max={during[-1]*1000:.0f} ms")
    node.terminate()
    node.wait(timeout=20)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
