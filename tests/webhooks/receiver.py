#!/usr/bin/env python3
"""A webhook receiver for Stoa's tests, verifying with the `standardwebhooks` package.

Usage: receiver.py SECRET LOG_FILE. Listens on 127.0.0.1 (an ephemeral port, printed as
`port N` on the first line of standard output) and appends one JSON line to LOG_FILE per
request to /hook: {"answer": ..., "id": ..., "type": ..., "body": ...}. `answer` is what it
did: `ok` (verified and accepted, 204), `fail` (answered 500), `hang` (never answered),
`invalid` (the signature did not verify, answered 400). POST /mode with `ok`, `fail` or `hang`
as the body switches what it does to the next requests; it starts in the mode given by the
RECEIVER_MODE environment variable (default `ok`). POST /secret with a `whsec_` secret as
the body verifies the next requests with it (a room's endpoint gets its secret from the server).
With RECEIVER_TLS_CERT and RECEIVER_TLS_KEY (PEM files) it speaks HTTPS only, with that
certificate.
"""

import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

SECRET, LOG_FILE = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()
STATE = {"mode": os.environ.get("RECEIVER_MODE", "ok"), "webhook": Webhook(SECRET)}


def log(entry):
    with LOCK:
        with open(LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if self.path == "/mode":
            STATE["mode"] = body.decode().strip()
            return self.answer(204)
        if self.path == "/secret":
            STATE["webhook"] = Webhook(body.decode().strip())
            return self.answer(204)
        if self.path != "/hook":
            return self.answer(404)
        mode = STATE["mode"]
        entry = {"answer": mode, "id": self.headers.get("webhook-id")}
        if mode == "hang":
            log(entry)
            while True:
                time.sleep(3600)
        if mode == "fail":
            log(entry)
            return self.answer(500, b"receiver told to fail")
        try:
            payload = STATE["webhook"].verify(body, dict(self.headers.items()))
        except WebhookVerificationError as e:
            entry.update(answer="invalid", error=str(e))
            log(entry)
            return self.answer(400)
        entry.update(type=payload["type"], body=payload)
        log(entry)
        return self.answer(204)


class Server(ThreadingHTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Handler)
if os.environ.get("RECEIVER_TLS_CERT"):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.environ["RECEIVER_TLS_CERT"], os.environ["RECEIVER_TLS_KEY"])
    # A client that refuses the certificate fails its handshake in accept(), an OSError the
    # server ignores; the next connection is served.
    server.socket = tls.wrap_socket(server.socket, server_side=True)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
