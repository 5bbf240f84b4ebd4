// The live dashboard in a real browser (Debian's Chromium, headless, driven
// by playwright-core over the DevTools protocol). scripts/test.d/62-dashboard.sh
// starts the server and passes: WAYPOST_BASE, SERVICE_TOKEN, DRIVER_IDS and
// DRIVER_TOKENS (comma-separated, same order), BUYER_ID and BUYER_TOKEN (may
// watch tracking:<first driver>), SCREENSHOT (a path under .work/).
//
// Checked: the page's CSP holds (no violation, no failed request), drivers
// appear on the map where the projection puts them (positions through the
// page's read-only hook, colours in a PNG screenshot of the canvas), trails
// grow, watched drivers are marked, the sparklines get data, the user panel
// finds a buyer's WebSocket and its disconnect and revoke buttons close it
// with 4103 and 4003 (and the revoked token is refused afterwards).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { deflateSync, inflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env("WAYPOST_BASE");
const DRIVERS = env("DRIVER_IDS").split(",");
const DRIVER_TOKENS = env("DRIVER_TOKENS").split(",");
const BUYER = env("BUYER_ID");
// Three drivers a few km apart around Berlin (distinct x and y).
const START = [[52.52, 13.405], [52.50, 13.44], [52.535, 13.37]];

async function postFix(i, seq, lat, lon) {
  const res = await fetch(`${BASE}/v1/drivers/${DRIVERS[i]}/locations`, {
    method: "POST",
    headers: { authorization: `Bearer ${DRIVER_TOKENS[i]}`, "content-type": "application/json" },
    body: JSON.stringify({ device_id: "dev-1", fixes: [{ seq, ts: Date.now(), lat, lon }] }),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text);
}

// Minimal PNG reader (8-bit RGB/RGBA, not interlaced: what Chromium writes).
function decodePng(buf) {
  assert.equal(buf.readUInt32BE(0), 0x89504e47, "not a PNG");
  let off = 8, width = 0, height = 0, type = 0;
  const idat = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const kind = buf.toString("ascii", off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (kind === "IHDR") {
      width = data.readUInt32BE(0); height = data.readUInt32BE(4);
      assert.equal(data[8], 8, "bit depth"); type = data[9];
      assert.ok(type === 2 || type === 6, `colour type ${type}`);
      assert.equal(data[12], 0, "interlaced");
    } else if (kind === "IDAT") idat.push(data);
    off += 12 + len;
  }
  const bpp = type === 6 ? 4 : 3, stride = width * bpp;
  const raw = inflateSync(Buffer.concat(idat));
  const px = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? px[y * stride + x - bpp] : 0, b = y ? px[(y - 1) * stride + x] : 0;
      const c = x >= bpp && y ? px[(y - 1) * stride + x - bpp] : 0;
      let v = src[x];
      if (f === 1) v += a; else if (f === 2) v += b; else if (f === 3) v += (a + b) >> 1;
      else if (f === 4) { const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c); v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c; }
      px[y * stride + x] = v & 255;
    }
  }
  return { width, height, at: (x, y) => [...px.subarray(y * stride + x * bpp, y * stride + x * bpp + 3)] };
}
// A solid-colour 256x256 RGB PNG (a stand-in map tile).
function solidPng(rgb) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b) => { let c = 0xffffffff; for (const x of b) c = crcTable[(c ^ x) & 255] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
  const chunk = (kind, data) => {
    const head = Buffer.alloc(8); head.writeUInt32BE(data.length, 0); head.write(kind, 4, "ascii");
    const tail = Buffer.alloc(4); tail.writeUInt32BE(crc(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, tail]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(256, 0); ihdr.writeUInt32BE(256, 4); ihdr[8] = 8; ihdr[9] = 2;
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: 256 }, () => rgb).flat())]);
  const raw = Buffer.concat(Array.from({ length: 256 }, () => row));
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

function tileOf(lat, lon, z) {
  const [x, y] = mercator(lat, lon);
  return `${z}/${Math.floor(x * 2 ** z)}/${Math.floor(y * 2 ** z)}`;
}

const near = (a, b, tol = 12) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

function mercator(lat, lon) {
  const s = Math.sin(lat * Math.PI / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

test("dashboard: map, trails, sparklines, user lookup, disconnect and revoke", { timeout: 90_000 }, async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // A fresh temporary profile per launch; nothing phones home.
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, deviceScaleFactor: 1 });
    // Without a token the page is refused.
    const refused = await page.goto(`${BASE}/`);
    assert.equal(refused.status(), 401);

    // Script errors, CSP violations (reported on the console) and failed
    // requests of the page (Chromium may still ask for /favicon.ico on
    // behalf of the refused page above: not ours).
    const consoleErrors = [];
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    page.on("response", (r) => {
      if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico") consoleErrors.push(`${r.status()} ${r.url()}`);
    });
    page.on("dialog", (d) => d.accept());

    const resp = await page.goto(`${BASE}/?token=${env("SERVICE_TOKEN")}`);
    assert.equal(resp.status(), 200);
    const policy = resp.headers()["content-security-policy"] || "";
    assert.match(policy, /^default-src 'none'; script-src 'sha256-[^']+'; style-src 'sha256-[^']+'; connect-src 'self';/);
    await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 10_000 });
    assert.equal(new URL(page.url()).search, "", "the token left the address bar");
    assert.equal(await page.locator(`tr[data-driver="${DRIVERS[0]}"]`).count(), 0, "driver listed before it posted");

    // Drivers post: each shows up in the list and as a dot on the map.
    const t0 = Date.now();
    for (let i = 0; i < DRIVERS.length; i++) await postFix(i, 1, ...START[i]);
    await page.waitForFunction((n) => window.waypostDashboard.dots().length === n, DRIVERS.length, { timeout: 5_000 });
    const seenAfterMs = Date.now() - t0;
    const row = page.locator(`tr[data-driver="${DRIVERS[0]}"]`);
    assert.equal(await row.locator("td.seq").textContent(), "1");
    assert.match(await row.locator("td").nth(1).textContent(), /^52\.52000, 13\.40500$/);
    assert.equal(await page.locator("#drivers-online").textContent(), String(DRIVERS.length));

    // An active order of driver 1: its destination appears on the map and
    // in the order list.
    const ORDER = `o-dash-${process.pid}`, DEST = [52.505, 13.455];
    const ev = await fetch(`${BASE}/v1/orders/${ORDER}/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${env("SERVICE_TOKEN")}`, "content-type": "application/json" },
      body: JSON.stringify({ event_id: "e-1", status: "picked_up", driver_id: DRIVERS[1], destination: { lat: DEST[0], lon: DEST[1] } }),
    });
    assert.equal(ev.status, 202, await ev.text());
    // Driver 1 then drives towards it at ~15 m/s (k: its k-th move).
    const drive1 = (k) => postFix(1, 1 + k, START[1][0] + k * 1e-4, START[1][1] + k * 1e-4);
    await drive1(1);
    await page.locator(`#orders tr[data-order="${ORDER}"]`).waitFor({ timeout: 5_000 });
    await page.waitForFunction((o) => window.waypostDashboard.destinations().some((d) => d.order === o), ORDER, { timeout: 5_000 });

    // A watcher (a buyer's WebSocket from the page itself) on driver 0.
    await page.evaluate(([base, token, driver]) => new Promise((resolve, reject) => {
      const open = (name) => new Promise((res, rej) => {
        const ws = new WebSocket(base.replace(/^http/, "ws") + "/v1/ws?token=" + token);
        window[name] = ws;
        ws.closedWith = new Promise((done) => { ws.onclose = (e) => done(e.code); });
        ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", channel: "tracking:" + driver }));
        ws.onmessage = (e) => { if (JSON.parse(e.data).type === "subscribed") res(); };
        ws.onerror = () => rej(new Error("websocket failed"));
        setTimeout(() => rej(new Error("no subscribed frame")), 5000);
      });
      window.__openWatcher = open;
      open("__watcher").then(resolve, reject);
    }), [BASE, env("BUYER_TOKEN"), DRIVERS[0]]);

    // Driver 0 moves (a trail), the others post again; the watcher shows.
    for (let seq = 2; seq <= 6; seq++) {
      const reply = await postFix(0, seq, START[0][0] + seq * 0.002, START[0][1] + seq * 0.001);
      assert.equal(reply.watchers, 1);
      await drive1(seq);
      await new Promise((r) => setTimeout(r, 1100)); // one dashboard poll per fix
    }
    await page.waitForFunction((d) => {
      const dot = window.waypostDashboard.dots().find((x) => x.driver === d);
      return dot && dot.watchers === 1 && dot.trail >= 4;
    }, DRIVERS[0], { timeout: 5_000 });
    // The order got an ETA from driver 1's moves; the list shows it.
    await page.waitForFunction((o) => {
      const d = window.waypostDashboard.destinations().find((x) => x.order === o);
      return d && d.eta_s != null;
    }, ORDER, { timeout: 5_000 });
    assert.match(await page.locator(`#orders tr[data-order="${ORDER}"] td.eta`).textContent(), /^\d+(\.\d)? (s|min|h)$/);

    // Where the dots are: inside the canvas, and placed by the projection
    // (Web Mercator keeps the ratio of x and y distances).
    const dots = await page.evaluate(() => window.waypostDashboard.dots());
    const box = await page.locator("#map").boundingBox();
    const pos = (i) => dots.find((d) => d.driver === DRIVERS[i]);
    assert.equal(new Set(dots.map((d) => d.rgb.join())).size, dots.length, "distinct colours");
    for (const d of dots) {
      assert.ok(d.x > 0 && d.x < box.width && d.y > 0 && d.y < box.height, JSON.stringify(d));
    }
    const last0 = [START[0][0] + 6 * 0.002, START[0][1] + 6 * 0.001];
    const last1 = [START[1][0] + 6e-4, START[1][1] + 6e-4];
    const geo = [mercator(...last0), mercator(...last1), mercator(...START[2])];
    const [a, b, c] = [pos(0), pos(1), pos(2)];
    const ratio = (p, q) => (q.x - p.x) / (q.y - p.y);
    const geoRatio = (p, q) => (q[0] - p[0]) / (q[1] - p[1]);
    assert.ok(Math.abs(ratio(a, b) / geoRatio(geo[0], geo[1]) - 1) < 0.02, "projection of a-b");
    assert.ok(Math.abs(ratio(b, c) / geoRatio(geo[1], geo[2]) - 1) < 0.02, "projection of b-c");
    assert.ok(b.y > a.y && c.y < b.y && c.x < a.x && b.x > a.x, "north is up, east is right");
    const dest = (await page.evaluate(() => window.waypostDashboard.destinations())).find((d) => d.order === ORDER);
    assert.deepEqual(dest.rgb, b.rgb, "a destination has its driver's colour");
    assert.ok(Math.abs(ratio(b, dest) / geoRatio(geo[1], mercator(...DEST)) - 1) < 0.02, "projection of the destination");

    // The screenshot of the canvas shows each driver's colour at its dot,
    // a black ring around the watched one, and background elsewhere.
    const png = decodePng(await page.locator("#map").screenshot());
    assert.ok(Math.abs(png.width - box.width) <= 1, `${png.width} vs ${box.width}`);
    for (const d of dots) {
      const x = Math.round(d.x), y = Math.round(d.y);
      assert.ok(near(png.at(x, y), d.rgb), `${d.driver}: ${png.at(x, y)} at ${x},${y}, want ${d.rgb}`);
    }
    assert.ok(near(png.at(Math.round(dest.x), Math.round(dest.y)), dest.rgb), `destination ${png.at(Math.round(dest.x), Math.round(dest.y))}`);
    const ring = png.at(Math.round(a.x + 10), Math.round(a.y));
    assert.ok(ring.every((v) => v < 90), `ring pixel ${ring}`);
    const unwatched = png.at(Math.round(b.x + 10), Math.round(b.y));
    assert.ok(!unwatched.every((v) => v < 90), `no ring on an unwatched driver: ${unwatched}`);
    assert.ok(near(png.at(2, 2), [0xee, 0xf1, 0xf4], 3), `background ${png.at(2, 2)}`);
    let coloured = 0;
    for (let y = 0; y < png.height; y += 2) for (let x = 0; x < png.width; x += 2) {
      if (dots.some((d) => near(png.at(x, y), d.rgb, 20))) coloured++;
    }
    assert.ok(coloured > 30, `only ${coloured} sampled pixels in driver colours`);

    // Sparklines have data: fixes/s and deliveries/s above zero at some
    // point, a latency quantile, a connection count.
    for (let seq = 7; seq < 17; seq++) await postFix(0, seq, last0[0], last0[1]);
    await page.waitForFunction(() => {
      const s = window.waypostDashboard.series();
      return s.fixes.some((v) => v > 0) && s.deliveries.some((v) => v > 0)
        && s.p50.some((v) => v != null && v > 0) && s.p99.some((v) => v != null && v > 0)
        && s.connections.some((v) => v >= 1);
    }, null, { timeout: 5_000 });
    assert.notEqual(await page.locator("#v-p99").textContent(), "–");
    const spark = decodePng(await page.locator("#s-fixes").screenshot());
    let line = 0;
    for (let y = 0; y < spark.height; y++) for (let x = 0; x < spark.width; x++) {
      const [r, g, bl] = spark.at(x, y);
      if (bl > 150 && r < 120) line++;
    }
    assert.ok(line > 5, `fixes sparkline: ${line} line pixels`);

    // A vendor notification appears in the list (this process's stream).
    const n = await fetch(`${BASE}/v1/vendors/v-dash/notifications`, {
      method: "POST",
      headers: { authorization: `Bearer ${env("SERVICE_TOKEN")}`, "content-type": "application/json" },
      body: JSON.stringify({ event: "new-order", data: { order: "o-1" } }),
    });
    const nText = await n.text();
    assert.equal(n.status, 202, nText);
    const { id } = JSON.parse(nText);
    await page.locator(`#notifications li[data-id="${id}"]`).waitFor({ timeout: 5_000 });

    // User lookup: the buyer's WebSocket with its subscription.
    await page.fill("#user-id", BUYER);
    await page.click("#user-lookup");
    const connRow = page.locator('#user-conns tbody tr[data-transport="ws"]');
    await connRow.waitFor({ timeout: 5_000 });
    assert.equal(await page.locator("#user-conns tbody tr").count(), 1);
    assert.match(await connRow.locator("td").nth(3).textContent(), new RegExp(`tracking:${DRIVERS[0]}`));
    assert.match(await page.locator("#user-summary").textContent(), /^1 connection\(s\) on 1 of 1 process/);
    // The screenshot for the README / CI artifacts.
    await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });

    // Disconnect, reconnect allowed: 4103.
    await page.click("#disconnect-retry");
    assert.equal(await page.evaluate(() => window.__watcher.closedWith), 4103);
    await page.waitForFunction(() => /^Disconnected /.test(document.getElementById("user-msg").textContent), null, { timeout: 5_000 });

    // Disconnect without reconnect: 4003 (the token still works later).
    await page.evaluate((d) => window.__openWatcher("__second", d), DRIVERS[0]);
    await page.click("#disconnect-final");
    assert.equal(await page.evaluate(() => window.__second.closedWith), 4003);

    // Revoke: a new connection of the same token closes with 4003 and the
    // token is refused afterwards.
    await page.evaluate(() => window.__openWatcher("__third"));
    await page.click("#revoke");
    assert.equal(await page.evaluate(() => window.__third.closedWith), 4003);
    await page.waitForFunction(() => /^Revoked tokens of /.test(document.getElementById("user-msg").textContent), null, { timeout: 5_000 });
    const after = await fetch(`${BASE}/v1/drivers/${DRIVERS[0]}/location`, { headers: { authorization: `Bearer ${env("BUYER_TOKEN")}` } });
    assert.equal(after.status, 401);
    await page.waitForFunction(() => /tokens revoked until/.test(document.getElementById("user-summary").textContent), null, { timeout: 5_000 });
    assert.equal(await page.locator("#user-conns tbody tr").count(), 0);

    assert.deepEqual(consoleErrors, []);
    console.log(`# drivers on the map ${seenAfterMs} ms after their posts; ${coloured} sampled pixels in driver colours`);
  } finally {
    await browser.close();
  }
});

test("dashboard with --dashboard-tiles: tiles under the map, allowed by the CSP", { timeout: 60_000 }, async () => {
  const TILE = [200, 230, 201];
  const png = solidPng(TILE);
  const requested = new Set();
  const tiles = createServer((req, res) => {
    const m = /^\/(\d+)\/(\d+)\/(\d+)\.png$/.exec(req.url);
    if (!m) { res.writeHead(404).end(); return; }
    requested.add(`${m[1]}/${m[2]}/${m[3]}`);
    res.writeHead(200, { "content-type": "image/png", "cache-control": "no-store" }).end(png);
  });
  await new Promise((r) => tiles.listen(Number(env("TILE_SERVER_PORT")), "127.0.0.1", r));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
  });
  try {
    const base = env("TILES_BASE");
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 }, deviceScaleFactor: 1 });
    const errors = [];
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("pageerror", (e) => errors.push(String(e)));
    const resp = await page.goto(`${base}/?token=${env("SERVICE_TOKEN")}`);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()["content-security-policy"], new RegExp(`img-src 'self' data: http://127\\.0\\.0\\.1:${env("TILE_SERVER_PORT")};`));
    const at = [52.52, 13.405];
    const res = await fetch(`${base}/v1/drivers/${DRIVERS[0]}/locations`, {
      method: "POST",
      headers: { authorization: `Bearer ${DRIVER_TOKENS[0]}`, "content-type": "application/json" },
      body: JSON.stringify({ device_id: "dev-1", fixes: [{ seq: 1, ts: Date.now(), lat: at[0], lon: at[1] }] }),
    });
    assert.equal(res.status, 200);
    await page.waitForFunction(() => window.waypostDashboard.dots().length === 1, null, { timeout: 5_000 });
    // Every tile image loaded (none broken).
    await page.waitForFunction(() => {
      const imgs = [...document.querySelectorAll("#tiles img")];
      return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth === 256);
    }, null, { timeout: 5_000 });
    // The tile holding the driver, at the zoom the page picked, was asked for.
    const zs = new Set([...requested].map((k) => Number(k.split("/")[0])));
    assert.equal(zs.size, 1, [...requested].join(" "));
    const [z] = zs;
    assert.ok(z >= 10 && z <= 19, `zoom ${z}`);
    assert.ok(requested.has(tileOf(at[0], at[1], z)), `${tileOf(at[0], at[1], z)} not in ${[...requested].join(" ")}`);
    // Tiles under the canvas, the driver's dot on top.
    const [dot] = await page.evaluate(() => window.waypostDashboard.dots());
    const shot = decodePng(await page.locator("#map").screenshot());
    assert.ok(near(shot.at(3, 3), TILE, 3), `corner ${shot.at(3, 3)}`);
    assert.ok(near(shot.at(shot.width - 4, shot.height - 4), TILE, 3), "far corner");
    assert.ok(near(shot.at(Math.round(dot.x), Math.round(dot.y)), dot.rgb), "dot over the tiles");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    tiles.close();
  }
});
