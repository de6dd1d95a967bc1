// Publishing through the Pusher REST SDK: excluding the sender's socket ("toOthers"), batches,
// several channels at once, and Reprise's event ids in the trigger response.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** Crockford base32, 26 characters: a ULID. */
const ULID = /^[0-9A-HJKMNP-TV-Z]{26}$/;

/** An Echo client subscribed to `channel`, recording `.event`. */
async function listener(channel, event) {
  const echo = clients.echo();
  const socketId = await connected(echo);
  const got = recorder();
  await subscribed(echo.channel(channel).listen(`.${event}`, got.fn));
  return { echo, socketId, got };
}

/**
 * Guards Laravel's broadcast(...)->toOthers(): the SDK passes the sender's socket id (Echo's
 * X-Socket-ID) and that socket alone is skipped. The second, unexcluded event is the barrier.
 */
test('trigger with socket_id reaches the others but not that socket', async () => {
  const a = await listener('room.1', 'moved');
  const b = await listener('room.1', 'moved');
  assert.equal(a.echo.socketId(), a.socketId);
  const sdk = serverSdk(server());

  await sdk.trigger('room.1', 'moved', { n: 1 }, { socket_id: a.socketId });
  await sdk.trigger('room.1', 'moved', { n: 2 });

  await b.got.nth(2, 'both events at B');
  assert.deepEqual(b.got.values, [{ n: 1 }, { n: 2 }]);
  await a.got.next('the unexcluded event at A');
  assert.deepEqual(a.got.values, [{ n: 2 }], 'the excluded socket received the event');
});

/** Guards batch fan-out order: events of one batch arrive in the order they were given. */
test('triggerBatch delivers every event, in order', async () => {
  const echo = clients.echo();
  await connected(echo);
  const seen = [];
  const record = (channel) => (event) => (data) => seen.push([channel, event, data]);
  const one = record('batch.1');
  const two = record('batch.2');
  await subscribed(echo.channel('batch.1').listen('.a', one('a')).listen('.b', one('b')));
  await subscribed(echo.channel('batch.2').listen('.a', two('a')));
  const done = recorder();
  echo.channel('batch.2').listen('.done', done.fn);

  const batch = [
    { channel: 'batch.1', name: 'a', data: JSON.stringify({ i: 1 }) },
    { channel: 'batch.2', name: 'a', data: JSON.stringify({ i: 2 }) },
    { channel: 'batch.1', name: 'b', data: JSON.stringify({ i: 3 }) },
    { channel: 'batch.1', name: 'a', data: JSON.stringify({ i: 4 }) },
    { channel: 'batch.2', name: 'a', data: JSON.stringify({ i: 5 }) },
    { channel: 'batch.2', name: 'done', data: JSON.stringify({ i: 6 }) },
  ];
  const res = await serverSdk(server()).triggerBatch(batch);
  assert.equal(res.status, 200);

  await done.next('the last event of the batch');
  assert.deepEqual(seen, [
    ['batch.1', 'a', { i: 1 }],
    ['batch.2', 'a', { i: 2 }],
    ['batch.1', 'b', { i: 3 }],
    ['batch.1', 'a', { i: 4 }],
    ['batch.2', 'a', { i: 5 }],
  ]);
  const body = await res.json();
  assert.equal(body.batch.length, batch.length);
  body.batch.forEach((item, i) => assert.match(item.ids[batch[i].channel], ULID, `batch item ${i} id`));
});

/** Many events from one client in a row keep their order (one channel, one committer). */
test('sequential triggers arrive in order', async () => {
  const { got } = await listener('sequence', 'n');
  const sdk = serverSdk(server());
  for (let n = 0; n < 20; n += 1) await sdk.trigger('sequence', 'n', { n });
  await got.nth(20, 'twenty events');
  assert.deepEqual(got.values.map((d) => d.n), [...Array(20).keys()]);
});

/** One trigger naming several channels reaches each of them. */
test('a trigger to several channels reaches each', async () => {
  const x = await listener('multi.x', 'hello');
  const y = await listener('multi.y', 'hello');
  const res = await serverSdk(server()).trigger(['multi.x', 'multi.y'], 'hello', { to: 'both' });
  assert.deepEqual((await x.got.next('hello on multi.x'))[0], { to: 'both' });
  assert.deepEqual((await y.got.next('hello on multi.y'))[0], { to: 'both' });
  const body = await res.json();
  assert.match(body.ids['multi.x'], ULID);
  assert.match(body.ids['multi.y'], ULID);
});

/**
 * Reprise's replay extension: the trigger response names the id each channel logged the event
 * under. Plain Pusher SDKs ignore the body; the ids must still be valid, increasing ULIDs.
 */
test('the trigger response carries a ULID per channel, increasing', async () => {
  const sdk = serverSdk(server());
  const first = await sdk.trigger('ids', 'e', { n: 1 });
  assert.equal(first.status, 200);
  const firstBody = await first.json();
  assert.deepEqual(Object.keys(firstBody.ids), ['ids']);
  assert.match(firstBody.ids.ids, ULID);
  assert.equal(firstBody.ids.ids.length, 26);

  const secondBody = await (await sdk.trigger('ids', 'e', { n: 2 })).json();
  assert.match(secondBody.ids.ids, ULID);
  assert.ok(secondBody.ids.ids > firstBody.ids.ids, `${secondBody.ids.ids} should sort after ${firstBody.ids.ids}`);
});

/** info=subscription_count on a trigger is answered per channel, as Pusher does. */
test('trigger with info returns the channel attributes', async () => {
  await listener('counted', 'e');
  await listener('counted', 'e');
  const res = await serverSdk(server()).trigger('counted', 'e', {}, { info: 'subscription_count' });
  const body = await res.json();
  assert.deepEqual(body.channels, { counted: { subscription_count: 2 } });
});
