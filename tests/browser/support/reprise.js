// Runs the real `reprise` binary for the browser test: start, SIGTERM, and start again on the same
// port and data directory (the event log must survive the restart).
//
// The server's output goes to output/reprise.log, so a failure can be read after the run.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(HERE, '../../..');
export const OUTPUT_DIR = resolve(HERE, '../output');

/** How long the server may take to answer GET /up. */
const STARTUP_TIMEOUT_MS = 10_000;
/** How long SIGTERM gets before SIGKILL (the server's own shutdown grace is 5 s by default). */
const STOP_TIMEOUT_MS = 7_000;

export const APP = Object.freeze({ id: 'browser-app', key: 'browser-key', secret: 'browser-secret' });

/** The binary under test: REPRISE_BIN, or this repository's debug build. */
function binaryPath() {
  const bin = process.env.REPRISE_BIN ?? join(REPO_ROOT, 'target/debug/reprise');
  if (!existsSync(bin)) throw new Error(`reprise not found at ${bin}: run \`cargo build\` in ${REPO_ROOT} or set REPRISE_BIN`);
  return bin;
}

/** A loopback port that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** A stopped server with its own port and data directory; `start()` it. `args` go to `reprise start`. */
export async function createReprise({ args = [] } = {}) {
  const bin = binaryPath();
  const dataDir = await mkdtemp(join(tmpdir(), 'reprise-browser-'));
  const port = await freePort();
  mkdirSync(OUTPUT_DIR, { recursive: true });
  const log = createWriteStream(join(OUTPUT_DIR, 'reprise.log'));
  let child = null;
  let exited = null;

  const server = {
    host: '127.0.0.1',
    port,
    app: APP,
    baseUrl: `http://127.0.0.1:${port}`,

    /** Starts the binary and waits until GET /up answers. */
    async start() {
      if (child) throw new Error('reprise is already running');
      log.write(`--- start on port ${port}\n`);
      child = spawn(bin, ['start', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir, ...args], {
        env: {
          ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('REVERB_'))),
          RUST_LOG: process.env.RUST_LOG ?? 'info,tower_http=warn',
          NO_COLOR: '1',
          REVERB_APP_ID: APP.id,
          REVERB_APP_KEY: APP.key,
          REVERB_APP_SECRET: APP.secret,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout.pipe(log, { end: false });
      child.stderr.pipe(log, { end: false });
      const running = child;
      exited = new Promise((done) => running.once('exit', (code, signal) => done({ code, signal })));
      const deadline = Date.now() + STARTUP_TIMEOUT_MS;
      while (Date.now() < deadline) {
        if (running.exitCode !== null) throw new Error(`reprise exited during start-up with ${running.exitCode}: see output/reprise.log`);
        try {
          const response = await fetch(`${server.baseUrl}/up`);
          if (response.ok) return;
        } catch {
          // not listening yet
        }
        await new Promise((done) => setTimeout(done, 50));
      }
      throw new Error(`reprise did not answer GET /up on port ${port} within ${STARTUP_TIMEOUT_MS} ms`);
    },

    /** SIGTERM (sockets are closed with 4200, the log is flushed); resolves once it exited. */
    async stop() {
      if (!child) return;
      const running = child;
      child = null;
      if (running.exitCode === null && running.signalCode === null) {
        running.kill('SIGTERM');
        const timer = setTimeout(() => running.kill('SIGKILL'), STOP_TIMEOUT_MS);
        const { code, signal } = await exited;
        clearTimeout(timer);
        log.write(`--- exited with code ${code} signal ${signal}\n`);
        if (code !== 0) throw new Error(`reprise did not stop cleanly on SIGTERM (code ${code}, signal ${signal})`);
      }
    },

    /** Stops the server if needed and removes its data directory. */
    async dispose() {
      try {
        await server.stop();
      } finally {
        await new Promise((done) => log.end(done));
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
  return server;
}
