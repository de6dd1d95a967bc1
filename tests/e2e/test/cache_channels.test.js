// Cache channels (Pusher's cache-*): a subscriber to a channel with no cached event is told
// pusher:cache_miss; once something was published, a new subscriber gets the last event at once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/**
 * Opens an Echo channel and records, in arrival order, the subscription, cache misses and
 * `.price` events, so a test can check what came right after subscribing.
 */
async function watch(open) {
  const echo = clients.echo();
  await connected(echo);
  const timeline = [];
  const prices = recorder();
  const misses = recorder();
  const channel = open(echo)
    .subscribed(() => timeline.push('subscribed'))
    .on('pusher:cache_miss', (...args) => {
      timeline.push('cache_miss');
      misses.fn(...args);
    })
    .listen('.price', (data) => {
      timeline.push(data);
      prices.fn(data);
    });
  await subscribed(channel);
  return { echo, channel, timeline, prices, misses };
}

/** Guards both halves of Pusher's cache-channel contract on a public cache channel. */
test('cache_miss before any publish; afterwards a new subscriber gets the last event first', async () => {
  const sdk = serverSdk(server());
  const early = await watch((echo) => echo.channel('cache-prices'));
  await early.misses.next('pusher:cache_miss for the first subscriber');
  assert.deepEqual(early.timeline, ['subscribed', 'cache_miss']);

  await sdk.trigger('cache-prices', 'price', { v: 1 });
  await sdk.trigger('cache-prices', 'price', { v: 2 });
  await early.prices.nth(2, 'both prices at the first subscriber');

  const late = await watch((echo) => echo.channel('cache-prices'));
  const [cached] = await late.prices.next('the cached event at the late subscriber');
  assert.deepEqual(cached, { v: 2 }, 'the cache holds the last event');
  assert.deepEqual(late.timeline, ['subscribed', { v: 2 }], 'the cached event comes right after subscribing');

  // Barrier: live events follow, and there was no cache_miss and no older event.
  await sdk.trigger('cache-prices', 'price', { v: 3 });
  await late.prices.next('the live event at the late subscriber');
  assert.deepEqual(late.timeline, ['subscribed', { v: 2 }, { v: 3 }]);
  assert.equal(late.misses.calls.length, 0);
});

/** The cache outlives its subscribers: publishing to an empty cache channel still caches. */
test('an event published with no subscriber is cached for the first one', async () => {
  await serverSdk(server()).trigger('cache-empty', 'price', { v: 'first' });
  const late = await watch((echo) => echo.channel('cache-empty'));
  assert.deepEqual((await late.prices.next('the cached event'))[0], { v: 'first' });
  assert.equal(late.misses.calls.length, 0);
});

/** Echo.private('cache-x') is private-cache-x: cached and authorised like a private channel. */
test('private cache channels cache too', async () => {
  const first = await watch((echo) => echo.private('cache-stock'));
  assert.equal(first.channel.name, 'private-cache-stock');
  await first.misses.next('pusher:cache_miss on the private cache channel');

  await serverSdk(server()).trigger('private-cache-stock', 'price', { v: 'private' });
  const late = await watch((echo) => echo.private('cache-stock'));
  assert.deepEqual((await late.prices.next('the cached private event'))[0], { v: 'private' });
});

/** Ordinary channels are not cache channels: no cache_miss and no replay of the last event. */
test('a non-cache channel sends neither cache_miss nor the last event', async () => {
  const sdk = serverSdk(server());
  await sdk.trigger('plain-prices', 'price', { v: 'old' });
  const subscriber = await watch((echo) => echo.channel('plain-prices'));
  await sdk.trigger('plain-prices', 'price', { v: 'new' });
  await subscriber.prices.next('the live event');
  assert.deepEqual(subscriber.timeline, ['subscribed', { v: 'new' }]);
});
