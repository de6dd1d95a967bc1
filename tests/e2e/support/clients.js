// The clients a Laravel app uses, pointed at the server under test:
//  - pusher-js (the browser library, here its Node build) and laravel-echo on top of it, with
//    broadcaster 'reverb' exactly as `php artisan install:broadcasting` configures it;
//  - the `pusher` REST SDK for the server side (what Laravel's Pusher broadcaster wraps).
//
// Channel authorization is a pusher-js `customHandler` that signs locally with the app secret via
// the SDK's `authorizeChannel`, which is byte-for-byte what Laravel's /broadcasting/auth returns.

import { afterEach } from 'node:test';

import Echo from 'laravel-echo';
import PusherServer from 'pusher';
import Pusher from 'pusher-js';

import { WAIT_MS, recorder, withTimeout } from './wait.js';

/** How long one SDK HTTP call may take before it fails the test. */
const HTTP_TIMEOUT_MS = 5_000;

/**
 * The master key for end-to-end encrypted channels (private-encrypted-*), as a Laravel app sets
 * it. The server never sees it: the SDK encrypts, pusher-js decrypts with the per-channel
 * shared_secret that the auth response carries.
 */
export const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');

/**
 * The REST SDK for the server's app. `overrides` can change anything, e.g. `{ secret: 'wrong' }`
 * or `{ appId: 'nope' }`.
 */
export function serverSdk(server, overrides = {}) {
  return new PusherServer({
    appId: server.app.id,
    key: server.app.key,
    secret: server.app.secret,
    host: server.host,
    port: String(server.port),
    useTLS: false,
    timeout: HTTP_TIMEOUT_MS,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
    ...overrides,
  });
}

/**
 * A pusher-js `channelAuthorization.customHandler` that does what Laravel's /broadcasting/auth
 * does: sign `socket_id:channel[:channel_data]` with the app secret.
 *
 * @param {object} server
 * @param {object} [options]
 * @param {{user_id: string|number, user_info?: object}} [options.user] presence member (channel_data)
 * @param {boolean} [options.forge] answer with a well-formed but wrong signature
 */
export function signingHandler(server, { user, forge = false } = {}) {
  const sdk = serverSdk(server);
  return ({ socketId, channelName }, callback) => {
    try {
      if (forge) {
        const auth = { auth: `${server.app.key}:${'0'.repeat(64)}` };
        if (channelName.startsWith('presence-')) auth.channel_data = JSON.stringify(user ?? { user_id: 'forger' });
        callback(null, auth);
        return;
      }
      const presence = channelName.startsWith('presence-');
      if (presence && !user) throw new Error(`no user given to join ${channelName}`);
      callback(null, presence ? sdk.authorizeChannel(socketId, channelName, user) : sdk.authorizeChannel(socketId, channelName));
    } catch (error) {
      callback(error, null);
    }
  };
}

/** pusher-js options for the server under test (what a Reverb .env produces in the browser). */
export function pusherOptions(server, { user, forge, ...rest } = {}) {
  return {
    wsHost: server.host,
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    // `disableStats: true` in older apps; pusher-js 8 deprecates it (with a warning) for this.
    enableStats: false,
    channelAuthorization: { customHandler: signingHandler(server, { user, forge }) },
    ...rest,
  };
}

/**
 * Creates clients and disconnects every one of them after each test, so no socket outlives the
 * test that opened it (and no test sees another's presence members).
 */
export function useClients(getServer) {
  const open = new Set();
  afterEach(() => {
    for (const client of open) client.disconnect();
    open.clear();
  });
  const track = (client) => {
    open.add(client);
    return client;
  };
  return {
    /** A pusher-js client (connecting). Options: user, forge, key, and any pusher-js option. */
    pusher({ key, ...options } = {}) {
      const server = getServer();
      return track(new Pusher(key ?? server.app.key, pusherOptions(server, options)));
    },
    /** A laravel-echo instance with broadcaster 'reverb' (connecting). Options: user, forge. */
    echo({ user, forge, ...options } = {}) {
      const server = getServer();
      const { cluster: _cluster, ...pusher } = pusherOptions(server, { user, forge });
      return track(
        new Echo({
          broadcaster: 'reverb',
          key: server.app.key,
          Pusher,
          ...pusher,
          ...options,
        }),
      );
    },
  };
}

/**
 * pusher-js `userAuthentication` for `pusher.signin()` that signs `user` (`{id, user_info?,
 * watchlist?}`) as the SDK's authenticateUser does (what Laravel's /broadcasting/user-auth
 * returns), or forges a well-formed but wrong signature.
 */
export function userAuthentication(server, user, { forge = false } = {}) {
  const sdk = serverSdk(server);
  return {
    customHandler: ({ socketId }, callback) => {
      const signed = sdk.authenticateUser(socketId, user);
      if (forge) signed.auth = `${server.app.key}:${'0'.repeat(64)}`;
      callback(null, signed);
    },
  };
}

/**
 * Records the `online` and `offline` watchlist events of a pusher-js client, then signs it in;
 * each recorder's values are the `{name, user_ids}` events pusher-js emits.
 */
export function watchlistOf(pusher) {
  const online = recorder();
  const offline = recorder();
  pusher.user.watchlist.bind('online', online.fn);
  pusher.user.watchlist.bind('offline', offline.fn);
  pusher.signin();
  return { online, offline };
}

/** The pusher-js client behind an Echo instance (or the client itself). */
export function pusherOf(client) {
  return client instanceof Echo ? client.connector.pusher : client;
}

/** Waits until the client is connected; resolves to its socket id. */
export function connected(client, ms = WAIT_MS) {
  const pusher = pusherOf(client);
  const connection = pusher.connection;
  if (connection.state === 'connected') return Promise.resolve(connection.socket_id);
  const done = new Promise((resolve) => {
    const onConnected = () => {
      connection.unbind('connected', onConnected);
      resolve(connection.socket_id);
    };
    connection.bind('connected', onConnected);
  });
  return withTimeout(done, ms, `the client to connect (state ${connection.state})`);
}

/**
 * Waits for an Echo channel (or pusher-js channel) to be subscribed. Call it right after creating
 * the channel: the subscription cannot complete before the event loop turns.
 */
export function subscribed(channel, ms = WAIT_MS) {
  const done = new Promise((resolve, reject) => {
    const onError = (error) => reject(new Error(`subscription to ${channel.name} failed: ${JSON.stringify(error)}`));
    if (typeof channel.subscribed === 'function') {
      channel.subscribed(resolve).error(onError);
    } else {
      channel.bind('pusher:subscription_succeeded', resolve);
      channel.bind('pusher:subscription_error', onError);
    }
  });
  return withTimeout(done, ms, `the subscription to ${channel.name}`);
}
