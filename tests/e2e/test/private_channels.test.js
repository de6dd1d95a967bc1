// Private channels through laravel-echo with a Laravel-style /broadcasting/auth (signed locally):
// a valid signature subscribes, a forged one is refused and receives nothing.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, pusherOf, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** Guards the auth path pusher-js uses: socket_id:channel signed with the app secret. */
test('Echo.private() with a correctly signed auth receives events', async () => {
  const echo = clients.echo();
  await connected(echo);
  const got = recorder();
  const channel = echo.private('orders.1').listen('.updated', got.fn);
  await subscribed(channel);

  await serverSdk(server()).trigger('private-orders.1', 'updated', { total: 99.5 });

  const [data] = await got.next('the updated event');
  assert.deepEqual(data, { total: 99.5 });
});

/**
 * Laravel's database/broadcast notifications: Echo.private('App.Models.User.1').notification()
 * listens for Illuminate\Notifications\Events\BroadcastNotificationCreated on the user's
 * private channel, whose name has dots and capitals.
 */
test('Echo .notification() receives a broadcast notification on the user channel', async () => {
  const echo = clients.echo();
  await connected(echo);
  const got = recorder();
  await subscribed(echo.private('App.Models.User.1').notification(got.fn));

  const notification = { id: '9f1c', type: 'App\\Notifications\\InvoicePaid', amount: 30 };
  await serverSdk(server()).trigger(
    'private-App.Models.User.1',
    'Illuminate\\Notifications\\Events\\BroadcastNotificationCreated',
    notification,
  );

  const [data] = await got.next('the notification');
  assert.deepEqual(data, notification);
});

/**
 * Guards the promise that matters most for private channels: a client that cannot produce the
 * app's signature is told so and never sees the channel's events.
 */
test('a forged auth signature yields a subscription error and no events', async () => {
  const echo = clients.echo({ forge: true });
  await connected(echo);
  const errors = recorder();
  const leaked = recorder();
  const barrier = recorder();
  const channel = echo.private('vault').listen('.secret', leaked.fn).error(errors.fn);
  await subscribed(echo.channel('vault-barrier').listen('.tick', barrier.fn));

  const [error] = await errors.next('the subscription error');
  assert.equal(error.type, 'AuthError');
  assert.equal(error.status, 401);
  assert.equal(typeof error.error, 'string');
  assert.equal(pusherOf(echo).channel('private-vault').subscribed, false);

  const sdk = serverSdk(server());
  const res = await sdk.get({ path: '/channels/private-vault', params: { info: 'subscription_count' } });
  assert.deepEqual(await res.json(), { occupied: false, subscription_count: 0 });

  // Events on one socket arrive in publish order, so once the barrier event is here anything the
  // server sent on private-vault would have arrived too.
  await sdk.trigger('private-vault', 'secret', { password: 'hunter2' });
  await sdk.trigger('vault-barrier', 'tick', {});
  await barrier.next('the barrier event');
  assert.equal(leaked.calls.length, 0, 'an unauthorised client received a private event');
  assert.equal(channel.name, 'private-vault');
});

/** A signature for another socket is as bad as a forged one (replaying someone's auth). */
test("another socket's valid auth is refused", async () => {
  const sdk = serverSdk(server());
  const client = clients.pusher({
    channelAuthorization: {
      customHandler: (_params, callback) => callback(null, sdk.authorizeChannel('1234.5678', 'private-stolen')),
    },
  });
  await connected(client);
  const errors = recorder();
  client.subscribe('private-stolen').bind('pusher:subscription_error', errors.fn);

  const [error] = await errors.next('the subscription error');
  assert.equal(error.status, 401);
});

/** Without any auth the subscribe is refused too (a client that skips the auth endpoint). */
test('a private subscribe without auth is refused', async () => {
  const client = clients.pusher({
    channelAuthorization: { customHandler: (_params, callback) => callback(null, { auth: '' }) },
  });
  await connected(client);
  const errors = recorder();
  client.subscribe('private-nothing').bind('pusher:subscription_error', errors.fn);

  const [error] = await errors.next('the subscription error');
  assert.equal(error.status, 401);
});

/**
 * Guards end-to-end encrypted channels (Echo.encryptedPrivate): the server relays and logs the
 * SDK's ciphertext untouched, and pusher-js decrypts it with the shared secret from the auth.
 */
test('Echo.encryptedPrivate() receives the decrypted event; the server only has ciphertext', async () => {
  const echo = clients.echo();
  await connected(echo);
  const got = recorder();
  const channel = echo.encryptedPrivate('ledger').listen('.entry', got.fn);
  await subscribed(channel);
  assert.equal(channel.name, 'private-encrypted-ledger');

  const sdk = serverSdk(server());
  await sdk.trigger('private-encrypted-ledger', 'entry', { amount: 1234, memo: 'top secret' });

  const [data] = await got.next('the decrypted entry');
  assert.deepEqual(data, { amount: 1234, memo: 'top secret' });

  // Reprise's history route shows what the server stored: the SDK's envelope, not the plaintext.
  const history = await (await sdk.get({ path: '/channels/private-encrypted-ledger/events' })).json();
  assert.equal(history.events.length, 1);
  const stored = JSON.parse(history.events[0].data);
  assert.deepEqual(Object.keys(stored).sort(), ['ciphertext', 'nonce']);
  assert.doesNotMatch(history.events[0].data, /top secret/);
});
