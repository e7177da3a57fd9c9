// Bundles app.js (esbuild) and serves the page on 127.0.0.1, pointed at a
// Murmur node.
//
// Usage: npm start -- NODE_URL DOC_ID [TOKEN]
//   NODE_URL: the node's HTTP API, like http://127.0.0.1:7401 (https:// for
//   a node with TLS: the page then uses wss://);
//   DOC_ID: a document of the node (`murmur doc create` makes one);
//   TOKEN: a token, if the node wants one (`murmur token create ...`).
// PORT (default 8080) is where the page is served.
import * as esbuild from "esbuild";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";

const [node, doc, token] = process.argv.slice(2);
if (!node || !doc) {
  console.error("usage: npm start -- NODE_URL DOC_ID [TOKEN]");
  process.exit(2);
}
const sync = new URL("/sync", node);
sync.protocol = sync.protocol === "https:" ? "wss:" : "ws:";
if (token) sync.searchParams.set("token", token);

const built = await esbuild.build({
  entryPoints: [new URL("./app.js", import.meta.url).pathname],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  write: false,
  logLevel: "error",
});
const files = {
  "/": ["text/html", readFileSync(new URL("./index.html", import.meta.url))],
  "/app.js": ["text/javascript", built.outputFiles[0].contents],
};
const server = createServer((request, response) => {
  const file = files[new URL(request.url, "http://page").pathname];
  if (!file) return response.writeHead(404).end();
  response.writeHead(200, { "content-type": file[0] }).end(file[1]);
});
const port = Number(process.env.PORT || 8080);
server.listen(port, "127.0.0.1", () => {
  const page = new URL(`http://127.0.0.1:${port}/`);
  page.searchParams.set("sync", sync.toString());
  page.searchParams.set("doc", doc);
  console.log(`open ${page}`);
});
