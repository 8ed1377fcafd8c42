/**
 * For working on the web client without rebuilding the server: serves client-web/ from disk
 * and passes everything else (REST, the signaling WebSocket, invite pages' data) to a running
 * stoa. Development only; the real server embeds the files.
 *
 *   stoa serve --bind 127.0.0.1:18400 --public-url http://127.0.0.1:18401 --data-dir /tmp/ui-dev
 *   STOA_URL=http://127.0.0.1:18400 PORT=18401 node dev-server.js
 *
 * (`--public-url` makes invite links and the signaling URL point at this server; `HOST`, default
 * 127.0.0.1, is the address this one listens on.)
 */

import { readFile } from "node:fs/promises";
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const CLIENT = join(dirname(fileURLToPath(import.meta.url)), "../../client-web");
const TARGET = new URL(process.env.STOA_URL ?? "http://127.0.0.1:18400");
const PORT = Number(process.env.PORT ?? 18401);
const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; " +
  "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const TYPES = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  json: "application/json",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
};
const INVITE_BLOCK = /<script type="application\/json" id="stoa-invite">[\s\S]*?<\/script>/u;

const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  try {
    if (req.method === "GET" && url.pathname.startsWith("/app/")) {
      const name = url.pathname.slice(5);
      const ext = /** @type {keyof typeof TYPES} */ (name.split(".").pop());
      if (!/^[\w.-]+$/u.test(name) || !TYPES[ext]) throw Object.assign(new Error("no such file"), { status: 404 });
      const body = await readFile(join(CLIENT, name));
      res.writeHead(200, { "content-type": TYPES[ext], "cache-control": "no-cache" }).end(body);
      return;
    }
    if (req.method === "GET" && (url.pathname === "/" || url.pathname.startsWith("/i/"))) {
      // The server knows whether the invite is valid: take its data block, put it in our page.
      const upstream = await fetch(new URL(url.pathname, TARGET));
      const block = (await upstream.text()).match(INVITE_BLOCK)?.[0] ?? "";
      const index = await readFile(join(CLIENT, "index.html"), "utf8");
      res
        .writeHead(upstream.status, { "content-type": TYPES.html, "content-security-policy": CSP, "cache-control": "no-store" })
        .end(index.replace("<!--STOA_INVITE-->", block));
      return;
    }
  } catch (error) {
    res.writeHead(/** @type {any} */ (error).status ?? 502, { "content-type": "text/plain" }).end(String(error));
    return;
  }
  const upstream = request(
    { host: TARGET.hostname, port: TARGET.port, path: req.url, method: req.method, headers: req.headers },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on("error", (error) => res.writeHead(502).end(String(error)));
  req.pipe(upstream);
});

// The signaling WebSocket: pass the upgrade through byte for byte.
server.on("upgrade", (req, socket, head) => {
  const upstream = connect(Number(TARGET.port), TARGET.hostname, () => {
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
    upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  upstream.on("error", () => socket.destroy());
  socket.on("error", () => upstream.destroy());
});

server.listen(PORT, process.env.HOST ?? "127.0.0.1", () => {
  console.log(`web client from ${CLIENT} on http://${process.env.HOST ?? "127.0.0.1"}:${PORT}, everything else from ${TARGET.origin}`);
});
