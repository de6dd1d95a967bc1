// Cluster mode through the npm clients a Laravel app uses: two reprise nodes started with
// Reverb's own scaling variables (REVERB_SCALING_ENABLED, REDIS_URL) share a private redis-server
// (its own free port: the shared one on 6379 is never touched). Echo on one node must hear, see
// and whisper with what happens on the other, as if there were one server.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';

import { connected, serverSdk, subscribed, useClients, userAuthentication, watchlistOf } from '../support/clients.js';
import { freePort, startServer } from '../support/server.js';
import { eventually, recorder, sleep } from '../support/wait.js';

let redis;
let nodeA;
let nodeB;

/** Resolves once something accepts connections on `port`. */
async function listening(port) {
  await eventually(
    () =>
      new Promise((done) => {
        const socket = connect(port, '127.0.0.1', () => {
          socket.end();
          done(true);
        });
        socket.on('error', () => done(false));
      }),
    `redis-server on port ${port}`,
  );
}

before(async () => {
  const port = await freePort();
  redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await listening(port);
  const env = { REVERB_SCALING_ENABLED: 'true', REDIS_URL: `redis://127.0.0.1:${port}/0` };
  nodeA = await startServer({ env, name: 'cluster.test-node-a' });
  nodeB = await startServer({ env, name: 'cluster.test-node-b' });
});

after(async () => {
  const stopped = await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  redis?.kill('SIGKILL');
  for (const exit of stopped) {
    assert.equal(exit?.code, 0, 'every node exits cleanly on SIGTERM');
  }
});

const onA = useClients(() => nodeA);
const onB = useClients(() => nodeB);

/** Guards the core promise: a trigger through one node reaches Echo on the other. */
test('an SDK trigger through node A reaches Echo connected to node B', async () => {
  const echo = onB.echo();
  await connected(echo);
  const status = recorder();
  await subscribed(echo.channel('orders').listen('.status', status.fn));

  await serverSdk(nodeA).trigger('orders', 'status', { id: 42, state: 'shipped' });

  const [data] = await status.next('the status event on node B');
  assert.deepEqual(data, { id: 42, state: 'shipped' });
});

/** Presence is cluster-wide: here() on node B lists a member who joined on node A. */
test('Echo.join() on node B lists the member on node A, and sees them leave', async () => {
  const ada = onA.echo({ user: { user_id: 1, user_info: { id: 1, name: 'Ada' } } });
  await connected(ada);
  const adaHere = recorder();
  ada.join('room').here(adaHere.fn);
  await adaHere.next('Ada in the room');

  const bob = onB.echo({ user: { user_id: 2, user_info: { id: 2, name: 'Bob' } } });
  await connected(bob);
  const here = recorder();
  const leaving = recorder();
  bob.join('room').here(here.fn).leaving(leaving.fn);
  const [members] = await here.next("Bob's roster");
  assert.deepEqual(
    members.map((m) => m.name).sort(),
    ['Ada', 'Bob'],
    'the roster holds the members of both nodes',
  );

  ada.disconnect();
  const [left] = await leaving.next('Ada leaving, seen on the other node');
  assert.equal(left.name, 'Ada');
});

/** Whispers (client events) and toOthers() exclusion cross nodes. */
test('a whisper on node A reaches node B, and not its sender', async () => {
  const user = { user_id: 3, user_info: { id: 3 } };
  const sender = onA.echo({ user });
  const receiver = onB.echo({ user: { user_id: 4, user_info: { id: 4 } } });
  await Promise.all([connected(sender), connected(receiver)]);
  const heard = recorder();
  const echoed = recorder();
  const senderChannel = sender.private('chat').listenForWhisper('typing', echoed.fn);
  await subscribed(senderChannel);
  await subscribed(receiver.private('chat').listenForWhisper('typing', heard.fn));

  senderChannel.whisper('typing', { who: 'sender' });

  const [data] = await heard.next('the whisper on node B');
  assert.deepEqual(data, { who: 'sender' });
  await sleep(300);
  assert.equal(echoed.calls.length, 0, 'the sender does not hear its own whisper');
});

/** The HTTP API answers for both nodes: subscription counts add up across them. */
test('GET /channels/{name} through node A counts subscribers on both nodes', async () => {
  const a = onA.echo();
  const b = onB.echo();
  await Promise.all([connected(a), connected(b)]);
  await subscribed(a.channel('news'));
  await subscribed(b.channel('news'));
  await eventually(async () => {
    const res = await serverSdk(nodeA).get({ path: '/channels/news', params: { info: 'subscription_count' } });
    return (await res.json()).subscription_count === 2;
  }, 'both subscriptions counted (node B reports its counts within a second)');
});

/** Watchlists are cluster-wide: a user signing in and out on node B is online/offline on node A. */
test('pusher.user.watchlist on node A hears a user sign in and out on node B', async () => {
  const ann = onA.pusher({ userAuthentication: userAuthentication(nodeA, { id: 'ann', watchlist: ['bob'] }) });
  await connected(ann);
  const { online, offline } = watchlistOf(ann);
  await offline.next('the first status: bob is offline');

  const bob = onB.pusher({ userAuthentication: userAuthentication(nodeB, { id: 'bob' }) });
  await connected(bob);
  bob.signin();
  const [came] = await online.next('bob online, from node B');
  assert.deepEqual(came, { name: 'online', user_ids: ['bob'] });
  bob.disconnect();
  const [went] = await offline.nth(2, 'bob offline, from node B');
  assert.deepEqual(went, { name: 'offline', user_ids: ['bob'] });
});
