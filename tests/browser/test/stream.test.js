// Event streams in headless Chromium: a page with a plain `new EventSource(url)` and no library
// (page/stream.html, page/js/stream.js) follows an order's private channel through a stream URL
// signed by the "Laravel app" (support/app-server.js), against the real reprise binary. The steps:
//
//   1. statuses published through the HTTP API appear as they happen;
//   2. the server is stopped (SIGTERM: the stream ends) and started again on the same data
//      directory, and three statuses are published while the page is away: the browser reconnects
//      by itself, sends its own Last-Event-ID, and the page shows each of them once, in order;
//   3. the same across a network cut (no end of stream, just a dropped connection).
//
// The browser's connections go through the gate (support/gate.js), which holds its reconnect while
// the test publishes: a fresh stream would start at the head and never show those statuses, so
// seeing them proves the resume by Last-Event-ID. Output in output/: stream.png (the final page),
// stream-restarted.png (after step 2), reprise.log, and stream-failure.png when a wait times out.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import PusherServer from 'pusher';
import { chromium } from 'playwright-core';

import { startAppServer } from '../support/app-server.js';
import { startGate } from '../support/gate.js';
import { APP, OUTPUT_DIR, createReprise } from '../support/reprise.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const CHANNEL = 'private-orders.1';
/** EventSource reconnects after the stream's `retry` (1 to 3 s), then the resume. */
const PAGE_WAIT_MS = 15_000;

let reprise;
let gate;
let app;
let browser;
let page;
let sdk;
/** Every status the backend saved and broadcast, in order. */
const published = [];
const pageErrors = [];

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run tests/browser/setup.sh (or set CHROMIUM_PATH)`);
  mkdirSync(OUTPUT_DIR, { recursive: true });
  reprise = await createReprise();
  await reprise.start();
  gate = await startGate(reprise.port);
  sdk = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: reprise.host, port: String(reprise.port), useTLS: false });
  // The page is served by the app; its EventSource goes through the gate to Reprise (another origin).
  app = await startAppServer({ app: APP, wsPort: gate.port, order: async () => ({}) });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'] });
  page = await browser.newPage({ viewport: { width: 720, height: 760 } });
  page.on('pageerror', (error) => pageErrors.push(error.message));
});

after(async () => {
  await browser?.close();
  await app?.close();
  await gate?.close();
  await reprise?.dispose();
});

async function publish(status, label) {
  published.push(status);
  const response = await sdk.trigger(CHANNEL, 'status', { order_id: 1, status, label, at: new Date().toISOString() });
  assert.equal(response.status, 200);
}

async function shown(count) {
  try {
    await page.waitForFunction((n) => window.received.length >= n, count, { timeout: PAGE_WAIT_MS });
  } catch (error) {
    await page.screenshot({ path: join(OUTPUT_DIR, 'stream-failure.png'), fullPage: true }).catch(() => {});
    const received = await page.evaluate(() => window.received).catch(() => 'unavailable');
    throw new Error(`timed out waiting for ${count} statuses; the page has ${JSON.stringify(received)} (${error.message})`);
  }
  return page.evaluate(() => window.received);
}

async function reconnectHeldAtGate() {
  const deadline = Date.now() + PAGE_WAIT_MS;
  while (gate.held() === 0) {
    if (Date.now() > deadline) throw new Error('the browser never tried to reconnect');
    await new Promise((done) => setTimeout(done, 20));
  }
}

/** Every status once, in publish order, with ids in order. */
function assertExactlyOnceInOrder(received) {
  assert.deepEqual(received.map((entry) => entry.status), published);
  const ids = received.map((entry) => entry.id);
  assert.equal(new Set(ids).size, ids.length, 'no status twice');
  assert.deepEqual([...ids].sort(), ids, 'ids (ULIDs) in order');
}

test('a plain EventSource page resumes an order across a restart and a network cut', async (t) => {
  await t.test('1. statuses appear live', async () => {
    await page.goto(`${app.url}/stream`);
    await page.waitForFunction(() => window.opens === 1, null, { timeout: PAGE_WAIT_MS });
    await publish('placed', 'Order placed');
    await publish('paid', 'Payment received');
    assertExactlyOnceInOrder(await shown(2));
  });

  await t.test('2. a server restart: the browser resumes by its own Last-Event-ID', async () => {
    gate.hold();
    await reprise.stop(); // the stream ends; EventSource reconnects after `retry`
    await reconnectHeldAtGate();
    await reprise.start();
    await publish('packed', 'Packed');
    await publish('shipped', 'Handed to the carrier');
    await publish('in_transit', 'In transit');
    gate.release();
    const received = await shown(5);
    assertExactlyOnceInOrder(received);
    // Each event's lastEventId is the stream's composite cursor, not the event's ULID.
    assert.ok(received.every((entry) => entry.lastEventId.startsWith('A')), JSON.stringify(received));
    assert.equal(await page.evaluate(() => window.opens), 2);
    await page.screenshot({ path: join(OUTPUT_DIR, 'stream-restarted.png'), fullPage: true });
  });

  await t.test('3. a network cut: the same, from a dropped connection', async () => {
    gate.cut();
    await reconnectHeldAtGate();
    await publish('at_depot', 'At the local depot');
    await publish('out_for_delivery', 'Out for delivery');
    gate.release();
    assertExactlyOnceInOrder(await shown(7));
    await publish('delivered', 'Delivered');
    assertExactlyOnceInOrder(await shown(8));
    assert.equal(await page.evaluate(() => window.opens), 3);
    assert.equal(await page.textContent('#connection'), 'live (reconnected 2×)');
    assert.equal(await page.isHidden('#notice'), true, 'nothing was reported lost');
    await page.screenshot({ path: join(OUTPUT_DIR, 'stream.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);
  });
});
