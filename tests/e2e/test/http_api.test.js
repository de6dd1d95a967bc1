// The HTTP API through the Pusher REST SDK: channel queries (what Laravel apps and dashboards
// ask) and the signature check (wrong secret, unknown app).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { eventually } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

async function getJson(sdk, path, params) {
  const res = await sdk.get({ path, params });
  assert.equal(res.status, 200);
  return res.json();
}

/** Subscribes a fresh Echo client: `open(echo)` returns the channel. */
async function subscriber(open, user) {
  const echo = clients.echo({ user });
  await connected(echo);
  await subscribed(open(echo));
  return echo;
}

/** Guards the queries Laravel apps make to see who is online and which channels are in use. */
test('GET /channels, /channels/{name}, /channels/{presence}/users and /connections report live state', async () => {
  const sdk = serverSdk(server());
  await subscriber((e) => e.join('team.1'), { user_id: 1, user_info: { name: 'Ada' } });
  await subscriber((e) => e.join('team.1'), { user_id: 2, user_info: { name: 'Bob' } });
  await subscriber((e) => e.join('team.1'), { user_id: 2, user_info: { name: 'Bob' } });
  await subscriber((e) => e.join('team.2'), { user_id: 3, user_info: { name: 'Cy' } });
  await subscriber((e) => e.channel('news'));
  await subscriber((e) => e.channel('news'));
  await subscriber((e) => e.private('inbox.1'));

  const presence = await getJson(sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
  assert.deepEqual(presence, {
    channels: { 'presence-team.1': { user_count: 2 }, 'presence-team.2': { user_count: 1 } },
  });

  const all = await getJson(sdk, '/channels');
  assert.deepEqual(Object.keys(all.channels).sort(), ['news', 'presence-team.1', 'presence-team.2', 'private-inbox.1']);

  const privates = await getJson(sdk, '/channels', { filter_by_prefix: 'private-' });
  assert.deepEqual(privates, { channels: { 'private-inbox.1': {} } });

  assert.deepEqual(await getJson(sdk, '/channels/news', { info: 'subscription_count' }), {
    occupied: true,
    subscription_count: 2,
  });
  assert.deepEqual(await getJson(sdk, '/channels/presence-team.1', { info: 'subscription_count,user_count' }), {
    occupied: true,
    subscription_count: 3,
    user_count: 2,
  });
  assert.deepEqual(await getJson(sdk, '/channels/nobody-here', { info: 'subscription_count' }), {
    occupied: false,
    subscription_count: 0,
  });

  const users = await getJson(sdk, '/channels/presence-team.1/users');
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['1', '2']);

  // Reverb's count of the app's open connections: the seven sockets above (the file's first test).
  assert.deepEqual(await getJson(sdk, '/connections'), { connections: 7 });
});

/** Pusher's rule: user_count only makes sense for presence channels; asking elsewhere is a 400. */
test('info=user_count outside presence channels is a 400', async () => {
  const sdk = serverSdk(server());
  await assert.rejects(sdk.get({ path: '/channels', params: { info: 'user_count' } }), { status: 400 });
  await assert.rejects(sdk.get({ path: '/channels/news', params: { info: 'user_count' } }), { status: 400 });
  await assert.rejects(sdk.get({ path: '/channels/news/users' }), { status: 400 });
});

/** Guards the HTTP API's only protection: a request signed with the wrong secret is refused. */
test('an SDK with the wrong secret gets 401 and publishes nothing', async () => {
  const listener = clients.echo();
  await connected(listener);
  const received = [];
  await subscribed(listener.channel('guarded').listen('.e', (d) => received.push(d)));

  const forger = serverSdk(server(), { secret: 'not-the-secret' });
  await assert.rejects(forger.trigger('guarded', 'e', { forged: true }), (error) => {
    assert.equal(error.status, 401);
    assert.match(error.body, /"error"/);
    return true;
  });
  await assert.rejects(forger.get({ path: '/channels' }), { status: 401 });
  await assert.rejects(forger.triggerBatch([{ channel: 'guarded', name: 'e', data: '{}' }]), { status: 401 });

  // Barrier: a genuine event published afterwards is the first and only one to arrive.
  await serverSdk(server()).trigger('guarded', 'e', { genuine: true });
  await eventually(() => received.length > 0, 'the genuine event');
  assert.deepEqual(received, [{ genuine: true }]);
});

/** An SDK whose key does not belong to the app is refused as well. */
test('an SDK with the wrong key gets 401', async () => {
  const sdk = serverSdk(server(), { key: 'someone-elses-key' });
  await assert.rejects(sdk.trigger('x', 'e', {}), { status: 401 });
});

/** Pusher's 10 kB limit on an event's data (Reverb's max_message_size) answers 413. */
test('data over the message size limit is refused with 413', async () => {
  const sdk = serverSdk(server());
  await assert.rejects(sdk.trigger('big', 'e', 'x'.repeat(10_001)), { status: 413 });
  const res = await sdk.trigger('big', 'e', 'x'.repeat(9_000));
  assert.equal(res.status, 200);
});

test('an SDK for an unknown app id gets 404', async () => {
  const sdk = serverSdk(server(), { appId: 'no-such-app' });
  await assert.rejects(sdk.trigger('x', 'e', {}), { status: 404 });
  await assert.rejects(sdk.get({ path: '/channels' }), { status: 404 });
});
