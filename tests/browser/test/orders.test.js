// An unmodified Laravel Echo + pusher-js page in headless Chromium, with api/js/reprise-replay.js
// added, against the real reprise binary. The page shows an order's status timeline, fed by
// Echo.private('orders.1').listen('.status'). The steps, in order:
//
//   1. statuses published through the HTTP API appear as they happen;
//   2. the server is stopped (SIGTERM: sockets closed with 4200) and started again on the same
//      data directory; three statuses published while the page is away are replayed into the
//      timeline on reconnect, in order, once each;
//   3. during a network cut, two more statuses are published and then compacted away: the page's
//      not-recovered hook refetches the order;
//   4. the page is reloaded while two statuses are published: it resumes from the cursor it kept
//      in sessionStorage, then carries on live.
//
// The browser's connections go through a gate (support/gate.js) that holds reconnects while the
// test publishes, so "published while offline" never races the browser's reconnect.
// Output in output/: orders.png (the final page), orders-replayed.png and orders-refetched.png
// (after steps 2 and 3), reprise.log, and failure.png when a wait times out.

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
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];
const CHANNEL = 'private-orders.1';
/** How long the page may take to show something (a reconnect after a cut waits 1 s in pusher-js). */
const PAGE_WAIT_MS = 10_000;

const LABELS = {
  placed: 'Order placed',
  paid: 'Payment received',
  packed: 'Packed',
  shipped: 'Handed to the carrier',
  in_transit: 'In transit',
  at_depot: 'At the local depot',
  out_for_delivery: 'Out for delivery',
  delivered: 'Delivered',
  signed_for: 'Signed for by J. Doe',
  reviewed: 'Review left',
};

let reprise;
let gate;
let app;
let browser;
let page;
let sdk;
/** The "orders" table: every status the backend saved, in order. */
const database = [];
const consoleLines = [];

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run tests/browser/setup.sh (or set CHROMIUM_PATH)`);
  mkdirSync(OUTPUT_DIR, { recursive: true });
  reprise = await createReprise();
  await reprise.start();
  gate = await startGate(reprise.port);
  sdk = new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: reprise.host,
    port: String(reprise.port),
    useTLS: false,
    timeout: 5_000,
  });
  app = await startAppServer({
    app: APP,
    wsPort: gate.port,
    // The head first, then the rows: every event up to the head is in the rows read after it.
    order: async () => {
      const head = await channelHead();
      return { id: 1, statuses: database.map((row) => ({ ...row })), head };
    },
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  page = await browser.newPage({ viewport: { width: 720, height: 820 } });
  page.on('console', (message) => consoleLines.push(`[${message.type()}] ${message.text()}`));
  page.on('pageerror', (error) => consoleLines.push(`[pageerror] ${error.message}`));
});

after(async () => {
  await browser?.close();
  await app?.close();
  await gate?.close();
  await reprise?.dispose();
});

/** What the backend does on a status change: save it, then broadcast (ShouldBroadcast). */
async function saveAndBroadcast(status) {
  const row = { status, label: LABELS[status], at: new Date().toISOString() };
  database.push(row);
  const response = await sdk.trigger(CHANNEL, 'status', { order_id: 1, ...row, socket: null });
  assert.equal(response.status, 200);
}

/** The channel's last event id, from Reprise's history API (null for an empty channel). */
async function channelHead() {
  const response = await sdk.get({ path: `/channels/${CHANNEL}/events`, params: { limit: 1 } });
  return (await response.json()).head;
}

/** The page's timeline as [status, source] pairs. */
function timeline() {
  return page.$$eval('#timeline li', (items) => items.map((li) => [li.dataset.status, li.dataset.source]));
}

function stats() {
  return page.evaluate((channel) => window.replay.stats(channel), CHANNEL);
}

/** Waits for `predicate` in the page; on time-out, fails with what the page shows and logged. */
async function pageWaitsFor(what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: PAGE_WAIT_MS });
  } catch (error) {
    await page.screenshot({ path: join(OUTPUT_DIR, 'failure.png'), fullPage: true }).catch(() => {});
    const shown = await timeline().catch(() => 'unavailable');
    throw new Error(
      `timed out waiting for ${what}\ntimeline: ${JSON.stringify(shown)}\nconsole:\n${consoleLines.join('\n')}\n(${error.message})`,
    );
  }
}

function timelineHas(count) {
  return pageWaitsFor(`${count} timeline entries`, (n) => document.querySelectorAll('#timeline li').length >= n, count);
}

/** Waits until the browser's reconnect is waiting at the gate (so the page is surely offline). */
async function browserHeldAtGate() {
  const deadline = Date.now() + PAGE_WAIT_MS;
  while (gate.held() === 0) {
    if (Date.now() > deadline) throw new Error('the browser never tried to reconnect');
    await new Promise((done) => setTimeout(done, 20));
  }
}

test('an Echo order page resumes its timeline across a restart, a compaction and a reload', async (t) => {
  await t.test('1. statuses published through the HTTP API appear live', async () => {
    await saveAndBroadcast('placed'); // before the page is opened: it comes with the page
    await page.goto(app.url);
    await pageWaitsFor('the page to start', () => document.body.dataset.ready === 'true');
    // The page resumed from the head it was rendered with: nothing to replay, nothing lost.
    await pageWaitsFor('the subscription', (channel) => window.replay.stats(channel).recovered === 1, CHANNEL);
    await saveAndBroadcast('paid');
    await timelineHas(2);
    assert.deepEqual(await timeline(), [
      ['placed', 'server'],
      ['paid', 'live'],
    ]);
  });

  await t.test('2. after a server restart, what was missed is replayed in order, once', async () => {
    gate.hold();
    await reprise.stop(); // closes the page's socket with 4200: pusher-js reconnects at once
    await browserHeldAtGate();
    await reprise.start();
    for (const status of ['packed', 'shipped', 'in_transit']) await saveAndBroadcast(status);
    gate.release();
    await timelineHas(5);
    await pageWaitsFor('the connection', () => document.querySelector('#connection').dataset.state === 'connected');
    assert.deepEqual(await timeline(), [
      ['placed', 'server'],
      ['paid', 'live'],
      ['packed', 'replayed'],
      ['shipped', 'replayed'],
      ['in_transit', 'replayed'],
    ]);
    assert.deepEqual(await stats(), { resumes: 2, recovered: 2, notRecovered: 0, replayed: 3, duplicatesDropped: 0 });
    assert.equal(await page.textContent('#notice'), 'Back online: 3 missed updates replayed.');
    await page.screenshot({ path: join(OUTPUT_DIR, 'orders-replayed.png'), fullPage: true });
  });

  await t.test('3. when the missed events were compacted away, the page refetches the order', async () => {
    gate.cut(); // a network failure: no close frame; pusher-js retries after 1 s
    await browserHeldAtGate();
    for (const status of ['at_depot', 'out_for_delivery']) await saveAndBroadcast(status);
    const compacted = await sdk.post({ path: '/compact', body: { channel: CHANNEL, keep_last: 0 } });
    assert.equal((await compacted.json()).removed, 7);
    gate.release();
    await pageWaitsFor('the refetch hook', () => document.querySelector('#refetched').dataset.count === '1');
    const expected = database.map((row) => [row.status, 'server']);
    assert.equal(expected.length, 7);
    assert.deepEqual(await timeline(), expected);
    assert.deepEqual(await stats(), { resumes: 3, recovered: 2, notRecovered: 1, replayed: 3, duplicatesDropped: 0 });
    assert.match(await page.textContent('#notice'), /reloaded from the server \(7 updates\)/);
    await page.screenshot({ path: join(OUTPUT_DIR, 'orders-refetched.png'), fullPage: true });
  });

  await t.test('4. after a reload, the page resumes from the cursor it kept in sessionStorage', async () => {
    gate.hold();
    await page.reload();
    await pageWaitsFor('the reloaded page to start', () => document.body.dataset.ready === 'true');
    assert.equal((await timeline()).length, 7, 'the timeline is restored from sessionStorage');
    for (const status of ['delivered', 'signed_for']) await saveAndBroadcast(status);
    gate.release();
    await timelineHas(9);
    await saveAndBroadcast('reviewed');
    await timelineHas(10);
    const shown = await timeline();
    assert.deepEqual(
      shown.map(([status]) => status),
      database.map((row) => row.status),
    );
    assert.deepEqual(shown.slice(7), [
      ['delivered', 'replayed'],
      ['signed_for', 'replayed'],
      ['reviewed', 'live'],
    ]);
    assert.deepEqual(await page.evaluate(() => window.received), [
      { status: 'delivered', source: 'replayed' },
      { status: 'signed_for', source: 'replayed' },
      { status: 'reviewed', source: 'live' },
    ]);
    assert.deepEqual(await stats(), { resumes: 1, recovered: 1, notRecovered: 0, replayed: 2, duplicatesDropped: 0 });
    await page.screenshot({ path: join(OUTPUT_DIR, 'orders.png'), fullPage: true });
    assert.deepEqual(consoleLines.filter((line) => line.startsWith('[pageerror]') || line.startsWith('[error]')), []);
  });
});
