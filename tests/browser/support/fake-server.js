// An in-memory stand-in for a Reprise server, reached through a fake WebSocket class that
// pusher-js's Node build is given in place of its own (`Pusher.Runtime.getWebSocketAPI`).
//
// It speaks enough of Pusher protocol 7 and Reprise's replay extension for the module tests:
// handshake, subscribe (with `since`), unsubscribe, publish with ids, replay, compaction, and
// closing every socket with a code. With `plain = true` it behaves like Pusher or Reverb (no ids,
// no replay block). Frames are delivered asynchronously, as a network would.

import { eventSeq } from '../../../api/js/reprise-replay.js';

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** The Reprise id of the event with sequence `seq` appended at `timestampMs` (see api/src/event_id.rs). */
export function encodeId(timestampMs, seq) {
  const value = (BigInt(timestampMs) << 80n) | BigInt(seq);
  let text = '';
  for (let shift = 125n; shift >= 0n; shift -= 5n) text += CROCKFORD[Number((value >> shift) & 31n)];
  return text;
}

export class FakeServer {
  constructor() {
    /** Every pusher:subscribe received, in order: its data ({channel, auth, since?}). */
    this.subscribes = [];
    /** subscription_succeeded frames the client has been given (so it has handled them). */
    this.confirmations = 0;
    /** Every pusher:unsubscribe received, in order: its data ({channel}). */
    this.unsubscribes = [];
    /** Behave like plain Pusher / Reverb: no ids, no replay block. */
    this.plain = false;
    /** Send a copy of the last replayed event after the next replay (a misbehaving server). */
    this.duplicateNextReplay = false;
    this._channels = new Map();
    this._delivered = new Map();
    this._sockets = new Set();
    this._nextSocket = 1;
    const server = this;

    /** What pusher-js constructs: the subset of the WebSocket API it uses, with plain `on*` properties. */
    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.onopen = null;
        this.onmessage = null;
        this.onclose = null;
        this.onerror = null;
        this.subscriptions = new Set();
        this.socketId = `${server._nextSocket++}.1`;
        server._sockets.add(this);
        later(() => {
          if (this.readyState !== 0) return;
          this.readyState = 1;
          this.onopen?.({});
          server._send(this, { event: 'pusher:connection_established', data: JSON.stringify({ socket_id: this.socketId, activity_timeout: 120 }) });
        });
      }

      send(text) {
        if (this.readyState !== 1) throw new Error('send on a socket that is not open');
        server._receive(this, JSON.parse(text));
      }

      close(code = 1000, reason = '') {
        server._close(this, code, reason);
      }
    };
  }

  /** Appends an event to `channel`'s log and sends it to the channel's subscribers. */
  publish(channel, event, data) {
    const log = this._log(channel);
    const seq = log.headSeq + 1n;
    const id = encodeId(Date.now(), seq);
    const stored = { id, seq, event, data: JSON.stringify(data) };
    log.events.push(stored);
    log.all.push(stored);
    log.headSeq = seq;
    log.head = id;
    for (const socket of this._sockets) {
      if (socket.readyState === 1 && socket.subscriptions.has(channel)) this._send(socket, this._eventFrame(channel, stored));
    }
    return id;
  }

  /**
   * Like publish(), but sent to every open socket, subscribed or not: an event the server sent
   * just before it handled the client's unsubscribe.
   */
  publishInFlight(channel, event, data) {
    const subscribed = [...this._sockets].filter((socket) => !socket.subscriptions.has(channel));
    for (const socket of subscribed) socket.subscriptions.add(channel);
    const id = this.publish(channel, event, data);
    for (const socket of subscribed) socket.subscriptions.delete(channel);
    return id;
  }

  /** How many event frames of `channel` clients have been given. */
  delivered(channel) {
    return this._delivered.get(channel) ?? 0;
  }

  /** The id of the channel's last event, or null. */
  head(channel) {
    return this._log(channel).head;
  }

  /** The id of the channel's event whose data has this `status`. */
  idOf(channel, status) {
    return this._log(channel).all.find((e) => JSON.parse(e.data).status === status)?.id ?? null;
  }

  /** Removes every event from every log (the heads stay, as Reprise's compaction keeps them). */
  compactAll() {
    for (const log of this._channels.values()) {
      log.removedThroughSeq = log.headSeq;
      log.events = [];
    }
  }

  /** Closes every open socket with `code`, as a server shutting down (4200) would. */
  closeAll(code) {
    for (const socket of [...this._sockets]) this._close(socket, code, 'closed by the test');
  }

  _log(channel) {
    let log = this._channels.get(channel);
    if (!log) {
      // `events` is the log as it is now; `all` every event ever appended (for idOf).
      log = { events: [], all: [], head: null, headSeq: 0n, removedThroughSeq: 0n };
      this._channels.set(channel, log);
    }
    return log;
  }

  _eventFrame(channel, stored) {
    const frame = { event: stored.event, channel, data: stored.data };
    if (!this.plain) frame.id = stored.id;
    return frame;
  }

  _receive(socket, frame) {
    if (frame.event === 'pusher:subscribe') {
      this.subscribes.push(frame.data);
      this._subscribe(socket, frame.data);
    } else if (frame.event === 'pusher:unsubscribe') {
      this.unsubscribes.push(frame.data);
      socket.subscriptions.delete(frame.data.channel);
    }
  }

  _subscribe(socket, { channel, auth, since }) {
    if (channel.startsWith('private-') && !auth) {
      this._send(socket, { event: 'pusher:subscription_error', channel, data: JSON.stringify({ type: 'AuthError', status: 401 }) });
      return;
    }
    socket.subscriptions.add(channel);
    const log = this._log(channel);
    if (this.plain) {
      this._send(socket, { event: 'pusher_internal:subscription_succeeded', channel, data: '{}' });
      return;
    }
    if (since === undefined) {
      this._send(socket, { event: 'pusher_internal:subscription_succeeded', channel, data: JSON.stringify({ replay: { head: log.head } }) });
      return;
    }
    // Reprise's rule (storage/src/sled_log.rs): recovered when nothing after the cursor was removed.
    const seq = eventSeq(since);
    const recovered =
      log.head !== null && seq !== null && seq <= log.headSeq && (seq === 0n ? log.removedThroughSeq === 0n : seq >= log.removedThroughSeq);
    const replayed = recovered ? log.events.filter((e) => e.seq > seq) : [];
    const replay = { head: log.head, recovered, count: replayed.length };
    this._send(socket, { event: 'pusher_internal:subscription_succeeded', channel, data: JSON.stringify({ replay }) });
    for (const stored of replayed) this._send(socket, this._eventFrame(channel, stored));
    if (this.duplicateNextReplay && replayed.length > 0) {
      this.duplicateNextReplay = false;
      this._send(socket, this._eventFrame(channel, replayed[replayed.length - 1]));
    }
  }

  /** Queues a frame; frames to one socket keep their order. */
  _send(socket, frame) {
    const text = JSON.stringify(frame);
    later(() => {
      if (socket.readyState !== 1) return;
      socket.onmessage?.({ data: text });
      if (frame.event === 'pusher_internal:subscription_succeeded') this.confirmations += 1;
      if (!frame.event.startsWith('pusher')) this._delivered.set(frame.channel, this.delivered(frame.channel) + 1);
    });
  }

  _close(socket, code, reason) {
    if (socket.readyState === 3) return;
    socket.readyState = 3;
    socket.subscriptions.clear();
    this._sockets.delete(socket);
    later(() => socket.onclose?.({ code, reason, wasClean: true }));
  }
}

function later(callback) {
  setImmediate(callback);
}
