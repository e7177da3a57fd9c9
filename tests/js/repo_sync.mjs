// @automerge/automerge-repo clients syncing through Murmur nodes' WebSocket
// endpoint (`GET /sync`, automerge-repo network protocol "1"), using the real
// Repo + WebSocketClientAdapter (+ NodeFS storage for the first client):
//   a. client1 (NodeFS storage, so it has a storageId) on node A finds DOC_ID
//      and sees {"title": "from murmur"};
//   b. client1 sets fromJs; node A serves it over HTTP;
//   c. node B (once it holds the doc) gets fromB over HTTP; client1 sees it
//      (B -> A over QUIC, A -> client1 over the websocket);
//   d. client2 (ephemeral, no storage) on node B finds the doc and sees fromJs;
//   e. client1 creates a document; node B serves it over HTTP.
//
// Usage: node repo_sync.mjs A_HTTP B_HTTP DOC_ID
//   A_HTTP, B_HTTP: like http://127.0.0.1:7401, two nodes that replicate with
//   each other; DOC_ID: a document on node A with {"title": "from murmur"}.
// Self-check without Murmur, against any automerge-repo sync server (e.g. the
// reference @automerge/automerge-repo-sync-server): the script seeds the
// document itself and plays the nodes' HTTP parts with extra Repos:
//   node repo_sync.mjs --ws-only ws://127.0.0.1:3030/sync ws://127.0.0.1:3030/sync
// Environment: MURMUR_TOKEN, MURMUR_WAIT_MS, MURMUR_WS_TRACE (lib/harness.mjs).
// Prints one JSON line of what it saw; exits non-zero on any failure, after
// printing every websocket message that went either way.
import assert from "node:assert/strict";
import { Harness, ImmutableString, plain } from "./lib/harness.mjs";

const t = new Harness("repo_sync", process.argv.slice(2));

await t.run(async () => {
  const { nodeA, nodeB } = t;
  const docId = await t.seedDoc();
  const url = `automerge:${docId}`;

  // a. client1 finds the node's document.
  const client1 = t.client("client1", t.aBase, { storage: true });
  const h1 = await t.findDoc(client1, url, "client1");
  await t.docHas(h1, "client1", "title", "from murmur");
  t.mark("client1_title");

  // b. client1 edits it; node A serves the edit.
  h1.change((d) => {
    d.fromJs = "edited in js via A";
  });
  await t.waitUntil("node A to serve fromJs", async () => {
    const c = await nodeA.content(docId);
    return { ok: c?.fromJs === "edited in js via A", seen: c };
  });
  t.mark("nodeA_fromJs");

  // c. A write on node B reaches client1 (through node A).
  await t.waitUntil("node B to hold the document", async () => {
    const c = await nodeB.content(docId);
    return { ok: c !== null && String(c.title) === "from murmur", seen: c };
  });
  t.mark("nodeB_holds_doc");
  await nodeB.put(docId, "fromB", "written on B");
  await t.docHas(h1, "client1", "fromB", "written on B");
  t.mark("client1_fromB");

  // d. An ephemeral client of node B sees client1's edit.
  const client2 = t.client("client2", t.bBase);
  const h2 = await t.findDoc(client2, url, "client2");
  await t.docHas(h2, "client2", "fromJs", "edited in js via A");
  t.mark("client2_fromJs");

  // e. A document created in JS (a Text, an ImmutableString, a number)
  // reaches node B.
  const created = client1.create({
    created: "in js",
    immutable: new ImmutableString("immutable in js"),
    count: 3,
  });
  const newId = created.documentId;
  const onB = await t.waitUntil("node B to serve the document created in JS", async () => {
    const c = await nodeB.content(newId);
    return { ok: c !== null && String(c.created) === "in js", seen: c };
  });
  t.mark("nodeB_created_doc");

  const client2Doc = plain(h2.doc());
  assert.equal(client2Doc.fromJs, "edited in js via A");
  return {
    doc: docId,
    createdDoc: newId,
    client1Doc: plain(h1.doc()),
    client2Doc,
    createdOnB: onB.seen,
    client1PeerId: client1.peerId,
    client1StorageId: await client1.storageId(),
    serverPeers: Object.fromEntries(t.adapters.map((a) => [a.traceName, a.remotePeerId])),
    serverPeerMetadata: client1.peerMetadataByPeerId,
  };
});
