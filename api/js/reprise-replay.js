// reprise-replay.js: Reprise's replay extension for unmodified pusher-js 8 and Laravel Echo.
//
// pusher-js rebuilds every frame it receives as {event, channel, data, user_id}, so an app never
// sees Reprise's event ids and cannot ask to resume. This module works one level below, on the
// WebSocket that pusher-js creates through `Pusher.Runtime.createWebSocket`:
//
//   - it reads each frame before pusher-js does and remembers, per channel, the id of the last
//     event seen (or the channel's head from `subscription_succeeded`);
//   - when pusher-js subscribes again (after a reconnect, or after a reload when cursors are kept
//     in `storage`), it adds `"since": "<that id>"` to the `pusher:subscribe` frame;
//   - the server replays the missed events before the live ones, so they reach the app's normal
//     `listen()` callbacks in order; an event at or below the last sequence seen is dropped;
//   - when the server cannot replay (`recovered: false`), it calls the app's hook to refetch.
//
// Against a server without the extension (no ids, no `replay` block) it never sends `since` and
// passes every frame through untouched. Dependency-free; the API is in api/js/README.md.

/** The cursor before a channel's first event: where a client that saw an empty channel resumes. */
export const ZERO_ID = '00000000000000000000000000';

/** The default prefix of the keys written to `storage`. */
export const DEFAULT_STORAGE_PREFIX = 'reprise-replay:';

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const SEQ_MASK = (1n << 64n) - 1n;
/** Where `enableReplay` leaves its controller on the class, so that a second call replaces it. */
const INSTALLED = Symbol.for('reprise.replay.controller');

/**
 * The per-channel sequence of a Reprise event id (the low 64 bits of its ULID), or null when `id`
 * is not a ULID.
 *
 * @param {unknown} id
 * @returns {bigint | null}
 */
export function eventSeq(id) {
  if (typeof id !== 'string' || id.length !== 26) return null;
  let value = 0n;
  for (let i = 0; i < 26; i += 1) {
    const digit = CROCKFORD.indexOf(id[i].toUpperCase());
    // The first character carries 3 bits: above '7' the value would not fit in 128 bits.
    if (digit < 0 || (i === 0 && digit > 7)) return null;
    value = (value << 5n) | BigInt(digit);
  }
  return value & SEQ_MASK;
}

/**
 * Turns replay on for every connection the pusher-js class makes from now on. Call it once,
 * before `new Echo(...)` or `new Pusher(...)`. Calling it again replaces the previous set-up.
 *
 * @param {Function} Pusher the pusher-js class (`import Pusher from 'pusher-js'`)
 * @param {ReplayOptions} [options]
 * @returns {ReplayController}
 */
export function enableReplay(Pusher, options = {}) {
  const runtime = Pusher && Pusher.Runtime;
  if (!runtime || typeof runtime.createWebSocket !== 'function' || !Pusher.prototype) {
    throw new TypeError('enableReplay expects the pusher-js class (import Pusher from "pusher-js"), version 7 or 8');
  }
  if (Pusher[INSTALLED]) Pusher[INSTALLED].disable(); // e.g. a hot module reload ran echo.js again
  const controller = new ReplayController(Pusher, options);
  Pusher[INSTALLED] = controller;
  return controller;
}

/**
 * @typedef {object} ReplayOptions
 * @property {Storage} [storage] keeps cursors across page reloads (`window.sessionStorage`)
 * @property {string} [storagePrefix] prefix of the storage keys (default 'reprise-replay:')
 * @property {(channel: string, info: ResumeInfo) => void} [onNotRecovered] the events missed on
 *   `channel` could not be replayed: refetch its state. For channels without a hook of their own.
 * @property {(channel: string, info: ResumeInfo) => void} [onRecovered] a resume replayed
 *   `info.count` events (called before they are delivered). For channels without a hook of their own.
 */

/**
 * @typedef {object} ResumeInfo
 * @property {string} channel the Pusher channel name, e.g. 'private-orders.1'
 * @property {boolean} recovered
 * @property {number} count events replayed (0 when not recovered)
 * @property {string} since the id the client resumed after
 * @property {string | null} head the channel's last event id on the server, if it has one
 */

const EMPTY_STATS = Object.freeze({ resumes: 0, recovered: 0, notRecovered: 0, replayed: 0, duplicatesDropped: 0 });

class ReplayController {
  constructor(Pusher, options) {
    this._Pusher = Pusher;
    this._storage = options.storage || null;
    this._prefix = options.storagePrefix || DEFAULT_STORAGE_PREFIX;
    this._globalHooks = { recovered: options.onRecovered || null, notRecovered: options.onNotRecovered || null };
    /** Per channel name: hooks added with onRecovered / onNotRecovered. */
    this._hooks = new Map();
    /**
     * Per client (a Pusher instance), per channel name: a ChannelState. Each client has its own
     * cursors, so two Echo instances on one page never filter each other's events.
     */
    this._clients = new Map();
    /** Cursors given to resumeFrom() before any client subscribed to the channel. */
    this._seeds = new Map();
    this._enabled = true;

    const controller = this;
    const runtime = Pusher.Runtime;
    const createWebSocket = runtime.createWebSocket;
    const patchedCreateWebSocket = function (url, ...rest) {
      const socket = createWebSocket.call(this, url, ...rest);
      if (controller._enabled) controller._instrument(socket, url);
      return socket;
    };
    runtime.createWebSocket = patchedCreateWebSocket;

    // An app that leaves a channel starts afresh if it joins again. pusher-js sends no frame when
    // it leaves while disconnected, so the class method is the one place that always sees it.
    const unsubscribe = Pusher.prototype.unsubscribe;
    const patchedUnsubscribe = function (channelName, ...rest) {
      if (controller._enabled) controller._forgetClient(this, channelName);
      return unsubscribe.call(this, channelName, ...rest);
    };
    Pusher.prototype.unsubscribe = patchedUnsubscribe;

    this._restore = () => {
      if (runtime.createWebSocket === patchedCreateWebSocket) runtime.createWebSocket = createWebSocket;
      if (Pusher.prototype.unsubscribe === patchedUnsubscribe) Pusher.prototype.unsubscribe = unsubscribe;
    };
  }

  /**
   * Adds a hook for one channel (its Pusher name, e.g. 'private-orders.1'): the events it missed
   * could not be replayed, so refetch its state. The channel's hooks replace the global one.
   * @param {string} channel
   * @param {(info: ResumeInfo) => void} callback
   * @returns {() => void} removes the hook
   */
  onNotRecovered(channel, callback) {
    return this._addHook(channel, 'notRecovered', callback);
  }

  /**
   * Adds a hook for one channel: a resume replayed `info.count` events; it runs just before they
   * are delivered to the app's listeners. The channel's hooks replace the global one.
   * @param {string} channel
   * @param {(info: ResumeInfo) => void} callback
   * @returns {() => void} removes the hook
   */
  onRecovered(channel, callback) {
    return this._addHook(channel, 'recovered', callback);
  }

  /** The id the next subscription to `channel` would resume after, or null. */
  cursor(channel) {
    for (const states of this._clients.values()) {
      const state = states.get(channel);
      if (state && state.cursor) return state.cursor;
    }
    return this._seeds.get(channel) ?? this._readStored(channel)?.id ?? null;
  }

  /**
   * Makes the first subscription to `channel` resume after `id`: for instance the channel's head
   * when the server rendered the page, so nothing published between render and subscribe is lost.
   * Call it before subscribing.
   */
  resumeFrom(channel, id) {
    if (eventSeq(id) === null) throw new TypeError(`resumeFrom: ${JSON.stringify(id)} is not a Reprise event id`);
    this._seeds.set(channel, id);
  }

  /** Forgets `channel`'s cursor (in memory and in storage): its next subscription starts afresh. */
  forget(channel) {
    this._seeds.delete(channel);
    for (const states of this._clients.values()) {
      const state = states.get(channel);
      if (state) resetCursor(state);
    }
    this._removeStored(channel);
  }

  /** Whether the event being delivered on `channel` right now was replayed (rather than live). */
  isReplaying(channel) {
    for (const states of this._clients.values()) {
      const state = states.get(channel);
      if (state && state.replayRemaining > 0) return true;
    }
    return false;
  }

  /**
   * Counters for one channel, or summed over every channel.
   * @param {string} [channel]
   * @returns {{resumes: number, recovered: number, notRecovered: number, replayed: number, duplicatesDropped: number}}
   */
  stats(channel) {
    const total = { ...EMPTY_STATS };
    for (const states of this._clients.values()) {
      for (const [name, state] of states) {
        if (channel !== undefined && name !== channel) continue;
        for (const key of Object.keys(total)) total[key] += state.stats[key];
      }
    }
    return total;
  }

  /** Undoes the patches. Sockets already open pass every frame through untouched from now on. */
  disable() {
    if (!this._enabled) return;
    this._enabled = false;
    this._restore();
    if (this._Pusher[INSTALLED] === this) delete this._Pusher[INSTALLED];
  }

  // -- sockets ---------------------------------------------------------------------------------

  /** Wraps one socket's `send` and `onmessage`; pusher-js sets `onmessage` after creating it. */
  _instrument(socket, url) {
    const connection = { socket, appKey: appKeyOf(url), client: null, pendingSince: new Map() };
    const controller = this;

    const send = socket.send;
    socket.send = function (data, ...rest) {
      return send.call(this, controller._outgoing(connection, data), ...rest);
    };

    // A browser WebSocket keeps its handler behind an accessor on the prototype; other
    // implementations (faye-websocket in Node) read a plain `onmessage` property to dispatch.
    // Shadow it on the instance either way and hand the implementation the wrapped handler.
    const inheritedSetter = findSetter(socket, 'onmessage');
    let wrapped = socket.onmessage;
    Object.defineProperty(socket, 'onmessage', {
      configurable: true,
      enumerable: true,
      get() {
        return wrapped;
      },
      set(handler) {
        wrapped =
          typeof handler === 'function'
            ? function (event) {
                return controller._incoming(connection, event, () => handler.call(this, event));
              }
            : handler;
        if (inheritedSetter) inheritedSetter.call(socket, wrapped);
      },
    });
    if (typeof wrapped === 'function') socket.onmessage = wrapped;
  }

  /** Adds `since` to a re-subscription; forgets a channel the app unsubscribes from. */
  _outgoing(connection, data) {
    if (!this._enabled || typeof data !== 'string' || !data.includes('"pusher:')) return data;
    try {
      const frame = JSON.parse(data);
      const body = frame && frame.data;
      if (!body || typeof body !== 'object' || typeof body.channel !== 'string') return data;
      if (frame.event === 'pusher:unsubscribe') {
        const state = this._states(connection).get(body.channel);
        if (state) resetCursor(state);
        this._removeStored(body.channel);
        return data;
      }
      if (frame.event !== 'pusher:subscribe') return data;
      connection.pendingSince.delete(body.channel);
      if (body.since !== undefined) {
        // Someone else chose where to resume: follow the outcome like our own resumes.
        if (eventSeq(body.since) !== null) connection.pendingSince.set(body.channel, body.since);
        return data;
      }
      const state = this._state(connection, body.channel);
      if (!state.cursor) return data;
      connection.pendingSince.set(body.channel, state.cursor);
      return JSON.stringify({ ...frame, data: { ...body, since: state.cursor } });
    } catch (error) {
      report(error);
      return data;
    }
  }

  /** Looks at one received frame, then delivers it to pusher-js (or drops a duplicate). */
  _incoming(connection, event, deliver) {
    const text = event && event.data;
    // A cheap test first: only event frames with an id and subscription confirmations matter.
    if (
      !this._enabled ||
      typeof text !== 'string' ||
      (!text.includes('"id":"') && !text.includes('"pusher_internal:subscription_succeeded"'))
    ) {
      return deliver();
    }
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return deliver(); // pusher-js reports an unparseable frame itself
    }
    if (!frame || typeof frame !== 'object' || typeof frame.channel !== 'string') return deliver();

    if (frame.event === 'pusher_internal:subscription_succeeded') {
      let outcome = null;
      try {
        outcome = this._subscribed(connection, frame);
      } catch (error) {
        report(error);
      }
      const result = deliver();
      if (outcome) this._callHooks(frame.channel, outcome);
      return result;
    }

    const seq = eventSeq(frame.id);
    if (seq === null) return deliver();
    const state = this._state(connection, frame.channel);
    // No baseline: no confirmed subscription (an event still in flight after the app left).
    if (state.lastSeq === null) return deliver();
    const replayed = state.replayRemaining > 0;
    if (seq <= state.lastSeq) {
      state.stats.duplicatesDropped += 1;
      if (replayed) state.replayRemaining -= 1;
      return undefined;
    }
    // Recorded before delivery: a listener that throws does not get the event again on resume.
    state.lastSeq = seq;
    state.cursor = frame.id;
    this._persist(connection, frame.channel, state);
    try {
      return deliver();
    } finally {
      if (replayed) state.replayRemaining -= 1;
    }
  }

  /**
   * Reads the `replay` block of `subscription_succeeded` and resets the channel's cursor and
   * duplicate filter from it. Returns the resume's outcome when the client asked to resume.
   */
  _subscribed(connection, frame) {
    const channel = frame.channel;
    const since = connection.pendingSince.get(channel) ?? null;
    connection.pendingSince.delete(channel);
    const state = this._state(connection, channel);
    state.replayRemaining = 0;
    let data = frame.data;
    if (typeof data === 'string') {
      try {
        data = JSON.parse(data);
      } catch {
        data = null;
      }
    }
    const block = data && typeof data === 'object' ? data.replay : null;

    if (!block || typeof block !== 'object') {
      // Not a Reprise server (any more): never send it a cursor. If one was sent, nothing was
      // replayed, which is what `recovered: false` means.
      resetCursor(state);
      this._removeStored(channel);
      if (since === null) return null;
      state.stats.resumes += 1;
      state.stats.notRecovered += 1;
      return { channel, recovered: false, count: 0, since, head: null };
    }

    const head = eventSeq(block.head) === null ? null : block.head;
    const headSeq = head === null ? 0n : eventSeq(head);
    if (since === null || typeof block.recovered !== 'boolean') {
      // A fresh subscription: everything after the head is live.
      state.cursor = head ?? ZERO_ID;
      state.lastSeq = headSeq;
      this._persist(connection, channel, state);
      return null;
    }

    state.stats.resumes += 1;
    if (block.recovered) {
      const count = Number.isSafeInteger(block.count) && block.count > 0 ? block.count : 0;
      state.lastSeq = eventSeq(since);
      state.replayRemaining = count;
      state.stats.recovered += 1;
      state.stats.replayed += count;
      return { channel, recovered: true, count, since, head };
    }
    state.cursor = head ?? ZERO_ID;
    state.lastSeq = headSeq;
    this._persist(connection, channel, state);
    if (head === null && since === ZERO_ID) {
      // The channel was empty when the client left and has had no event since: nothing missed.
      state.stats.recovered += 1;
      return { channel, recovered: true, count: 0, since, head };
    }
    state.stats.notRecovered += 1;
    return { channel, recovered: false, count: 0, since, head };
  }

  _callHooks(channel, info) {
    const kind = info.recovered ? 'recovered' : 'notRecovered';
    const own = this._hooks.get(channel)?.[kind];
    const calls = own && own.size > 0 ? [...own].map((hook) => () => hook(info)) : [];
    if (calls.length === 0 && this._globalHooks[kind]) calls.push(() => this._globalHooks[kind](channel, info));
    for (const call of calls) {
      try {
        call();
      } catch (error) {
        report(error);
      }
    }
  }

  _addHook(channel, kind, callback) {
    if (typeof callback !== 'function') throw new TypeError(`the ${kind} hook for ${channel} must be a function`);
    let hooks = this._hooks.get(channel);
    if (!hooks) {
      hooks = { recovered: new Set(), notRecovered: new Set() };
      this._hooks.set(channel, hooks);
    }
    hooks[kind].add(callback);
    return () => {
      hooks[kind].delete(callback);
    };
  }

  // -- per-client, per-channel state -----------------------------------------------------------

  /**
   * The client (Pusher instance) that owns a socket. pusher-js keeps the socket at
   * `pusher.connection.connection.transport.socket` once the handshake is done, which is before
   * anything is subscribed. If that ever fails to match, sockets of one app key share a client.
   */
  _clientOf(connection) {
    if (connection.client) return connection.client;
    for (const pusher of this._Pusher.instances || []) {
      if (pusher?.connection?.connection?.transport?.socket === connection.socket) {
        connection.client = pusher;
        return pusher;
      }
    }
    return `app:${connection.appKey}`;
  }

  _states(connection) {
    const client = this._clientOf(connection);
    let states = this._clients.get(client);
    if (!states) {
      states = new Map();
      this._clients.set(client, states);
    }
    return states;
  }

  /** The channel's state for this socket's client, created (from a seed or storage) on first use. */
  _state(connection, channel) {
    const states = this._states(connection);
    let state = states.get(channel);
    if (!state) {
      let cursor = this._seeds.get(channel) ?? null;
      this._seeds.delete(channel);
      if (cursor === null) {
        const stored = this._readStored(channel);
        // A cursor stored for another app key means nothing to this one.
        if (stored && stored.app === connection.appKey) cursor = stored.id;
      }
      state = {
        /** The id to resume after: the last event seen, or the head when subscribed. */
        cursor,
        /** Events at or below this sequence were delivered already: a copy is dropped. */
        lastSeq: null,
        /** Replayed events still to come after a recovered resume. */
        replayRemaining: 0,
        stats: { ...EMPTY_STATS },
      };
      states.set(channel, state);
    }
    return state;
  }

  _forgetClient(pusher, channel) {
    this._seeds.delete(channel);
    for (const client of [pusher, `app:${pusher && pusher.key}`]) {
      const state = this._clients.get(client)?.get(channel);
      if (state) resetCursor(state);
    }
    this._removeStored(channel);
  }

  // -- storage ---------------------------------------------------------------------------------
  // One key per channel; the value names the app key too: {"app": "<key>", "id": "<event id>"}.
  // Storage that throws (quota, privacy mode) is ignored: replay still works within the page.

  _readStored(channel) {
    if (!this._storage) return null;
    try {
      const value = JSON.parse(this._storage.getItem(this._prefix + channel) ?? 'null');
      return value && eventSeq(value.id) !== null ? { app: value.app ?? null, id: value.id } : null;
    } catch {
      return null;
    }
  }

  _persist(connection, channel, state) {
    if (!this._storage || !state.cursor) return;
    try {
      this._storage.setItem(this._prefix + channel, JSON.stringify({ app: connection.appKey, id: state.cursor }));
    } catch {
      // see above
    }
  }

  _removeStored(channel) {
    if (!this._storage) return;
    try {
      this._storage.removeItem(this._prefix + channel);
    } catch {
      // see above
    }
  }
}

function resetCursor(state) {
  state.cursor = null;
  state.lastSeq = null;
  state.replayRemaining = 0;
}

/** The app key in a pusher-js socket URL (`ws://host/app/<key>?protocol=7...`), or null. */
function appKeyOf(url) {
  const match = /\/app\/([^/?#]+)/.exec(String(url));
  return match ? decodeURIComponent(match[1]) : null;
}

function findSetter(object, name) {
  for (let proto = Object.getPrototypeOf(object); proto; proto = Object.getPrototypeOf(proto)) {
    const descriptor = Object.getOwnPropertyDescriptor(proto, name);
    if (descriptor) return descriptor.set || null;
  }
  return null;
}

/** Shows an error in the console without breaking pusher-js's handling of the frame. */
function report(error) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(error);
  else if (typeof console !== 'undefined') console.error(error);
}
