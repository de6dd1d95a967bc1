// Starts a real `reprise` binary for one test file and stops it afterwards.
//
// Each test file gets its own server (own port, own fresh data directory), configured the way a
// Laravel app configures Reverb: one app through REVERB_APP_ID / REVERB_APP_KEY / REVERB_APP_SECRET.
// The server's output (tracing goes to stderr) is kept in `.logs/<test file>.log` next to this
// directory, so a failure can be read after the run; set REPRISE_E2E_VERBOSE=1 to also stream it.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';

import { withTimeout } from './wait.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = resolve(HERE, '../../..');
const LOG_DIR = resolve(HERE, '../.logs');

/** How long a server may take to answer GET /up (a debug build opening sled is quick). */
const STARTUP_TIMEOUT_MS = 10_000;
/** How long SIGTERM gets before SIGKILL: the server's own shutdown grace is 5 s by default. */
const SIGTERM_GRACE_MS = 6_000;
/** Attempts at start-up: a port picked as free can be taken by someone else before we bind it. */
const START_ATTEMPTS = 3;

export const DEFAULT_APP = Object.freeze({
  id: 'e2e-app',
  key: 'e2e-key',
  secret: 'e2e-secret',
});

/** The binary under test: REPRISE_BIN, or the debug build of this repository. */
export function binaryPath() {
  const bin = process.env.REPRISE_BIN ?? join(REPO_ROOT, 'target/debug/reprise');
  if (!existsSync(bin)) {
    throw new Error(`reprise binary not found at ${bin}: run \`cargo build\` in ${REPO_ROOT} or set REPRISE_BIN`);
  }
  return bin;
}

/** A TCP port that was free a moment ago (the OS picks it). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolvePort(port));
    });
  });
}

/** The parent's environment without any REVERB_* variable, so the developer's shell cannot leak in. */
function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('REVERB_')));
}

/**
 * Starts `reprise start` for one app and waits until GET /up answers 200.
 *
 * @param {object} [options]
 * @param {{id: string, key: string, secret: string}} [options.app] the app (REVERB_APP_*)
 * @param {Record<string, string>} [options.env] extra environment (e.g. REVERB_APP_MAX_CONNECTIONS)
 * @param {string} [options.name] names the log file (defaults to the test file's name)
 */
export async function startServer({ app = DEFAULT_APP, env = {}, name = testFileName() } = {}) {
  const bin = binaryPath();
  const dataDir = await mkdtemp(join(tmpdir(), 'reprise-e2e-'));
  mkdirSync(LOG_DIR, { recursive: true });
  const logPath = join(LOG_DIR, `${name}.log`);
  let lastError;
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt += 1) {
    try {
      return await launch({ bin, app, env, port: await freePort(), dataDir, logPath, attempt });
    } catch (error) {
      lastError = error;
    }
  }
  await rm(dataDir, { recursive: true, force: true });
  throw lastError;
}

async function launch({ bin, app, env, port, dataDir, logPath, attempt }) {
  const log = createWriteStream(logPath, { flags: attempt === 1 ? 'w' : 'a' });
  const output = [];
  const child = spawn(
    bin,
    ['start', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir],
    {
      env: {
        ...cleanEnv(),
        RUST_LOG: process.env.RUST_LOG ?? 'info,tower_http=warn',
        NO_COLOR: '1',
        REVERB_APP_ID: app.id,
        REVERB_APP_KEY: app.key,
        REVERB_APP_SECRET: app.secret,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const exited = new Promise((resolveExit) => {
    child.once('exit', (code, signal) => resolveExit({ code, signal }));
  });
  for (const stream of [child.stdout, child.stderr]) {
    stream.on('data', (chunk) => {
      output.push(chunk);
      log.write(chunk);
      if (process.env.REPRISE_E2E_VERBOSE) process.stderr.write(chunk);
    });
  }
  let stopping;
  const server = {
    host: '127.0.0.1',
    port,
    pid: child.pid,
    app,
    dataDir,
    logPath,
    // Below Reverb's path prefix when the test sets one.
    baseUrl: `http://127.0.0.1:${port}${env.REVERB_SERVER_PATH ?? ''}`,
    /** Everything the server printed so far. */
    output: () => Buffer.concat(output).toString('utf8'),
    /**
     * SIGTERM, then SIGKILL after a grace period; removes the data directory. Resolves to the
     * exit `{ code, signal }`. Idempotent: later calls return the first call's promise.
     */
    stop: () => {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), SIGTERM_GRACE_MS);
          await exited;
          clearTimeout(timer);
        }
        await new Promise((done) => log.end(done));
        await rm(dataDir, { recursive: true, force: true });
        return exited;
      })();
      return stopping;
    },
  };
  try {
    await withTimeout(
      Promise.race([
        waitUntilUp(server.baseUrl),
        exited.then(({ code, signal }) => {
          throw new Error(`reprise exited during start-up (code ${code}, signal ${signal}):\n${server.output()}`);
        }),
      ]),
      STARTUP_TIMEOUT_MS,
      `reprise to answer GET /up on port ${port}`,
    );
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    await new Promise((done) => log.end(done));
    throw error;
  }
  return server;
}

async function waitUntilUp(baseUrl) {
  for (;;) {
    try {
      const response = await fetch(`${baseUrl}/up`);
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The calling test file's name without extension, e.g. `presence.test`. */
function testFileName() {
  const entry = process.argv.find((arg) => arg.endsWith('.test.js'));
  return entry ? basename(entry, '.js') : `reprise-${process.pid}`;
}

/**
 * Registers file-level hooks that start one server before the file's tests and stop it after.
 * The stop also checks that the server was still running and exits cleanly on SIGTERM, so a
 * crash during the file fails it. Returns a getter: the server exists only once `before` ran.
 */
export function useServer(options) {
  let server;
  before(async () => {
    server = await startServer(options);
  });
  after(async () => {
    if (!server) return;
    const { code, signal } = await server.stop();
    if (code !== 0) {
      const tail = server.output().split('\n').slice(-20).join('\n');
      throw new Error(`reprise did not exit cleanly (code ${code}, signal ${signal}); log ${server.logPath}:\n${tail}`);
    }
  });
  return () => {
    if (!server) throw new Error('the server is not started yet: call this inside a test');
    return server;
  };
}
