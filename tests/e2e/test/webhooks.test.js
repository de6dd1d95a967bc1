// Webhooks as a Laravel backend receives them: a small HTTP receiver checks every request with the
// official `pusher` SDK (`pusher.webhook({ headers, rawBody })`: isValid() and getEvents()), the
// way a route using the Pusher PHP SDK's webhook() does. The server is configured for the one-app
// case with REPRISE_WEBHOOK_URL. Each test uses channels of its own.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { eventually } from '../support/wait.js';

/** Departures are held 3 s (Pusher's delay), then batched for up to 250 ms. */
const DEPARTURE_MS = 10_000;

const requests = [];
const receiver = createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    requests.push({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
    res.writeHead(200).end();
  });
});
await new Promise((listening) => receiver.listen(0, '127.0.0.1', listening));
after(() => receiver.close());

const server = useServer({
  env: { REPRISE_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/pusher/webhooks` },
});
const clients = useClients(server);

/** Every event received so far, each request verified by the SDK first. */
function verifiedEvents() {
  const sdk = serverSdk(server());
  return requests.flatMap((request) => {
    const webhook = sdk.webhook(request);
    assert.ok(webhook.isValid(), `the SDK refused a webhook: ${JSON.stringify(request)}`);
    return webhook.getEvents();
  });
}

/** Waits for an event with these fields (a subset match) and returns it. */
function webhookEvent(fields, ms) {
  const matches = (event) => Object.entries(fields).every(([key, value]) => event[key] === value);
  return eventually(() => verifiedEvents().find(matches), `a webhook event ${JSON.stringify(fields)}`, ms);
}

test('a webhook signed with another secret is refused by the SDK', async () => {
  const pusher = clients.pusher();
  await connected(pusher);
  await subscribed(pusher.subscribe('signed-check'));
  await webhookEvent({ name: 'channel_occupied', channel: 'signed-check' });
  const forged = serverSdk(server(), { secret: 'not-the-secret' }).webhook(requests[0]);
  assert.equal(forged.isValid(), false);
  assert.equal(requests[0].headers['content-type'], 'application/json');
  assert.match(requests[0].headers['x-reprise-webhook-id'], /^[0-9A-Z]{26}$/);
});

test('channel_occupied, subscription_count and channel_vacated', async () => {
  const pusher = clients.pusher();
  await connected(pusher);
  await subscribed(pusher.subscribe('orders'));
  await webhookEvent({ name: 'channel_occupied', channel: 'orders' });
  await webhookEvent({ name: 'subscription_count', channel: 'orders', subscription_count: 1 });
  pusher.unsubscribe('orders');
  await webhookEvent({ name: 'channel_vacated', channel: 'orders' }, DEPARTURE_MS);
});

test('member_added and member_removed carry the user id', async () => {
  const ada = clients.echo({ user: { user_id: 1, user_info: { name: 'Ada' } } });
  await connected(ada);
  await subscribed(ada.join('lobby'));
  const added = await webhookEvent({ name: 'member_added', channel: 'presence-lobby' });
  assert.equal(String(added.user_id), '1');
  ada.leave('lobby');
  const removed = await webhookEvent({ name: 'member_removed', channel: 'presence-lobby' }, DEPARTURE_MS);
  assert.equal(String(removed.user_id), '1');
});

test('client_event carries the data, the socket id and, on presence channels, the user id', async () => {
  const users = [
    { user_id: 7, user_info: {} },
    { user_id: 8, user_info: {} },
  ];
  const [a, b] = users.map((user) => clients.echo({ user }));
  const [socketA] = await Promise.all([connected(a), connected(b)]);
  const channelA = a.join('typing');
  await subscribed(channelA);
  await subscribed(b.join('typing'));
  channelA.whisper('typing', { typing: true });
  const event = await webhookEvent({ name: 'client_event', channel: 'presence-typing' });
  assert.equal(event.event, 'client-typing');
  assert.deepEqual(JSON.parse(event.data), { typing: true });
  assert.equal(event.socket_id, socketA);
  assert.equal(String(event.user_id), '7');
});

test('cache_miss when a cache channel has no last event', async () => {
  const pusher = clients.pusher();
  await connected(pusher);
  const misses = [];
  const channel = pusher.subscribe('cache-prices');
  channel.bind('pusher:cache_miss', () => misses.push(true));
  await subscribed(channel);
  await webhookEvent({ name: 'cache_miss', channel: 'cache-prices' });
  await eventually(() => misses.length === 1, 'pusher-js to see the cache miss too');
});
