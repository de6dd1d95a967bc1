// Public channels through laravel-echo: what `Echo.channel('orders').listen(...)` in a Laravel
// front end receives when the back end broadcasts through the Pusher SDK.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { eventually, recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** Guards the basic promise: an SDK trigger reaches an Echo listener with its data parsed. */
test('Echo.channel().listen(".status") receives an SDK trigger with the data as an object', async () => {
  const echo = clients.echo();
  await connected(echo);
  const status = recorder();
  const orders = echo.channel('orders').listen('.status', status.fn);
  await subscribed(orders);

  await serverSdk(server()).trigger('orders', 'status', { id: 42, state: 'shipped', items: [1, 2] });

  const [data] = await status.next('the status event');
  assert.deepEqual(data, { id: 42, state: 'shipped', items: [1, 2] });
});

/**
 * Laravel broadcasts an event class under its full name; Echo's default namespace App.Events
 * turns listen('OrderShipped') into 'App\Events\OrderShipped'. Guards backslashes in event names.
 */
test('Echo.listen("OrderShipped") receives the namespaced App\\Events\\OrderShipped event', async () => {
  const echo = clients.echo();
  await connected(echo);
  const shipped = recorder();
  const other = recorder();
  const channel = echo.channel('orders.7').listen('OrderShipped', shipped.fn).listen('.OrderShipped', other.fn);
  await subscribed(channel);

  const sdk = serverSdk(server());
  await sdk.trigger('orders.7', 'App\\Events\\OrderShipped', { order: { id: 7 } });
  await sdk.trigger('orders.7', 'OrderShipped', { order: { id: 8 } });

  const [namespaced] = await shipped.next('the namespaced event');
  const [bare] = await other.next('the bare event');
  assert.deepEqual(namespaced, { order: { id: 7 } });
  assert.deepEqual(bare, { order: { id: 8 } });
  assert.equal(shipped.calls.length, 1, 'the bare name must not reach the namespaced listener');
});

/** Data that is not JSON (a plain string) arrives as the string, as Pusher delivers it. */
test('string data arrives unchanged', async () => {
  const echo = clients.echo();
  await connected(echo);
  const got = recorder();
  await subscribed(echo.channel('notes').listen('.note', got.fn));

  await serverSdk(server()).trigger('notes', 'note', 'plain text, not JSON');

  const [data] = await got.next('the note event');
  assert.equal(data, 'plain text, not JSON');
});

/** An unsubscribed channel receives nothing: Echo.leave() sends pusher:unsubscribe. */
test('after Echo.leave() the channel receives nothing more', async () => {
  const echo = clients.echo();
  await connected(echo);
  const left = recorder();
  const barrier = recorder();
  await subscribed(echo.channel('leaving').listen('.tick', left.fn));
  await subscribed(echo.channel('barrier').listen('.tick', barrier.fn));
  const sdk = serverSdk(server());
  await sdk.trigger('leaving', 'tick', { n: 1 });
  await left.next('the first tick');

  echo.leave('leaving');
  // The unsubscribe is a frame on the same socket: once the server has it, counts drop.
  await eventuallyUnsubscribed(sdk, 'leaving');
  await sdk.trigger('leaving', 'tick', { n: 2 });
  await sdk.trigger('barrier', 'tick', { n: 3 });

  await barrier.next('the barrier tick');
  assert.deepEqual(left.values, [{ n: 1 }]);
});

async function eventuallyUnsubscribed(sdk, channel) {
  await eventually(async () => {
    const res = await sdk.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } });
    const body = await res.json();
    return body.subscription_count === 0;
  }, `${channel} to have no subscribers`);
}
