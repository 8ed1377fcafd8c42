"""Joins N signaling sockets (listeners, no media) to one room of a running server and prints
the server's RSS before and after: memory per socket. Used by bench-signal-memory.sh."""
import asyncio, json, sys, urllib.request, os
import websockets

base, key, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def call(method, path, body=None, auth=True):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if auth:
        req.add_header("authorization", f"Bearer {key}")
    return json.load(urllib.request.urlopen(req))

async def main():
    room = call("POST", "/api/v1/rooms", {"title": "mem"})
    invite = call("POST", f"/api/v1/rooms/{room['id']}/invites", {"role": "listener"})
    # One warm-up participant so the room is live.
    socks = []
    async def join(i):
        j = call("POST", "/api/v1/join", {"invite": invite["code"], "display_name": f"L{i}"}, auth=False)
        ws = await websockets.connect(j["signal_url"], max_size=None)
        await ws.send(json.dumps({"type": "join", "token": j["token"]}))
        while True:
            m = json.loads(await ws.recv())
            if m.get("type") == "welcome":
                break
        return ws
    socks.append(await join(0))
    await asyncio.sleep(1)
    before = rss_kib()
    for i in range(1, n + 1):
        socks.append(await join(i))
    await asyncio.sleep(2)
    after = rss_kib()
    print(json.dumps({"sockets": n, "rss_before_kib": before, "rss_after_kib": after, "kib_per_socket": round((after - before) / n, 1)}))
    for ws in socks:
        await ws.close()

asyncio.run(main())
