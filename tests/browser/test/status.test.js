// The operator's status page (served on the metrics listener, src/status.html) in headless
// Chromium, against the real reprise binary under a little load: real pusher-js clients subscribed
// to two channels, and the official `pusher` SDK publishing every 100 ms. The page must show the
// same counts the HTTP API gives, its rate charts and its busiest-channels table must move, and a
// screenshot is saved as output/status.png (status-failure.png when a wait times out).

import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import PusherServer from 'pusher';
import Pusher from 'pusher-js';
import { chromium } from 'playwright-core';

import { APP, OUTPUT_DIR, createReprise, freePort } from '../support/reprise.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** The page polls every 2 s; a rate needs two polls. */
const PAGE_WAIT_MS = 15_000;
const SUBSCRIBERS = { dashboard: 3, audit: 1 };

let reprise;
let metricsPort;
let browser;
let page;
let sdk;
let publishing;
const clients = [];
const pageErrors = [];

function connect(channel) {
  const client = new Pusher(APP.key, {
    wsHost: reprise.host, wsPort: reprise.port, forceTLS: false, enabledTransports: ['ws'], cluster: 'mt1',
  });
  clients.push(client);
  return new Promise((resolve, reject) => {
    const subscription = client.subscribe(channel);
    subscription.bind('pusher:subscription_succeeded', resolve);
    subscription.bind('pusher:subscription_error', reject);
  });
}

before(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: run tests/browser/setup.sh (or set CHROMIUM_PATH)`);
  mkdirSync(OUTPUT_DIR, { recursive: true });
  metricsPort = await freePort();
  reprise = await createReprise({ args: ['--metrics-port', String(metricsPort)] });
  await reprise.start();
  sdk = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: reprise.host, port: String(reprise.port), useTLS: false });
  for (const [channel, count] of Object.entries(SUBSCRIBERS)) {
    for (let i = 0; i < count; i++) await connect(channel);
  }
  let n = 0;
  publishing = setInterval(() => {
    n += 1;
    sdk.trigger('dashboard', 'tick', { n }).catch(() => {});
  }, 100);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'] });
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on('pageerror', (error) => pageErrors.push(error.message));
});

after(async () => {
  clearInterval(publishing);
  for (const client of clients) client.disconnect();
  await browser?.close();
  await reprise?.dispose();
});

/** The page's cell texts, table by table, row by row. */
function tableRows(id) {
  return page.$$eval(`#${id} tr`, (rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent)));
}

async function waitFor(what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: PAGE_WAIT_MS, polling: 200 });
  } catch (error) {
    await page.screenshot({ path: join(OUTPUT_DIR, 'status-failure.png'), fullPage: true }).catch(() => {});
    throw new Error(`timed out waiting for ${what} (${error.message})`);
  }
}

test('the status page shows the live counts the API gives, and its charts move', async () => {
  await page.goto(`http://127.0.0.1:${metricsPort}/`);
  const total = SUBSCRIBERS.dashboard + SUBSCRIBERS.audit;
  await waitFor('the app row with every connection', (n) => {
    const row = document.querySelector('#apps tr');
    return row && row.cells[1].textContent === String(n);
  }, total);

  // The same counts through the HTTP API.
  const response = await sdk.get({ path: '/channels', params: { info: 'subscription_count' } });
  const { channels } = await response.json();
  assert.deepEqual(Object.keys(channels).sort(), Object.keys(SUBSCRIBERS).sort());
  const [app] = await tableRows('apps');
  assert.equal(app[0], APP.id);
  assert.equal(app[2], String(Object.keys(channels).length), 'channels');
  const subscriptions = Object.values(channels).reduce((sum, channel) => sum + channel.subscription_count, 0);
  assert.equal(app[3], String(subscriptions), 'subscriptions');

  // Busiest first, with the subscriber counts the API gives and the log's figures.
  const busiest = await tableRows('channels');
  assert.deepEqual(busiest.map((row) => row[1]), ['dashboard', 'audit']);
  assert.equal(busiest[0][2], String(channels.dashboard.subscription_count));
  assert.equal(busiest[1][2], String(channels.audit.subscription_count));

  // Under load the numbers move: frames go out, events pile up in the log, publishes count up.
  await waitFor('a frames-out rate above zero', () => Number(document.getElementById('out-now').textContent) > 0);
  const before = Number((await tableRows('channels'))[0][4]);
  const acknowledgedBefore = Number((await tableRows('apps'))[0][5]);
  await waitFor('more events held on the busiest channel', (n) => {
    const row = document.querySelector('#channels tr');
    return row && Number(row.cells[4].textContent) > n;
  }, before);
  assert.ok(Number((await tableRows('apps'))[0][5]) > acknowledgedBefore, 'acknowledged publishes grow');
  await waitFor('the log figures', () => document.getElementById('log').textContent.includes('events,'));
  assert.equal(await page.textContent('#health'), 'healthy');
  await waitFor('a frames chart of four points', () =>
    document.querySelector('#out-chart polyline').getAttribute('points').split(' ').length >= 4);

  await page.screenshot({ path: join(OUTPUT_DIR, 'status.png'), fullPage: true });
  assert.deepEqual(pageErrors, []);
});
