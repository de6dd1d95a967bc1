// The replay module (api/js/reprise-replay.js) driven through the real pusher-js (its Node build)
// and the real laravel-echo, with the WebSocket replaced by a scripted in-memory server that
// speaks Reprise's replay extension (or, for one test, plain Pusher). No network, no browser:
// these pin the module's promises one by one; test/orders.test.js proves the whole in Chromium.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

import { ZERO_ID, enableReplay, eventSeq } from '../../../api/js/reprise-replay.js';
import { FakeServer, encodeId } from '../support/fake-server.js';

const KEY = 'app-key';
const ORDERS = 'private-orders.1';

/** Waits until `predicate()` holds, polling; fails with `what` after `ms`. */
async function until(predicate, what, ms = 3_000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Pusher-js options for the fake server; private channels are "authorised" locally. */
function clientOptions(broadcaster) {
  return {
    broadcaster,
    key: KEY,
    Pusher,
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: 6001,
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => callback(null, { auth: `${KEY}:sig-${socketId}-${channelName}` }),
    },
  };
}

let server;
let replay;
let clients;
let originalWebSocketApi;

beforeEach(() => {
  server = new FakeServer();
  originalWebSocketApi = Pusher.Runtime.getWebSocketAPI;
  Pusher.Runtime.getWebSocketAPI = () => server.WebSocket;
  clients = [];
});

afterEach(() => {
  for (const client of clients) client.disconnect();
  replay?.disable();
  replay = undefined;
  Pusher.Runtime.getWebSocketAPI = originalWebSocketApi;
});

function echo(broadcaster = 'reverb', extra = {}) {
  const client = new Echo({ ...clientOptions(broadcaster), ...extra });
  clients.push(client);
  return client;
}

/** Subscribes to orders.1 and records what the app's listener receives. */
function listenToOrders(client) {
  const received = [];
  client.private('orders.1').listen('.status', (data) => received.push(data.status));
  return received;
}

describe('eventSeq', () => {
  test('reads the sequence from the low 64 bits and refuses what is not a ULID', () => {
    assert.equal(eventSeq(encodeId(1_764_000_000_123, 42)), 42n);
    assert.equal(eventSeq(encodeId(1, 2n ** 64n - 1n)), 2n ** 64n - 1n);
    assert.equal(eventSeq(ZERO_ID), 0n);
    // The ULID spec's example: 48-bit time 1469918176385 and random bits below.
    const example = eventSeq('01ARZ3NDEKTSV4RRFFQ69G5FAV');
    assert.equal(typeof example, 'bigint');
    assert.equal(eventSeq('01arz3ndektsv4rrffq69g5fav'), example, 'lower case decodes the same');
    for (const bad of [undefined, null, 7, '', '01ARZ3NDEK', '8ZZZZZZZZZZZZZZZZZZZZZZZZZ', '01ARZ3NDEKTSV4RRFFQ69G5FAU!', '01ARZ3NDEKTSV4RRFFQ69G5FAI']) {
      assert.equal(eventSeq(bad), null, `${JSON.stringify(bad)} is not an id`);
    }
  });
});

for (const broadcaster of ['reverb', 'pusher']) {
  describe(`with Echo broadcaster '${broadcaster}'`, () => {
    test('a reconnect resumes with since: missed events arrive in order through listen(), none twice', async () => {
      replay = enableReplay(Pusher);
      const recovered = [];
      replay.onRecovered(ORDERS, (info) => recovered.push(info));
      server.publish(ORDERS, 'status', { status: 'placed' }); // before the page: not delivered
      const received = listenToOrders(echo(broadcaster));
      await until(() => server.confirmations === 1, 'the first subscribe');
      assert.equal(server.subscribes[0].since, undefined, 'a first subscription sends no since');
      assert.equal(replay.cursor(ORDERS), server.head(ORDERS), 'the head is the cursor until an event arrives');

      server.publish(ORDERS, 'status', { status: 'paid' });
      await until(() => received.length === 1, 'the live event');
      const lastSeen = server.head(ORDERS);
      assert.equal(replay.cursor(ORDERS), lastSeen);

      server.closeAll(4200); // pusher-js reconnects at once
      server.publish(ORDERS, 'status', { status: 'packed' });
      server.publish(ORDERS, 'status', { status: 'shipped' });
      server.duplicateNextReplay = true; // the server (wrongly) repeats an event: the module drops it
      await until(() => server.confirmations === 2, 'the re-subscribe');
      assert.equal(server.subscribes[1].since, lastSeen, 'the re-subscribe resumes after the last event seen');
      await until(() => received.length === 3, 'the replayed events');
      server.publish(ORDERS, 'status', { status: 'delivered' });
      await until(() => received.length === 4, 'the next live event');

      assert.deepEqual(received, ['paid', 'packed', 'shipped', 'delivered']);
      assert.deepEqual(recovered, [{ channel: ORDERS, recovered: true, count: 2, since: lastSeen, head: server.idOf(ORDERS, 'shipped') }]);
      assert.deepEqual(replay.stats(ORDERS), { resumes: 1, recovered: 1, notRecovered: 0, replayed: 2, duplicatesDropped: 1 });
    });

    test('recovered:false calls the channel hook (else the global one) and resets the cursor to the head', async () => {
      const global = [];
      replay = enableReplay(Pusher, { onNotRecovered: (channel, info) => global.push([channel, info.recovered]) });
      const own = [];
      const off = replay.onNotRecovered(ORDERS, (info) => own.push(info));
      const client = echo(broadcaster);
      const received = listenToOrders(client);
      client.channel('news').listen('.headline', () => {});
      await until(() => server.confirmations === 2, 'both subscribes');
      server.publish(ORDERS, 'status', { status: 'paid' });
      await until(() => received.length === 1, 'the live event');

      server.closeAll(4200);
      server.publish(ORDERS, 'status', { status: 'packed' });
      server.publish('news', 'headline', { text: 'x' });
      server.compactAll(); // everything missed is gone from the log
      await until(() => own.length === 1 && global.length === 1, 'the hooks');
      assert.equal(own[0].recovered, false);
      assert.equal(own[0].head, server.idOf(ORDERS, 'packed'));
      assert.deepEqual(global, [['news', false]], 'the global hook runs only for channels without their own');
      assert.deepEqual(received, ['paid'], 'nothing is replayed when not recovered');
      assert.equal(replay.cursor(ORDERS), server.head(ORDERS));

      // Live events after the head still arrive; a removed hook is not called again.
      server.publish(ORDERS, 'status', { status: 'shipped' });
      await until(() => received.length === 2, 'the live event after not recovered');
      off();
      server.closeAll(4200);
      server.publish(ORDERS, 'status', { status: 'delivered' });
      server.compactAll();
      await until(() => global.length === 2, 'the global hook for orders');
      assert.deepEqual(global, [['news', false], [ORDERS, false]], 'news lost nothing the second time');
      assert.equal(own.length, 1);
    });
  });
}

test('against a server without the extension it sends no since and changes nothing', async () => {
  server.plain = true; // no ids, no replay block: plain Pusher / Reverb
  const hooks = [];
  replay = enableReplay(Pusher, { onNotRecovered: (channel) => hooks.push(channel), onRecovered: (channel) => hooks.push(channel) });
  const received = listenToOrders(echo());
  await until(() => server.confirmations === 1, 'the subscribe');
  server.publish(ORDERS, 'status', { status: 'paid' });
  await until(() => received.length === 1, 'the event');
  server.closeAll(4200);
  await until(() => server.confirmations === 2, 'the re-subscribe');
  server.publish(ORDERS, 'status', { status: 'packed' });
  await until(() => received.length === 2, 'the event after the reconnect');
  assert.deepEqual(received, ['paid', 'packed']);
  assert.ok(server.subscribes.every((s) => !('since' in s)), 'since was never sent');
  assert.deepEqual(hooks, [], 'no resume, so no hook');
  assert.equal(replay.cursor(ORDERS), null);
  assert.deepEqual(replay.stats(), { resumes: 0, recovered: 0, notRecovered: 0, replayed: 0, duplicatesDropped: 0 });
});

test('cursors kept in storage resume after a reload, for the same app key only', async () => {
  const storage = new MemoryStorage();
  replay = enableReplay(Pusher, { storage });
  const first = echo();
  const received = listenToOrders(first);
  await until(() => server.confirmations === 1, 'the subscribe');
  server.publish(ORDERS, 'status', { status: 'paid' });
  await until(() => received.length === 1, 'the event');
  const lastSeen = server.head(ORDERS);
  assert.deepEqual(JSON.parse(storage.getItem(`reprise-replay:${ORDERS}`)), { app: KEY, id: lastSeen });

  // "Reload": the page's objects are gone, storage is not.
  first.disconnect();
  replay.disable();
  server.publish(ORDERS, 'status', { status: 'packed' });
  replay = enableReplay(Pusher, { storage });
  assert.equal(replay.cursor(ORDERS), lastSeen, 'the stored cursor is known before connecting');
  const again = listenToOrders(echo());
  await until(() => again.length === 1, 'the replayed event after the reload');
  assert.equal(server.subscribes[1].since, lastSeen);
  assert.deepEqual(again, ['packed']);

  // A cursor stored for another app key is not sent.
  replay.disable();
  storage.setItem(`reprise-replay:${ORDERS}`, JSON.stringify({ app: 'other-key', id: lastSeen }));
  replay = enableReplay(Pusher, { storage });
  listenToOrders(echo());
  await until(() => server.confirmations === 3, 'the third subscribe');
  assert.equal(server.subscribes[2].since, undefined);
});

test('leaving a channel forgets its cursor: joining again starts afresh', async () => {
  const storage = new MemoryStorage();
  replay = enableReplay(Pusher, { storage });
  const client = echo();
  const received = listenToOrders(client);
  await until(() => server.confirmations === 1, 'the subscribe');
  server.publish(ORDERS, 'status', { status: 'paid' });
  await until(() => received.length === 1, 'the event');
  client.leave('orders.1');
  assert.equal(replay.cursor(ORDERS), null);
  assert.equal(storage.getItem(`reprise-replay:${ORDERS}`), null);
  await until(() => server.unsubscribes.length === 1, 'the unsubscribe');
  // Sent before the server handled the unsubscribe: it reaches the client, but is no cursor.
  server.publishInFlight(ORDERS, 'status', { status: 'packing' });
  await until(() => server.delivered(ORDERS) === 2, 'the event in flight');
  server.publish(ORDERS, 'status', { status: 'packed' });
  const later = listenToOrders(client);
  await until(() => server.confirmations === 2, 'the second subscribe');
  assert.equal(server.subscribes[1].since, undefined);
  server.publish(ORDERS, 'status', { status: 'shipped' });
  await until(() => later.length === 1, 'the live event');
  assert.deepEqual(later, ['shipped'], 'what was published while away is not replayed to a new subscription');
});

test('two clients on one page keep their own cursors and both get every event', async () => {
  replay = enableReplay(Pusher);
  const a = listenToOrders(echo());
  const b = listenToOrders(echo());
  await until(() => server.confirmations === 2, 'both subscribes');
  server.publish(ORDERS, 'status', { status: 'paid' });
  server.publish(ORDERS, 'status', { status: 'packed' });
  await until(() => a.length === 2 && b.length === 2, 'both clients to get both events');
  assert.deepEqual(a, ['paid', 'packed']);
  assert.deepEqual(b, ['paid', 'packed']);
  assert.equal(replay.stats().duplicatesDropped, 0);
});

test('an empty channel resumes from the zero id; nothing missed is not reported as lost', async () => {
  const lost = [];
  replay = enableReplay(Pusher, { onNotRecovered: (channel) => lost.push(channel) });
  const received = listenToOrders(echo());
  await until(() => server.confirmations === 1, 'the subscribe');
  assert.equal(replay.cursor(ORDERS), ZERO_ID);
  server.closeAll(4200);
  await until(() => server.confirmations === 2, 'the re-subscribe to the still empty channel');
  assert.equal(server.subscribes[1].since, ZERO_ID);
  server.closeAll(4200);
  server.publish(ORDERS, 'status', { status: 'paid' });
  await until(() => received.length === 1, 'the event published while away');
  assert.equal(server.subscribes[2].since, ZERO_ID);
  assert.deepEqual(replay.stats(ORDERS), { resumes: 2, recovered: 2, notRecovered: 0, replayed: 1, duplicatesDropped: 0 });
  assert.deepEqual(lost, []);
});

test('isReplaying tells replayed events from live ones; resumeFrom seeds the first subscription', async () => {
  server.publish(ORDERS, 'status', { status: 'placed' });
  const rendered = server.head(ORDERS); // the page was rendered with the order as of this event
  server.publish(ORDERS, 'status', { status: 'paid' }); // published before the socket subscribed
  replay = enableReplay(Pusher);
  replay.resumeFrom(ORDERS, rendered);
  assert.throws(() => replay.resumeFrom(ORDERS, 'nope'), TypeError);
  const seen = [];
  echo()
    .private('orders.1')
    .listen('.status', (data) => seen.push([data.status, replay.isReplaying(ORDERS)]));
  await until(() => seen.length === 1, 'the replayed event');
  assert.equal(server.subscribes[0].since, rendered);
  server.publish(ORDERS, 'status', { status: 'packed' });
  await until(() => seen.length === 2, 'the live event');
  assert.deepEqual(seen, [
    ['paid', true],
    ['packed', false],
  ]);
});

test('enableReplay refuses what is not the pusher-js class, and a second call replaces the first', () => {
  assert.throws(() => enableReplay({}), TypeError);
  assert.throws(() => enableReplay(function NotPusher() {}), TypeError);
  const createWebSocket = Pusher.Runtime.createWebSocket;
  const unsubscribe = Pusher.prototype.unsubscribe;
  const first = enableReplay(Pusher);
  replay = enableReplay(Pusher);
  assert.notEqual(first, replay);
  replay.disable();
  assert.equal(Pusher.Runtime.createWebSocket, createWebSocket, 'disable restores pusher-js');
  assert.equal(Pusher.prototype.unsubscribe, unsubscribe);
});

/** The Web Storage interface over a Map. */
class MemoryStorage {
  #items = new Map();
  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }
  setItem(key, value) {
    this.#items.set(key, String(value));
  }
  removeItem(key) {
    this.#items.delete(key);
  }
}
