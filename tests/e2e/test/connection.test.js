// The connection itself: the handshake pusher-js expects, refusal of an unknown app key (4001,
// no reconnect loop), and the 4200 a shutting-down server sends so clients reconnect at once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, pusherOf, serverSdk, subscribed, useClients } from '../support/clients.js';
import { startServer, useServer } from '../support/server.js';
import { eventually, recorder, sleep } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** pusher-js's own back-off retry is 1 s; watching this long would catch a reconnect loop. */
const RETRY_WATCH_MS = 1_500;

test('the handshake gives a Pusher socket id that Echo exposes', async () => {
  const echo = clients.echo();
  const socketId = await connected(echo);
  assert.match(socketId, /^\d+\.\d+$/);
  assert.equal(echo.socketId(), socketId);
  assert.equal(echo.connectionStatus(), 'connected');
});

/**
 * Guards the refusal a misconfigured front end (wrong VITE_REVERB_APP_KEY) gets: pusher:error
 * 4001, which pusher-js treats as "refused": it disconnects and does not retry.
 */
test('an unknown app key is refused with 4001 and pusher-js does not reconnect', async () => {
  const client = clients.pusher({ key: 'no-such-key' });
  const errors = recorder();
  const states = [];
  client.connection.bind('error', errors.fn);
  client.connection.bind('state_change', ({ current }) => states.push(current));

  const [error] = await errors.next('the connection error');
  assert.equal(error.type, 'WebSocketError');
  assert.equal(error.error.type, 'PusherError');
  assert.equal(error.error.data.code, 4001);
  assert.equal(error.error.data.message, 'Application does not exist');

  await sleep(RETRY_WATCH_MS);
  assert.equal(client.connection.state, 'disconnected');
  assert.deepEqual(states, ['disconnected'], 'pusher-js tried again after a 4001');
  assert.equal(errors.calls.length, 1);
  assert.equal(client.connection.socket_id, undefined);
});

/** The same through Echo: connectionStatus() reports it, and no socket id is ever assigned. */
test('Echo on an unknown key ends disconnected', async () => {
  const echo = clients.echo({ key: 'no-such-key' });
  const errors = recorder();
  pusherOf(echo).connection.bind('error', errors.fn);
  const [error] = await errors.next('the connection error');
  assert.equal(error.error.data.code, 4001);
  await sleep(RETRY_WATCH_MS);
  assert.equal(echo.connectionStatus(), 'disconnected');
  assert.equal(echo.socketId(), undefined);
});

/**
 * Guards the shutdown promise (a deploy): SIGTERM closes every socket with 4200, which pusher-js
 * answers by reconnecting at once instead of backing off or giving up.
 */
test('SIGTERM closes sockets with 4200 and pusher-js starts reconnecting', async (t) => {
  const own = await startServer({ name: 'connection.test-shutdown' });
  t.after(() => own.stop());
  const client = clients.pusher({ wsPort: own.port, wssPort: own.port });
  await connected(client);
  const errors = recorder();
  const states = recorder();
  client.connection.bind('error', errors.fn);
  client.connection.bind('state_change', ({ current }) => states.fn(current));

  const stopped = own.stop();
  const [error] = await errors.next('the close error');
  assert.equal(error.type, 'PusherError');
  assert.equal(error.data.code, 4200);
  const [state] = await states.next('the state after the close');
  assert.equal(state, 'connecting', 'a 4200 close should make pusher-js reconnect at once');
  const { code, signal } = await stopped;
  assert.equal(code, 0, `reprise should exit cleanly on SIGTERM (signal ${signal})`);
});

/**
 * Guards keep-alive against pusher-js: with a 1 s activity timeout and ping interval, both sides
 * ping an idle connection and both answer, so an idle client stays connected (no 4201 close, no
 * reconnect) and still receives events.
 */
test('an idle client survives server and client pings', async (t) => {
  const own = await startServer({
    name: 'connection.test-keepalive',
    env: { REVERB_APP_ACTIVITY_TIMEOUT: '1', REVERB_APP_PING_INTERVAL: '1' },
  });
  t.after(() => own.stop());
  // pongTimeout: a server that ignored the client's pusher:ping would be dropped within the test.
  const client = clients.pusher({ wsPort: own.port, wssPort: own.port, pongTimeout: 1_000 });
  const socketId = await connected(client);
  const states = [];
  const errors = recorder();
  const keepalive = [];
  client.connection.bind('state_change', ({ current }) => states.push(current));
  client.connection.bind('error', errors.fn);
  client.connection.bind('message', ({ event }) => {
    if (event === 'pusher:ping' || event === 'pusher:pong') keepalive.push(event);
  });
  const got = recorder();
  const channel = client.subscribe('idle');
  channel.bind('e', got.fn);
  await subscribed(channel);

  await sleep(3_500);

  assert.deepEqual(states, [], 'the idle connection was dropped');
  // Who pings first is a race between two 1 s timers; either way the line must have been busy.
  assert.ok(keepalive.length >= 2, `expected pings or pongs while idle, saw ${JSON.stringify(keepalive)}`);
  assert.equal(errors.calls.length, 0);
  assert.equal(client.connection.socket_id, socketId);
  await serverSdk(own).trigger('idle', 'e', { still: 'here' });
  assert.deepEqual((await got.next('an event after the idle period'))[0], { still: 'here' });
});

/** REVERB_APP_MAX_CONNECTIONS: the connection over quota is refused with 4004, not queued. */
test('a connection over max_connections is refused with 4004', async (t) => {
  const own = await startServer({ name: 'connection.test-quota', env: { REVERB_APP_MAX_CONNECTIONS: '1' } });
  t.after(() => own.stop());
  const first = clients.pusher({ wsPort: own.port, wssPort: own.port });
  await connected(first);

  const second = clients.pusher({ wsPort: own.port, wssPort: own.port });
  const errors = recorder();
  second.connection.bind('error', errors.fn);
  const [error] = await errors.next('the refusal');
  assert.equal(error.error.data.code, 4004);
  assert.equal(first.connection.state, 'connected');

  // The slot is given back when the first client leaves.
  first.disconnect();
  const third = clients.pusher({ wsPort: own.port, wssPort: own.port });
  await eventually(async () => {
    if (third.connection.state === 'connected') return true;
    if (third.connection.state === 'disconnected') third.connect();
    return false;
  }, 'a connection once the slot is free');
});
