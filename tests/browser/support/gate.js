// A TCP relay between the browser and the server that the test can close, so that an outage has
// a deterministic order: the browser's reconnect waits at the gate (its WebSocket handshake is
// held, not refused, so pusher-js does not back off) while the test publishes and compacts, and
// goes through the moment the gate opens.

import { createConnection, createServer } from 'node:net';

/**
 * Starts a relay from a free loopback port to `127.0.0.1:targetPort`.
 * @returns {Promise<{port: number, hold(): void, cut(): void, release(): void, held(): number, close(): Promise<void>}>}
 */
export async function startGate(targetPort) {
  let holding = false;
  /** Connections accepted while holding: relayed upstream on release. */
  const waiting = new Set();
  /** Relayed pairs, so that cut() can drop them. */
  const pairs = new Set();

  const relay = (client) => {
    if (client.destroyed) return;
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  };

  const server = createServer((client) => {
    client.on('error', () => client.destroy());
    if (holding) {
      // Bytes the browser sends meanwhile (its HTTP upgrade request) wait in the socket's buffer.
      client.pause();
      waiting.add(client);
      client.once('close', () => waiting.delete(client));
    } else {
      relay(client);
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });

  return {
    port: server.address().port,
    /** New connections wait; open ones carry on. */
    hold() {
      holding = true;
    },
    /** Holds, and drops every open connection as a network failure would (no close frame). */
    cut() {
      holding = true;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
    },
    /** Lets waiting and new connections through. */
    release() {
      holding = false;
      for (const client of [...waiting]) {
        waiting.delete(client);
        relay(client);
      }
    },
    /** How many connections are waiting at the gate. */
    held() {
      return [...waiting].filter((client) => !client.destroyed).length;
    },
    close() {
      for (const client of waiting) client.destroy();
      for (const { client, upstream } of pairs) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
