// A browser-style EventSource (the `eventsource` package, WHATWG semantics)
// on a vendor's notification stream, through a TCP proxy that this script
// cuts twice. The client reconnects by itself with Last-Event-ID; the test
// passes when every posted notification arrived exactly once, in order.
//
//   node reconnect.mjs <server base url> <vendor id> <vendor token> <service token>
//
// Bounded: 40 notifications, 60 s at most. Loopback only.
import net from "node:net";
import { EventSource } from "eventsource";

const [base, vendor, vendorToken, serviceToken] = process.argv.slice(2);
if (!serviceToken) {
  console.error("usage: node reconnect.mjs <base url> <vendor> <vendor token> <service token>");
  process.exit(2);
}
const TOTAL = 40;
const CUT_AT = [10, 25];
const target = new URL(base);
if (!["127.0.0.1", "localhost", "[::1]"].includes(target.hostname)) {
  console.error("refusing a non-loopback target");
  process.exit(2);
}

// The proxy: forwards bytes, and can drop every open connection at once.
const sockets = new Set();
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(target.port), target.hostname);
  for (const s of [client, upstream]) {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  }
  client.pipe(upstream);
  upstream.pipe(client);
});
await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
const proxyUrl = `http://127.0.0.1:${proxy.address().port}`;
let cuts = 0;
function cut() {
  cuts += 1;
  for (const s of sockets) s.destroy();
}

async function post(i) {
  const resp = await fetch(`${base}/v1/vendors/${vendor}/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${serviceToken}`, "content-type": "application/json" },
    body: JSON.stringify({ event: "new-order", data: { order: `o-${i}`, i } }),
  });
  if (resp.status !== 202) throw new Error(`post ${i}: ${resp.status} ${await resp.text()}`);
  return (await resp.json()).id;
}

const received = [];
const ids = [];
let opens = 0;
const es = new EventSource(
  `${proxyUrl}/v1/vendors/${vendor}/notifications/stream?token=${encodeURIComponent(vendorToken)}`,
);
es.addEventListener("open", () => {
  opens += 1;
});
es.addEventListener("new-order", (ev) => {
  received.push(JSON.parse(ev.data).i);
  ids.push(ev.lastEventId);
});
es.addEventListener("error", () => {});

function until(cond, ms) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error("timed out"));
      setTimeout(tick, 20);
    };
    tick();
  });
}

let failure = null;
const deadline = setTimeout(() => {
  failure = "took longer than 60 s";
  finish();
}, 60_000);

function finish() {
  clearTimeout(deadline);
  es.close();
  cut();
  proxy.close();
  const expected = Array.from({ length: TOTAL }, (_, k) => k + 1);
  const exact = JSON.stringify(received) === JSON.stringify(expected);
  const okIds = ids.every((id, k) => k === 0 || Number(id) > Number(ids[k - 1]));
  const checks = [
    ["every notification exactly once, in order", exact && !failure],
    ["ids strictly increase", okIds],
    [`reconnected after each cut (opens=${opens}, cuts=${cuts})`, opens >= CUT_AT.length + 1],
  ];
  let passed = 0;
  for (const [name, ok] of checks) {
    console.log(`${ok ? "ok  " : "FAIL"} ${name}`);
    if (ok) passed += 1;
  }
  if (!exact) console.log(`received ${received.length}: ${JSON.stringify(received)}`);
  if (failure) console.log(`error: ${failure}`);
  console.log(`${passed} passed, ${checks.length - passed} failed`);
  process.exit(passed === checks.length ? 0 : 1);
}

try {
  await until(() => opens >= 1, 10_000);
  for (let i = 1; i <= TOTAL; i++) {
    await post(i);
    if (CUT_AT.includes(i)) {
      // Cut once the client saw what was posted so far, then post more
      // while it is away (its `retry` is 2 s): those come from history.
      await until(() => received.length >= i, 10_000);
      cut();
    }
    await new Promise((r) => setTimeout(r, 30));
  }
  await until(() => received.length >= TOTAL, 20_000);
  // Linger a little so a duplicate would show up.
  await new Promise((r) => setTimeout(r, 300));
} catch (e) {
  failure = String(e);
}
finish();
