#!/usr/bin/env python3
"""Black-box client for the deployment tests (container, nginx): talks to a
running Waypost over real sockets, as a driver, a WebSocket watcher and an SSE
watcher would, and fails loudly when something does not arrive in time.

  client.py track  --base http://127.0.0.1:8080 --secret S [--sse] [--rounds 5]
      Subscribes a WebSocket watcher (and an SSE watcher with --sse) to a
      driver, posts locations and checks every watcher gets every one within
      --max-latency seconds. Prints one JSON line of timings.
  client.py drain  --base http://127.0.0.1:8080 --secret S
      Subscribes a watcher, prints "ready", then waits for the server to close
      the socket and prints the close code and when it happened.

Only the standard library and `websockets` (tests/deploy/requirements.txt).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import websockets


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, sub: str, role: str, channels=None, ttl_s=600) -> str:
    """An HS256 JWT as the server expects (same claims as `waypost token`)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + ttl_s}
    if channels:
        claims["channels"] = channels
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def ws_url(base: str, token: str) -> str:
    u = urlsplit(base)
    scheme = "wss" if u.scheme == "https" else "ws"
    return f"{scheme}://{u.netloc}/v1/ws?token={token}"


def post_fix(base: str, token: str, driver: str, seq: int) -> dict:
    now = int(time.time() * 1000)
    body = json.dumps({
        "device_id": "dev-1",
        "fixes": [{"seq": seq, "ts": now, "lat": 52.52 + (seq % 1000) * 1e-4, "lon": 13.405}],
    }).encode()
    req = urllib.request.Request(
        f"{base}/v1/drivers/{driver}/locations", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"POST {req.full_url}: {e.code} {e.read()[:500]!r}")


async def ws_subscribe(base: str, token: str, channel: str):
    ws = await websockets.connect(ws_url(base, token), open_timeout=5, max_size=1 << 20)
    await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if frame.get("type") == "subscribed" and frame.get("channel") == channel:
            return ws
        if frame.get("type") == "error":
            raise SystemExit(f"subscribe refused: {frame}")


class SseStream:
    """A minimal SSE reader over a raw socket (handles chunked encoding), so
    the test sees bytes exactly when the proxy forwards them."""

    def __init__(self, reader, writer, chunked):
        self.reader, self.writer, self.chunked = reader, writer, chunked
        self.buf = b""

    @classmethod
    async def open(cls, base: str, path: str):
        u = urlsplit(base)
        host, port = u.hostname, u.port or 80
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                      "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split()
        if len(status) < 2 or status[1] != "200":
            raise SystemExit(f"SSE {path}: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        if "text/event-stream" not in headers.get("content-type", ""):
            raise SystemExit(f"SSE {path}: content-type {headers.get('content-type')}")
        return cls(reader, writer, headers.get("transfer-encoding", "").lower() == "chunked")

    async def _more(self):
        if self.chunked:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                raise EOFError("stream ended")
            data = await self.reader.readexactly(size + 2)
            self.buf += data[:-2]
        else:
            data = await self.reader.read(4096)
            if not data:
                raise EOFError("stream ended")
            self.buf += data

    async def event(self):
        """The next event as (name, data), skipping comments."""
        while True:
            while b"\n\n" not in self.buf:
                await self._more()
            raw, self.buf = self.buf.split(b"\n\n", 1)
            name, data = "message", []
            for line in raw.decode().split("\n"):
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
            if data or name != "message":
                return name, "\n".join(data)

    def close(self):
        self.writer.close()


async def track(args) -> int:
    driver = args.driver
    channel = f"tracking:{driver}"
    driver_token = mint(args.secret, driver, "driver")
    buyer_token = mint(args.secret, "buyer-1", "buyer", [channel])
    ws = await ws_subscribe(args.base, buyer_token, channel)
    sse = None
    if args.sse:
        sse = await SseStream.open(args.base, f"/v1/drivers/{driver}/location/stream?token={buyer_token}")
    ws_lat, sse_lat = [], []
    for i in range(args.rounds):
        seq = args.first_seq + i
        t0 = time.monotonic()
        reply = await asyncio.to_thread(post_fix, args.base, driver_token, driver, seq)
        if reply.get("accepted") != 1:
            raise SystemExit(f"ingest reply {reply}")

        async def ws_wait():
            while True:
                f = json.loads(await ws.recv())
                if f.get("type") == "location" and f["fix"]["seq"] == seq:
                    return time.monotonic() - t0

        async def sse_wait():
            while True:
                name, data = await sse.event()
                if name == "location" and json.loads(data)["fix"]["seq"] == seq:
                    return time.monotonic() - t0

        try:
            ws_lat.append(await asyncio.wait_for(ws_wait(), args.max_latency))
        except asyncio.TimeoutError:
            raise SystemExit(f"WebSocket watcher: seq {seq} not delivered within {args.max_latency}s")
        if sse:
            try:
                sse_lat.append(await asyncio.wait_for(sse_wait(), args.max_latency))
            except asyncio.TimeoutError:
                raise SystemExit(f"SSE watcher: seq {seq} not delivered within {args.max_latency}s "
                                 "(buffered by a proxy?)")
        await asyncio.sleep(args.pause)
    await ws.close()
    if sse:
        sse.close()
    out = {"rounds": args.rounds, "ws_max_ms": round(max(ws_lat) * 1000, 1)}
    if sse_lat:
        out["sse_max_ms"] = round(max(sse_lat) * 1000, 1)
    print(json.dumps(out), flush=True)
    return 0


async def drain(args) -> int:
    channel = f"tracking:{args.driver}"
    token = mint(args.secret, "buyer-drain", "buyer", [channel])
    ws = await ws_subscribe(args.base, token, channel)
    print("ready", flush=True)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), args.timeout)
    except websockets.ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd else None
        print(json.dumps({"close_code": code, "at": time.time()}), flush=True)
        return 0 if code == args.expect_code else 1
    except asyncio.TimeoutError:
        print(json.dumps({"close_code": None, "error": "no close within timeout"}), flush=True)
        return 1


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("track")
    t.add_argument("--base", required=True)
    t.add_argument("--secret", required=True)
    t.add_argument("--driver", default="d-deploy-1")
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--first-seq", type=int, default=int(time.time()))
    t.add_argument("--sse", action="store_true")
    t.add_argument("--max-latency", type=float, default=1.0)
    t.add_argument("--pause", type=float, default=0.1)
    d = sub.add_parser("drain")
    d.add_argument("--base", required=True)
    d.add_argument("--secret", required=True)
    d.add_argument("--driver", default="d-deploy-1")
    d.add_argument("--timeout", type=float, default=60)
    d.add_argument("--expect-code", type=int, default=4100)
    args = p.parse_args()
    return asyncio.run(track(args) if args.cmd == "track" else drain(args))


if __name__ == "__main__":
    sys.exit(main())
