// Webhook throughput and latency: one pusher-js client subscribes to N empty cache channels as fast
// as it can (each gives channel_occupied, subscription_count and cache_miss: 3N events), and a
// local receiver answers 200 at once. Prints the requests, events per request, how long all took
// and the cache_miss latency (subscribe sent -> webhook received). A measurement, not a test.
//
//   (cd tests/e2e && npm ci)      # pusher-js
//   N=2000 BIN=target/debug/reprise node benches/webhooks.mjs
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import Pusher from '../tests/e2e/node_modules/pusher-js/dist/node/pusher.js';

const N = Number(process.env.N ?? 500);
const BIN = process.env.BIN ?? 'target/debug/reprise';

const received = [];
const receiver = createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => (body += chunk));
  req.on('end', () => {
    received.push({ at: performance.now(), body: JSON.parse(body) });
    res.writeHead(200).end();
  });
});
await new Promise((listening) => receiver.listen(0, '127.0.0.1', listening));

const port = 18_000 + Math.floor(Math.random() * 1000);
const dataDir = mkdtempSync(join(tmpdir(), 'reprise-webhooks-bench-'));
const server = spawn(BIN, ['start', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir], {
  env: {
    ...process.env,
    REVERB_APP_ID: 'bench',
    REVERB_APP_KEY: 'bench-key',
    REVERB_APP_SECRET: 'bench-secret',
    REPRISE_WEBHOOK_URL: `http://127.0.0.1:${receiver.address().port}/webhooks`,
    RUST_LOG: 'warn',
  },
  stdio: 'inherit',
});
for (;;) {
  try {
    if ((await fetch(`http://127.0.0.1:${port}/up`)).ok) break;
  } catch {
    // not up yet
  }
  await new Promise((r) => setTimeout(r, 50));
}

const pusher = new Pusher('bench-key', {
  wsHost: '127.0.0.1',
  wsPort: port,
  forceTLS: false,
  enabledTransports: ['ws'],
  cluster: 'mt1',
  enableStats: false,
});
await new Promise((connected) => pusher.connection.bind('connected', connected));
const sentAt = new Map();
const start = performance.now();
for (let i = 0; i < N; i += 1) {
  sentAt.set(`cache-${i}`, performance.now());
  pusher.subscribe(`cache-${i}`);
}
const expected = 3 * N;
while (received.reduce((sum, request) => sum + request.body.events.length, 0) < expected) {
  await new Promise((r) => setTimeout(r, 10));
}
const seconds = (performance.now() - start) / 1000;
const latencies = received
  .flatMap((request) => request.body.events.filter((e) => e.name === 'cache_miss').map((e) => request.at - sentAt.get(e.channel)))
  .sort((a, b) => a - b);
const quantile = (q) => Math.round(latencies[Math.floor(q * (latencies.length - 1))]);
console.log(
  JSON.stringify({
    events: expected,
    requests: received.length,
    events_per_request: +(expected / received.length).toFixed(1),
    seconds: +seconds.toFixed(2),
    events_per_second: Math.round(expected / seconds),
    cache_miss_latency_ms: { p50: quantile(0.5), p99: quantile(0.99), max: quantile(1) },
  }),
);
pusher.disconnect();
server.kill('SIGTERM');
await new Promise((exited) => server.once('exit', exited));
receiver.close();
rmSync(dataDir, { recursive: true, force: true });
