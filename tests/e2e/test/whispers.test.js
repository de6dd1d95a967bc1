// Whispers (client events): Echo's whisper()/listenForWhisper() on private and presence channels
// reach the other members and never echo back to the sender.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, subscribed, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

/** Opens `count` Echo clients on the same channel; `open(echo)` returns the Echo channel. */
async function members(count, open, users = []) {
  const opened = [];
  for (let i = 0; i < count; i += 1) {
    const echo = clients.echo({ user: users[i] });
    await connected(echo);
    const typing = recorder();
    const channel = open(echo).listenForWhisper('typing', typing.fn);
    await subscribed(channel);
    opened.push({ echo, channel, typing });
  }
  return opened;
}

/**
 * Guards the relay and the sender exclusion. The reply from B is the barrier: A's own whisper,
 * if it were echoed, was queued to A before B could even see it, so it would arrive first.
 */
async function assertWhisperRoundTrip([a, b]) {
  a.channel.whisper('typing', { name: 'Ada', typing: true });
  const [received] = await b.typing.next("Ada's whisper at Bob");
  assert.deepEqual(received, { name: 'Ada', typing: true });

  b.channel.whisper('typing', { name: 'Bob', typing: false });
  const [reply] = await a.typing.next("Bob's whisper at Ada");
  assert.deepEqual(reply, { name: 'Bob', typing: false });

  assert.deepEqual(a.typing.values, [{ name: 'Bob', typing: false }], 'the sender received its own whisper');
  assert.deepEqual(b.typing.values, [{ name: 'Ada', typing: true }], 'the sender received its own whisper');
}

test('a whisper on a private channel reaches the other member, not the sender', async () => {
  await assertWhisperRoundTrip(await members(2, (echo) => echo.private('chat.1')));
});

test('a whisper on a presence channel reaches the other member, not the sender', async () => {
  const users = [
    { user_id: 1, user_info: { name: 'Ada' } },
    { user_id: 2, user_info: { name: 'Bob' } },
  ];
  const [a, b] = await members(2, (echo) => echo.join('chat.2'), users);
  await assertWhisperRoundTrip([a, b]);
  // Pusher adds the sender's user_id to client events on presence channels; pusher-js hands it
  // to the listener as metadata.
  assert.equal(String(b.typing.calls[0][1]?.user_id), '1');
  assert.equal(String(a.typing.calls[0][1]?.user_id), '2');
});

/** A whisper goes to every other member, three of them here. */
test('a whisper reaches every other member of the channel', async () => {
  const [a, b, c] = await members(3, (echo) => echo.private('chat.3'));
  a.channel.whisper('typing', { from: 'a' });
  await b.typing.next('the whisper at b');
  await c.typing.next('the whisper at c');
});

/**
 * Whispers are only for private and presence channels: a client event on a public channel is
 * refused with a pusher:error (4009) and not relayed.
 */
test('a client event on a public channel is refused and not relayed', async () => {
  const [a, b] = await members(2, (echo) => echo.channel('public-chat'));
  const errors = recorder();
  const pusher = a.echo.connector.pusher;
  pusher.connection.bind('error', errors.fn);

  pusher.send_event('client-typing', { name: 'Ada' }, 'public-chat');
  const [error] = await errors.next('the pusher:error for the public client event');
  assert.equal(error.type, 'PusherError');
  assert.equal(error.data.code, 4009);

  // Barrier: an SDK event published after the refusal reaches b after anything relayed before it.
  const barrier = recorder();
  b.channel.listen('.tick', barrier.fn);
  await serverSdk(server()).trigger('public-chat', 'tick', {});
  await barrier.next('the barrier event');
  assert.equal(b.typing.calls.length, 0, 'a client event on a public channel was relayed');
});
