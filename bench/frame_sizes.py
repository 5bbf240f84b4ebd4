#!/usr/bin/env python3
"""Bytes per delivered frame, JSON vs MessagePack (vs per-message deflate
without context takeover) vs lean (`waypost.v1.lean`: location frames with
e7 integer coordinates, whole floats as integers, and as deltas against the
previous frame), for location frames built from a trace and for typical
chat frames (lean = MessagePack for those). The MessagePack encoder mirrors what the server sends
(rmp-serde via serde-transcode from the JSON text: smallest int forms,
float 64 for every non-integer, str/map/array with the shortest headers);
`cargo test -p waypost-protocol msgpack` checks the Rust side; the lean
encoder mirrors `waypost_protocol::lean::encode` (its documented example is
checked below against the sizes the Rust encoder produces).

    python3 bench/frame_sizes.py /work/shared/traces/bike-berkelland-1hz.csv
"""
import csv
import json
import struct
import sys
import zlib


def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        for lo, hi, tag, fmt in [(0, 0xFF, 0xCC, ">B"), (0, 0xFFFF, 0xCD, ">H"),
                                 (0, 0xFFFFFFFF, 0xCE, ">I"), (0, 2**64 - 1, 0xCF, ">Q")]:
            if v >= 0 and v <= hi:
                return bytes([tag]) + struct.pack(fmt, v)
        for lo, tag, fmt in [(-128, 0xD0, ">b"), (-32768, 0xD1, ">h"),
                             (-2**31, 0xD2, ">i"), (-2**63, 0xD3, ">q")]:
            if v >= lo:
                return bytes([tag]) + struct.pack(fmt, v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 256:
            return b"\xd9" + bytes([n]) + b
        return b"\xda" + struct.pack(">H", n) + b
    if isinstance(v, list):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


def ws(n):
    """Server-to-client WebSocket frame bytes for an n-byte payload."""
    return n + (2 if n <= 125 else 4 if n < 65536 else 10)


def deflate(b):
    """permessage-deflate, no context takeover: raw deflate of the frame
    alone, minus the 4-byte tail RFC 7692 strips."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    z = c.compress(b) + c.flush(zlib.Z_SYNC_FLUSH)
    return len(z) - 4


def num(s):
    s = s.strip()
    if not s:
        return None
    f = float(s)
    return f


def location_frames(path, driver="d-7f3a9c21"):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows, 1):
        fix = {"seq": i, "ts": int(r["ts_ms"]), "lat": float(r["lat"]), "lon": float(r["lon"])}
        for key, name in [("accuracy_m", "accuracy_m"), ("speed_mps", "speed_mps"), ("alt_m", "altitude_m")]:
            v = num(r.get(key, ""))
            if v is not None:
                fix[name] = v
        yield {"type": "location", "channel": f"tracking:{driver}", "driver_id": driver, "fix": fix}


def chat_frames():
    base = {"type": "message", "room": "order-48213", "seq": 17,
            "id": "6917ea16718b4e3ea1277b441001e651", "from": "courier-5512",
            "client_id": "0b8d2f6e-3c41-4a7e-9d52-61f0c1a2b3c4", "ts": 1796645371774}
    yield dict(base, body="On my way, 5 min")
    yield dict(base, body="I'm at the door but nobody answers. Should I leave it with the concierge downstairs?")
    yield dict(base, body="", attachments=[{"url": "https://cdn.example.com/u/6917ea16/photo.jpg",
                                            "mime": "image/jpeg", "size": 183422, "width": 1280, "height": 960}])
    yield {"type": "receipt", "room": "order-48213", "user": "buyer-8841", "kind": "read", "seq": 17}
    yield {"type": "typing", "room": "order-48213", "user": "courier-5512"}


# Payload sizes of the documented lean example as the Rust encoder writes
# them (protocol/src/lean.rs, `the_documented_example`).
LEAN_FULL_BYTES = 165
LEAN_DELTA_BYTES = 120


def whole(v):
    """A float whose value is whole as an integer (lean)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def lean(frame, base=None):
    """The lean form of a location frame, a delta when `base` (the previous
    location frame on the channel) comes before it."""
    fix = frame["fix"]
    if base is not None and not base["fix"]["seq"] < fix["seq"]:
        base = None
    out = {"type": frame["type"], "channel": frame["channel"]}
    if base is not None:
        out["base"] = base["fix"]["seq"]
    for k, v in frame.items():
        if k in ("type", "channel", "fix") or (base is not None and base.get(k) == v):
            continue
        out[k] = whole(v)
    if base is not None:
        for k in base:
            if k not in ("type", "channel", "fix") and k not in frame:
                out[k] = None
    lf = {"seq": fix["seq"], "ts": whole(fix["ts"]),
          "lat_e7": round(fix["lat"] * 1e7), "lon_e7": round(fix["lon"] * 1e7)}
    for k, v in fix.items():
        if k in ("seq", "ts", "lat", "lon") or (base is not None and base["fix"].get(k) == v):
            continue
        lf[k] = whole(v)
    if base is not None:
        for k in base["fix"]:
            if k not in ("seq", "ts", "lat", "lon") and k not in fix:
                lf[k] = None
    out["fix"] = lf
    return out


def lean_sizes(frames):
    """Mean bytes per frame: every frame full lean, and every frame a delta
    against the previous one (the first full)."""
    n = tot_full = tot_delta = 0
    prev = None
    for fr in frames:
        n += 1
        tot_full += ws(len(mp(lean(fr))))
        tot_delta += ws(len(mp(lean(fr, prev))))
        prev = fr
    return n, tot_full, tot_delta


def self_check():
    """The example of docs/API-EXTENSIONS.md: the Rust encoder writes 165
    bytes full and 120 as a delta (`the_documented_example` test)."""
    a = {"type": "location", "channel": "tracking:d-1", "driver_id": "d-1", "fix": {
        "seq": 41, "ts": 1796645371772, "lat": 52.0973124, "lon": 6.6416648, "accuracy_m": 4.5,
        "speed_mps": 8.0, "heading_deg": 271.5, "battery": 0.5}}
    b = {"type": "location", "channel": "tracking:d-1", "driver_id": "d-1", "fix": {
        "seq": 42, "ts": 1796645372772, "lat": 52.0973901, "lon": 6.6417002, "accuracy_m": 4.5,
        "speed_mps": 7.25, "battery": 0.5}}
    got = (len(mp(lean(a))), len(mp(lean(b, a))))
    assert got == (LEAN_FULL_BYTES, LEAN_DELTA_BYTES), got


def sizes(frames):
    n = tot_j = tot_m = tot_jd = tot_md = 0
    for fr in frames:
        j = json.dumps(fr, separators=(",", ":"), ensure_ascii=False).encode()
        m = mp(fr)
        n += 1
        tot_j += ws(len(j))
        tot_m += ws(len(m))
        tot_jd += ws(deflate(j))
        tot_md += ws(deflate(m))
    return n, tot_j, tot_m, tot_jd, tot_md


def main():
    trace = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/traces/bike-berkelland-1hz.csv"
    out = {}
    n, j, m, jd, md = sizes(location_frames(trace))
    self_check()
    _, lf, ld = lean_sizes(location_frames(trace))
    out["location"] = {"frames": n, "json": round(j / n, 1), "msgpack": round(m / n, 1),
                       "json_deflate": round(jd / n, 1), "msgpack_deflate": round(md / n, 1),
                       "lean_full": round(lf / n, 1), "lean_delta": round(ld / n, 1)}
    for name, fr in zip(["chat_short", "chat_long", "chat_attachment", "receipt", "typing"], chat_frames()):
        _, j, m, jd, md = sizes([fr])
        out[name] = {"json": j, "msgpack": m, "json_deflate": jd, "msgpack_deflate": md}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
