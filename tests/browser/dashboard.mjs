// The live dashboard in headless Chromium during a rush: the page comes
// up, its numbers update at least once a second, they agree with the API
// (GET /v1/dashboard), and a screenshot is saved.
//
// usage: node dashboard.mjs BASE_URL ADMIN_TOKEN SCREENSHOT.png
// Prints one JSON line of measurements; exits non-zero on any failure.
import { chromium } from 'playwright-core';

const [base, token, shot] = process.argv.slice(2);
if (!base || !token || !shot) {
  console.error('usage: node dashboard.mjs BASE_URL ADMIN_TOKEN SCREENSHOT.png');
  process.exit(2);
}
const fail = (msg) => { console.error(`dashboard test: ${msg}`); process.exit(1); };
const num = (text) => Number(String(text).replace(/[^0-9.]/g, ''));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1600 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  await page.goto(`${base}/#token=${token}`);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="conn-status"]')?.textContent.trim() === 'live',
    null, { timeout: 15000 }).catch(() => fail('the page never went live'));
  if (page.url().includes(token)) fail('the token stayed in the address bar');

  // Updates: the snapshot count grows and the snapshot time moves, at
  // least once a second.
  const read = () => page.evaluate(() => ({
    snapshots: Number(document.body.dataset.snapshots || 0),
    nowMs: Number(document.querySelector('[data-testid="updated-at"]')?.dataset.nowMs || 0),
    orders: document.querySelector('[data-testid="orders-total"]')?.textContent,
    paid: document.querySelector('[data-testid="paid-total"]')?.textContent,
    gmv: document.querySelector('[data-testid="gmv"]')?.textContent,
    wall: Date.now(),
  }));
  const first = await read();
  const lags = [];
  let last = first;
  let ordersChanged = false;
  for (let i = 0; i < 12; i++) {
    await page.waitForTimeout(500);
    const now = await read();
    if (now.nowMs > 0) lags.push(now.wall - now.nowMs);
    if (now.orders !== last.orders) ordersChanged = true;
    last = now;
  }
  const seconds = (last.wall - first.wall) / 1000;
  const rate = (last.snapshots - first.snapshots) / seconds;
  if (rate < 1) fail(`only ${rate.toFixed(2)} snapshots/s rendered`);
  if (!ordersChanged) fail(`the orders total never changed during the rush (${last.orders})`);

  // The page agrees with the API: its figures lie between what the API said
  // just before and just after reading them.
  const api = async () => {
    const r = await fetch(`${base}/v1/dashboard`, { headers: { authorization: `Bearer ${token}` } });
    if (r.status !== 200) fail(`GET /v1/dashboard answered ${r.status}`);
    return r.json();
  };
  let agreed = false;
  for (let i = 0; i < 10 && !agreed; i++) {
    const before = await api();
    await page.waitForTimeout(1200); // one more snapshot reaches the page
    const shown = await read();
    const after = await api();
    const within = (v, a, b) => v >= a && v <= b;
    agreed = within(num(shown.orders), before.orders_total, after.orders_total)
      && within(num(shown.paid), before.paid_total, after.paid_total)
      && within(Math.round(num(shown.gmv) * 100), before.gmv_fen_total, after.gmv_fen_total);
    if (!agreed && i === 9) {
      fail(`page ${JSON.stringify(shown)} vs API before ${before.orders_total}/${before.paid_total}/${before.gmv_fen_total} after ${after.orders_total}/${after.paid_total}/${after.gmv_fen_total}`);
    }
  }
  // Readable on a phone too.
  await page.screenshot({ path: shot, fullPage: true });
  await page.setViewportSize({ width: 390, height: 1400 });
  await page.waitForTimeout(600);
  await page.screenshot({ path: shot.replace(/\.png$/, '-phone.png'), fullPage: true });
  if (errors.length) fail(`errors in the page: ${errors.join(' | ')}`);
  lags.sort((a, b) => a - b);
  console.log(JSON.stringify({
    snapshots_per_s: Number(rate.toFixed(2)),
    lag_ms_median: lags[Math.floor(lags.length / 2)],
    lag_ms_max: lags[lags.length - 1],
    orders_shown: last.orders,
  }));
} finally {
  await browser.close();
}
