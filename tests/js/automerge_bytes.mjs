// Automerge bytes between a Murmur node and @automerge/automerge (npm):
// a document made on the node loads in JavaScript with the same heads; one
// made in JavaScript imports into the node with its history; and the two
// copies merge both ways afterwards.
//
// Usage: node automerge_bytes.mjs http://127.0.0.1:PORT DOC_ID
// DOC_ID is a document the node holds, with {"title": "from murmur"}.
// Prints one JSON line of what it saw; exits non-zero on any mismatch.
import * as A from "@automerge/automerge";
import assert from "node:assert/strict";

const [base, nodeDoc] = process.argv.slice(2);

async function call(method, path, { body, type, accept } = {}) {
  const headers = {};
  if (type) headers["content-type"] = type;
  if (accept) headers["accept"] = accept;
  const response = await fetch(base + path, { method, headers, body });
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${new TextDecoder().decode(bytes)}`);
  }
  return { bytes, json: () => JSON.parse(new TextDecoder().decode(bytes)) };
}
const binary = "application/octet-stream";
const sorted = (heads) => [...heads].sort();

// 1. The node's document, loaded in JavaScript.
const saved = await call("GET", `/docs/${nodeDoc}`, { accept: binary });
let fromNode = A.load(saved.bytes);
const asJson = (await call("GET", `/docs/${nodeDoc}`)).json();
assert.deepEqual(sorted(A.getHeads(fromNode)), sorted(asJson.heads));
// Murmur's JSON `put` makes a string scalar (an ImmutableString here);
// `put_text` makes Text, a plain string here.
assert.equal(String(fromNode.title), "from murmur");

// 2. A document made in JavaScript, imported with its history.
let mine = A.from({ title: "from js", items: ["a"] });
mine = A.change(mine, "add b", (d) => { d.items.push("b"); });
const created = await call("POST", "/docs", { body: A.save(mine), type: binary });
const imported = created.json().id;
let read = (await call("GET", `/docs/${imported}`)).json();
assert.deepEqual(sorted(read.heads), sorted(A.getHeads(mine)));
assert.deepEqual(read.content, { title: "from js", items: ["a", "b"] });
const history = (await call("GET", `/docs/${imported}/history`)).json();
assert.equal(history.total, 2);
assert.equal(history.changes[1].message, "add b");

// 3. Both sides edit; each merges the other's changes.
const before = A.getHeads(mine);
mine = A.change(mine, (d) => { d.fromJs = true; });
const merged = await call("POST", `/docs/${imported}/changes`, {
  body: A.saveSince(mine, before),
  type: binary,
});
assert.ok(merged.json().change);
const edit = { ops: [{ op: "put", path: ["fromNode"], value: true }] };
await call("POST", `/docs/${imported}/changes`, {
  body: JSON.stringify(edit),
  type: "application/json",
});
const back = await call("GET", `/docs/${imported}`, { accept: binary });
mine = A.merge(mine, A.load(back.bytes));
read = (await call("GET", `/docs/${imported}`)).json();
assert.deepEqual(sorted(A.getHeads(mine)), sorted(read.heads));
assert.equal(mine.fromJs, true);
assert.equal(mine.fromNode, true);

// 4. Bytes that are not Automerge are refused, and nothing is made.
const before_docs = (await call("GET", "/docs")).json().documents.length;
const garbage = await fetch(base + "/docs", {
  method: "POST",
  headers: { "content-type": binary },
  body: new Uint8Array([1, 2, 3, 4]),
});
assert.equal(garbage.status, 422);
assert.equal((await call("GET", "/docs")).json().documents.length, before_docs);

console.log(JSON.stringify({ ok: true, imported, heads: read.heads, automerge: "3.5.0" }));
