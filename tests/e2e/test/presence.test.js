// Presence channels through Echo.join(): the roster (here), joining and leaving, and one user with
// several connections (tabs) counted once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { connected, serverSdk, useClients } from '../support/clients.js';
import { useServer } from '../support/server.js';
import { eventually, recorder } from '../support/wait.js';

const server = useServer();
const clients = useClients(server);

// Laravel sends the user's integer key as user_id and the channel callback's array as user_info.
const ADA = { user_id: 1, user_info: { id: 1, name: 'Ada' } };
const BOB = { user_id: 2, user_info: { id: 2, name: 'Bob' } };

const byId = (a, b) => a.id - b.id;

/** Joins `room` as `user` and resolves once here() delivered the roster. */
async function join(room, user) {
  const echo = clients.echo({ user });
  await connected(echo);
  const here = recorder();
  const joining = recorder();
  const leaving = recorder();
  const events = recorder();
  const channel = echo.join(room).here(here.fn).joining(joining.fn).leaving(leaving.fn).listen('.ping', events.fn);
  const [members] = await here.next(`here() for user ${user.user_id} in ${room}`);
  return { echo, channel, members, joining, leaving, events };
}

async function subscriptionCount(channel) {
  const res = await serverSdk(server()).get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } });
  return (await res.json()).subscription_count;
}

/** Guards the roster and member events Echo builds "who is online" lists from. */
test('here() lists members, joining() and leaving() follow a second user', async () => {
  const ada = await join('room', ADA);
  assert.equal(ada.channel.name, 'presence-room', "Echo.join('room') subscribes to presence-room");
  assert.deepEqual(ada.members, [ADA.user_info]);

  const bob = await join('room', BOB);
  assert.deepEqual(bob.members.sort(byId), [ADA.user_info, BOB.user_info]);
  const [joined] = await ada.joining.next("Bob's joining()");
  assert.deepEqual(joined, BOB.user_info);
  assert.equal(bob.joining.calls.length, 0, 'a member is not told about its own arrival');

  bob.echo.disconnect();
  const [left] = await ada.leaving.next("Bob's leaving()");
  assert.deepEqual(left, BOB.user_info);
  assert.equal(ada.joining.calls.length, 1);
});

/**
 * Guards per-user (not per-socket) membership: a second tab of the same user does not announce
 * a second join, and closing one of two tabs does not announce a leave.
 */
test('the same user on two connections joins once and leaves with its last connection', async () => {
  const sdk = serverSdk(server());
  const ada = await join('office', ADA);
  const bob1 = await join('office', BOB);
  await ada.joining.next("Bob's first tab joining()");

  const bob2 = await join('office', BOB);
  assert.deepEqual(bob2.members.sort(byId), [ADA.user_info, BOB.user_info], 'the roster lists Bob once');
  // A member_added for the second tab would have been queued to Ada before bob2's
  // subscription succeeded, so it would arrive before this event.
  await sdk.trigger('presence-office', 'ping', { n: 1 });
  await ada.events.next('the first ping');
  assert.equal(ada.joining.calls.length, 1, 'a second tab of the same user announced a second join');

  const users = await (await sdk.get({ path: '/channels/presence-office/users' })).json();
  assert.deepEqual(users.users.map((u) => u.id).sort(), ['1', '2']);
  assert.equal(await subscriptionCount('presence-office'), 3);

  bob1.echo.disconnect();
  await eventually(async () => (await subscriptionCount('presence-office')) === 2, "the server to drop Bob's first tab");
  await sdk.trigger('presence-office', 'ping', { n: 2 });
  await ada.events.next('the second ping');
  assert.equal(ada.leaving.calls.length, 0, 'closing one of two tabs announced a leave');

  bob2.echo.disconnect();
  const [left] = await ada.leaving.next("Bob's leaving() after his last tab");
  assert.deepEqual(left, BOB.user_info);
});

/** Echo.leave() (pusher:unsubscribe) leaves the roster like a disconnect does. */
test('Echo.leave() on a presence channel fires leaving() for the others', async () => {
  const ada = await join('lobby', ADA);
  const bob = await join('lobby', BOB);
  await ada.joining.next("Bob's joining()");

  bob.echo.leave('lobby');

  const [left] = await ada.leaving.next("Bob's leaving()");
  assert.deepEqual(left, BOB.user_info);
});

/** A presence subscribe whose auth signs different channel_data than it sends is refused. */
test('presence auth must sign the channel_data that is sent', async () => {
  const sdk = serverSdk(server());
  const client = clients.pusher({
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const signed = sdk.authorizeChannel(socketId, channelName, BOB);
        // Claim to be Ada with Bob's signature.
        callback(null, { auth: signed.auth, channel_data: JSON.stringify(ADA) });
      },
    },
  });
  await connected(client);
  const errors = recorder();
  client.subscribe('presence-impostors').bind('pusher:subscription_error', errors.fn);

  const [error] = await errors.next('the subscription error');
  assert.equal(error.status, 401);
  assert.equal(await subscriptionCount('presence-impostors'), 0);
});

/**
 * Guards terminate_connections (the SDK's terminateUserConnections, e.g. on a ban or logout):
 * only that user's sockets close, with 4200, so pusher-js reconnects and must be authorised again;
 * the other members see the user leave and (here, since auth still passes) come back.
 */
test("terminateUserConnections closes that user's sockets; pusher-js reconnects and rejoins", async () => {
  const ada = await join('stage', ADA);
  const bob = await join('stage', BOB);
  await ada.joining.next("Bob's joining()");
  const adaErrors = recorder();
  const bobErrors = recorder();
  ada.echo.connector.pusher.connection.bind('error', adaErrors.fn);
  bob.echo.connector.pusher.connection.bind('error', bobErrors.fn);
  const bobSocket = bob.echo.socketId();

  await serverSdk(server()).terminateUserConnections('2');

  const [error] = await bobErrors.next("the close of Bob's socket");
  assert.equal(error.type, 'PusherError');
  assert.equal(error.data.code, 4200);
  const [left] = await ada.leaving.next("Bob's leaving()");
  assert.deepEqual(left, BOB.user_info);
  const [back] = await ada.joining.next("Bob's joining() after he reconnected");
  assert.deepEqual(back, BOB.user_info);
  assert.notEqual(bob.echo.socketId(), bobSocket, 'Bob reconnected with a new socket');
  assert.equal(adaErrors.calls.length, 0, "Ada's socket was closed too");
});
