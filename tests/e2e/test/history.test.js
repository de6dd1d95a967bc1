// The replay extension's HTTP side, driven by the official `pusher` REST SDK a Laravel backend
// (or any Node backend) already has: event ids in publish answers, the signed `?since=` history
// cursor, and compaction. The SDK's generic get/post sign these calls like every other.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { serverSdk } from '../support/clients.js';
import { useServer } from '../support/server.js';

const server = useServer();

/** Publishes `count` events on `channel` and returns their ids, in order. */
async function publish(sdk, channel, count) {
  const ids = [];
  for (let i = 0; i < count; i += 1) {
    const res = await sdk.trigger(channel, 'entry', { i });
    ids.push((await res.json()).ids[channel]);
  }
  return ids;
}

async function history(sdk, channel, params = {}) {
  const res = await sdk.get({ path: `/channels/${channel}/events`, params });
  assert.equal(res.status, 200);
  return res.json();
}

/** Guards the cursor contract: pages in id order, paging by the last id, head and recovered. */
test('a backend pages through a channel by cursor with the SDK', async () => {
  const sdk = serverSdk(server());
  const ids = await publish(sdk, 'ledger.1', 5);

  const first = await history(sdk, 'ledger.1', { limit: 2 });
  assert.deepEqual(first.events.map((e) => e.id), ids.slice(0, 2));
  assert.equal(first.recovered, true);
  assert.equal(first.head, ids[4]);
  assert.deepEqual(first.events[0], { id: ids[0], event: 'entry', channel: 'ledger.1', data: '{"i":0}' });

  const rest = await history(sdk, 'ledger.1', { since: first.events[1].id, limit: 100 });
  assert.deepEqual(rest.events.map((e) => e.id), ids.slice(2));
  const none = await history(sdk, 'ledger.1', { since: ids[4] });
  assert.deepEqual(none.events, []);
  assert.equal(none.recovered, true);
});

/** Guards time cursors: an RFC 3339 instant before the first event reads everything. */
test('since also takes an RFC 3339 timestamp', async () => {
  const sdk = serverSdk(server());
  const before = new Date(Date.now() - 60_000).toISOString();
  const ids = await publish(sdk, 'ledger.2', 3);
  const page = await history(sdk, 'ledger.2', { since: before });
  assert.deepEqual(page.events.map((e) => e.id), ids);
  const future = await history(sdk, 'ledger.2', { since: new Date(Date.now() + 60_000).toISOString() });
  assert.deepEqual(future.events, []);
});

/** Guards bad input: a malformed cursor or limit is a 400 the SDK surfaces, not an empty page. */
test('a malformed cursor or limit is refused with 400', async () => {
  const sdk = serverSdk(server());
  await assert.rejects(sdk.get({ path: '/channels/ledger.3/events', params: { since: 'yesterday' } }), { status: 400 });
  await assert.rejects(sdk.get({ path: '/channels/ledger.3/events', params: { limit: '1001' } }), { status: 400 });
  const forger = serverSdk(server(), { secret: 'not-the-secret' });
  await assert.rejects(forger.get({ path: '/channels/ledger.3/events' }), { status: 401 });
});

/** Guards compaction: removed counts, and a cursor from before the cut reads recovered:false. */
test('compaction through the SDK trims the log and is reported by the cursor', async () => {
  const sdk = serverSdk(server());
  const ids = await publish(sdk, 'ledger.4', 5);
  const res = await sdk.post({ path: '/compact', body: { channel: 'ledger.4', keep_last: 2 } });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { removed: 3 });

  const cut = await history(sdk, 'ledger.4', { since: ids[0] });
  assert.equal(cut.recovered, false, 'events after the cursor were compacted away');
  assert.deepEqual(cut.events.map((e) => e.id), ids.slice(3), 'the retained events still come back');
  const after = await history(sdk, 'ledger.4', { since: ids[3] });
  assert.equal(after.recovered, true);
  assert.deepEqual(after.events.map((e) => e.id), [ids[4]]);

  await assert.rejects(sdk.post({ path: '/compact', body: { channel: 'ledger.4' } }), { status: 400 });
});
