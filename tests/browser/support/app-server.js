// The "Laravel app" the browser talks to, as a small Node HTTP server:
//
//   GET  /                    the order page (page/index.html, with the Reverb settings filled in)
//   GET  /js/*, /css/*        the page's own scripts and styles (page/)
//   GET  /js/reprise-replay.js the module under test (api/js/reprise-replay.js)
//   GET  /vendor/*            the real pusher-js and laravel-echo browser builds from node_modules
//   POST /broadcasting/auth   signs like Laravel's: HMAC-SHA256 of `socket_id:channel` with the
//                             app secret, after the routes/channels.php check (user 1 owns order 1)
//   GET  /orders/1            the order as the database has it, with the channel's head read from
//                             Reprise first (what a controller rendering the page would pass on)
//   GET  /stream              the order page with no library: a plain EventSource on a stream URL
//                             signed for private-orders.1 (the Laravel route of docs/replay.md)

import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const PAGE_DIR = resolve(HERE, '../page');
const MODULES = resolve(HERE, '../node_modules');

const STATIC = {
  '/js/reprise-replay.js': resolve(HERE, '../../../api/js/reprise-replay.js'),
  '/vendor/pusher-js/pusher.js': join(MODULES, 'pusher-js/dist/web/pusher.js'),
  '/vendor/laravel-echo/echo.js': join(MODULES, 'laravel-echo/dist/echo.js'),
};

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8' };

/**
 * @param {object} options
 * @param {{key: string, secret: string}} options.app
 * @param {number} options.wsPort where the page's WebSocket goes (the gate in front of Reprise)
 * @param {() => Promise<object>} options.order the order as the database has it, with its channel's head
 * @param {number} [options.streamPort] where the stream page's EventSource goes (defaults to wsPort)
 */
export async function startAppServer({ app, wsPort, order, streamPort = wsPort }) {
  const server = createServer(async (request, response) => {
    try {
      await route(request, response);
    } catch (error) {
      response.writeHead(500, { 'content-type': 'text/plain' }).end(String(error?.stack ?? error));
    }
  });

  async function route(request, response) {
    const url = new URL(request.url, 'http://localhost');
    if (request.method === 'GET' && url.pathname === '/') {
      const html = (await readFile(join(PAGE_DIR, 'index.html'), 'utf8')).replace(
        '__REVERB_CONFIG__',
        JSON.stringify({ key: app.key, host: '127.0.0.1', port: wsPort }),
      );
      return send(response, 200, TYPES['.html'], html);
    }
    if (request.method === 'GET' && url.pathname === '/stream') {
      const html = (await readFile(join(PAGE_DIR, 'stream.html'), 'utf8')).replace(
        '__STREAM_URL__',
        JSON.stringify(signedStreamUrl(app, `http://127.0.0.1:${streamPort}`, ['private-orders.1'], '1')),
      );
      return send(response, 200, TYPES['.html'], html);
    }
    if (request.method === 'POST' && url.pathname === '/broadcasting/auth') {
      const form = new URLSearchParams(await body(request));
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      // routes/channels.php: Broadcast::channel('orders.{order}', fn ($user, Order $order) => $user->id === $order->user_id)
      if (channel !== 'private-orders.1' || !/^\d+\.\d+$/.test(socketId ?? '')) {
        return send(response, 403, 'application/json', JSON.stringify({ message: 'This action is unauthorized.' }));
      }
      const signature = createHmac('sha256', app.secret).update(`${socketId}:${channel}`).digest('hex');
      return send(response, 200, 'application/json', JSON.stringify({ auth: `${app.key}:${signature}` }));
    }
    if (request.method === 'GET' && url.pathname === '/orders/1') {
      return send(response, 200, 'application/json', JSON.stringify(await order()), { 'cache-control': 'no-store' });
    }
    if (request.method === 'GET') {
      const file = STATIC[url.pathname] ?? pageFile(url.pathname);
      if (file) {
        const text = await readFile(file, 'utf8').catch(() => null);
        if (text !== null) return send(response, 200, TYPES[extname(file)] ?? 'application/octet-stream', text);
      }
    }
    return send(response, 404, 'text/plain', 'not found');
  }

  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise((done) => server.close(() => done()));
    },
  };
}

/**
 * A stream URL with a grant, as the Laravel route in docs/replay.md makes it: an HMAC-SHA256 with
 * the app secret of the channel list, an expiry and the user id.
 */
export function signedStreamUrl(app, base, channels, userId) {
  const expires = Math.floor(Date.now() / 1000) + 8 * 3600;
  const signed = ['reprise-stream', app.key, expires, channels.length, ...channels, userId ?? ''].join('\n');
  const grant = `${expires}:${createHmac('sha256', app.secret).update(signed).digest('hex')}${userId == null ? '' : `:${userId}`}`;
  const query = channels.map((channel) => `channel=${encodeURIComponent(channel)}`).join('&');
  return `${base}/app/${app.key}/stream?${query}&grant=${encodeURIComponent(grant)}`;
}

/** A file under page/ for /js/<name> or /css/<name>, never outside it. */
function pageFile(pathname) {
  if (!/^\/(js|css)\/[\w.-]+$/.test(pathname)) return null;
  const file = normalize(join(PAGE_DIR, pathname));
  return file.startsWith(PAGE_DIR) ? file : null;
}

function send(response, status, type, text, headers = {}) {
  response.writeHead(status, { 'content-type': type, ...headers }).end(text);
}

async function body(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}
