// User authentication: pusher-js `signin()` with a backend that signs like the pusher SDK's
// authenticateUser, then the backend's `sendToUser` reaching that user's socket.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, useClients, userAuthentication, watchlistOf } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { eventually, recorder, withTimeout } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** A pusher-js client whose user authentication signs `user` (or forges a signature). */
function userClient(user, { forge = false } = {}) {
  return clients.pusher({ userAuthentication: userAuthentication(server(), user, { forge }) });
}

/** Guards pusher.signin() and sendToUser: the signed-in user gets events sent to it. */
test('a signed-in pusher-js client receives sendToUser events', async () => {
  const ann = userClient({ id: 'ann', user_info: { name: 'Ann' } });
  await connected(ann);
  const signedIn = new Promise((resolve) => ann.bind('pusher:signin_success', resolve));
  ann.signin();
  const success = await withTimeout(signedIn, 5_000, 'pusher:signin_success');
  assert.deepEqual(JSON.parse(success.user_data), { id: 'ann', user_info: { name: 'Ann' } });

  const got = recorder();
  ann.user.bind('notice', got.fn);
  // pusher-js subscribes to the user's #server-to-user- channel itself after the signin.
  await eventually(() => ann.user.serverToUserChannel?.subscribed, 'the user channel is subscribed');
  await serverSdk(server()).sendToUser('ann', 'notice', { text: 'hi' });
  await got.next('a sendToUser event');
  assert.deepEqual(got.values, [{ text: 'hi' }]);
});

/** Guards the signin signature: a forged one gets pusher:error 4009 and no signin_success. */
test('a forged signin is refused with 4009', async () => {
  const mallory = userClient({ id: 'ann' }, { forge: true });
  await connected(mallory);
  const errors = recorder();
  mallory.bind('pusher:error', errors.fn);
  let succeeded = false;
  mallory.bind('pusher:signin_success', () => {
    succeeded = true;
  });
  mallory.signin();
  await errors.next('pusher:error');
  assert.equal(errors.values[0].code, 4009);
  assert.equal(succeeded, false);
});

/**
 * Guards watchlists (Pusher's online status) with real pusher-js: ann watches bob; she is told
 * bob's status after her signin, then `online` when bob signs in on another socket and `offline`
 * when that socket goes, through pusher.user.watchlist.
 */
test('pusher.user.watchlist hears a watched user sign in and out', async () => {
  const ann = userClient({ id: 'ann', watchlist: ['bob'] });
  await connected(ann);
  const { online, offline } = watchlistOf(ann);
  const [initial] = await offline.next('the first status: bob is offline');
  assert.deepEqual(initial, { name: 'offline', user_ids: ['bob'] });

  const bob = userClient({ id: 'bob' });
  await connected(bob);
  bob.signin();
  const [came] = await online.next('bob online');
  assert.deepEqual(came, { name: 'online', user_ids: ['bob'] });
  bob.disconnect();
  const [went] = await offline.nth(2, 'bob offline');
  assert.deepEqual(went, { name: 'offline', user_ids: ['bob'] });
});
