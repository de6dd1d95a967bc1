// Reverb's REVERB_SERVER_PATH: the server below a path prefix, as behind a proxy that forwards
// /reverb/* to it. Echo reaches it with pusher-js's `wsPath`; Laravel's Pusher PHP SDK publishes
// with its `path` option, which puts the prefix in the URL but signs the path without it.

import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { test } from 'node:test';

import { connected, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { recorder } from '../support/wait.js';

const PREFIX = '/reverb';
const server = useServer({ env: { REVERB_SERVER_PATH: PREFIX } });
const clients = useClients(server);

/** A publish signed as the Pusher PHP SDK signs it with `path` set: over `/apps/{id}/events`. */
async function publishAsThePhpSdk(srv, channel, name, data) {
  const path = `/apps/${srv.app.id}/events`;
  const body = JSON.stringify({ name, channel, data: JSON.stringify(data) });
  const params = new URLSearchParams({
    auth_key: srv.app.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    body_md5: createHash('md5').update(body).digest('hex'),
  });
  params.sort();
  const signature = createHmac('sha256', srv.app.secret).update(`POST\n${path}\n${params}`).digest('hex');
  params.append('auth_signature', signature);
  return fetch(`${srv.baseUrl}${path}?${params}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
  });
}

/** Guards a Reverb app deployed under a path: Echo connects and receives what the back end publishes. */
test('Echo with wsPath reaches the server below its prefix and receives a publish', async () => {
  const echo = clients.echo({ wsPath: PREFIX });
  await connected(echo);
  const status = recorder();
  await subscribed(echo.channel('orders').listen('.status', status.fn));

  const response = await publishAsThePhpSdk(server(), 'orders', 'status', { state: 'shipped' });
  assert.equal(response.status, 200, await response.text());
  const [data] = await status.next('the status event');
  assert.deepEqual(data, { state: 'shipped' });
});

/** Nothing is served at the root once a prefix is set, so a misconfigured client fails loudly. */
test('nothing is served at the root once a prefix is set', async () => {
  const root = `http://127.0.0.1:${server().port}`;
  assert.equal((await fetch(`${root}/up`)).status, 404);
  assert.equal((await fetch(`${server().baseUrl}/up`)).status, 200);
});
