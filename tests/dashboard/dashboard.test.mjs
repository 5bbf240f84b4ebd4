// The live dashboard in a real browser (Debian's Chromium, headless, driven
// by playwright-core). scripts/test.d/62-dashboard.sh starts the server and
// passes: WAYPOST_BASE, SERVICE_TOKEN, DRIVER_TOKEN, BUYER_TOKEN (may watch
// tracking:$DRIVER_ID), DRIVER_ID, SCREENSHOT (a path under .work/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const BASE = env("WAYPOST_BASE");
const DRIVER = env("DRIVER_ID");

async function postFix(seq, lat) {
  const res = await fetch(`${BASE}/v1/drivers/${DRIVER}/locations`, {
    method: "POST",
    headers: { authorization: `Bearer ${env("DRIVER_TOKEN")}`, "content-type": "application/json" },
    body: JSON.stringify({ device_id: "dev-1", fixes: [{ seq, ts: Date.now(), lat, lon: 13.405 }] }),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text);
}

test("dashboard shows drivers, watchers, rates and notifications live", { timeout: 60_000 }, async () => {
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
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    // Without a token the page is refused.
    const refused = await page.goto(`${BASE}/`);
    assert.equal(refused.status(), 401);

    // Script errors and failed requests of the page (Chromium may still ask
    // for /favicon.ico on behalf of the refused page above: not ours).
    const consoleErrors = [];
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(m.text());
    });
    page.on("pageerror", (e) => consoleErrors.push(String(e)));
    page.on("response", (r) => {
      if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico") {
        consoleErrors.push(`${r.status()} ${r.url()}`);
      }
    });

    const resp = await page.goto(`${BASE}/?token=${env("SERVICE_TOKEN")}`);
    assert.equal(resp.status(), 200);
    await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 10_000 });
    assert.equal(await page.locator(`tr[data-driver="${DRIVER}"]`).count(), 0, "driver listed before it posted");

    // A driver posts: its row appears with that position, over SSE.
    const t0 = Date.now();
    await postFix(1, 52.52);
    const row = page.locator(`tr[data-driver="${DRIVER}"]`);
    await row.waitFor({ timeout: 5_000 });
    const seenAfterMs = Date.now() - t0;
    assert.equal(await row.locator("td.seq").textContent(), "1");
    assert.match(await row.locator("td").nth(1).textContent(), /^52\.52000, 13\.40500$/);
    assert.equal(await row.locator("td.watchers").textContent(), "0");
    assert.equal(await page.locator("#drivers-online").textContent(), "1");

    // A watcher connects (a WebSocket from the page itself) and the next
    // post shows one watcher and the new position.
    await page.evaluate(([base, token, driver]) => new Promise((resolve, reject) => {
      const ws = new WebSocket(base.replace(/^http/, "ws") + "/v1/ws?token=" + token);
      window.__watcher = ws;
      ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", channel: "tracking:" + driver }));
      ws.onmessage = (e) => { if (JSON.parse(e.data).type === "subscribed") resolve(); };
      ws.onerror = () => reject(new Error("websocket failed"));
      setTimeout(() => reject(new Error("no subscribed frame")), 5000);
    }), [BASE, env("BUYER_TOKEN"), DRIVER]);
    const reply = await postFix(2, 52.53);
    assert.equal(reply.watchers, 1);
    await page.waitForFunction((d) => {
      const tr = document.querySelector(`tr[data-driver="${d}"]`);
      return tr && tr.querySelector("td.seq").textContent === "2" && tr.querySelector("td.watchers").textContent === "1";
    }, DRIVER, { timeout: 5_000 });
    await page.waitForFunction(() => Number(document.getElementById("conn-ws").textContent) >= 1, null, { timeout: 5_000 });
    await page.waitForFunction(() => Number(document.getElementById("subscriptions").textContent) >= 1, null, { timeout: 5_000 });

    // Message rates move: a burst of posts shows a non-zero fixes/s.
    for (let seq = 3; seq < 13; seq++) await postFix(seq, 52.53 + seq * 1e-4);
    await page.waitForFunction(() => parseFloat(document.getElementById("rate-fixes").textContent) > 0, null, { timeout: 5_000 });
    await page.waitForFunction(() => parseFloat(document.getElementById("rate-deliveries").textContent) > 0, null, { timeout: 5_000 });

    // A vendor notification appears in the list.
    const n = await fetch(`${BASE}/v1/vendors/v-dash/notifications`, {
      method: "POST",
      headers: { authorization: `Bearer ${env("SERVICE_TOKEN")}`, "content-type": "application/json" },
      body: JSON.stringify({ event: "new-order", data: { order: "o-1" } }),
    });
    const nText = await n.text();
    assert.equal(n.status, 202, nText);
    const { id } = JSON.parse(nText);
    const item = page.locator(`#notifications li[data-id="${id}"]`);
    await item.waitFor({ timeout: 5_000 });
    assert.match(await item.textContent(), /v-dash\s+new-order/);

    await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
    assert.deepEqual(consoleErrors, []);
    console.log(`# driver row appeared ${seenAfterMs} ms after the post`);
  } finally {
    await browser.close();
  }
});
