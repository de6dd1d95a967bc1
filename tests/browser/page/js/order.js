// The order page: a timeline of the order's status changes, kept live by Echo.
//
// Where the timeline comes from:
//   - first visit: GET /orders/1 (the order as the database has it, plus the channel's head at
//     that moment, which the replay module resumes from: nothing published in between is lost);
//   - reload: the timeline this tab kept in sessionStorage, and the module's cursor kept with it;
//   - the server could not replay what was missed: GET /orders/1 again (the refetch hook).
// The listener appends what it is given, so a duplicate or a reordering would show on the page.

import { ZERO_ID } from 'reprise-replay';
import { replay } from './echo.js';

const CHANNEL = 'private-orders.1';
const SAVED = 'order-1-timeline';

const timeline = document.querySelector('#timeline');
const notice = document.querySelector('#notice');
const refetched = document.querySelector('#refetched');
const connection = document.querySelector('#connection');

/** What the page shows, persisted so that a reload starts from it. */
let entries = [];
/** Every event the listener received, in order, and the module (the test reads both). */
window.received = [];
window.replay = replay;

function render() {
  timeline.replaceChildren(
    ...entries.map((entry) => {
      const item = document.createElement('li');
      item.dataset.status = entry.status;
      item.dataset.source = entry.source;
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = entry.label;
      const at = document.createElement('time');
      at.dateTime = entry.at;
      at.textContent = new Date(entry.at).toLocaleTimeString('en-GB');
      const source = document.createElement('span');
      source.className = `source ${entry.source}`;
      source.textContent = entry.source;
      item.append(label, at, source);
      return item;
    }),
  );
  sessionStorage.setItem(SAVED, JSON.stringify(entries));
}

function say(text) {
  notice.textContent = text;
  notice.hidden = false;
}

async function loadOrder() {
  const response = await fetch('/orders/1', { headers: { accept: 'application/json' } });
  if (!response.ok) throw new Error(`GET /orders/1 answered ${response.status}`);
  return response.json();
}

function fromServer(order) {
  return order.statuses.map((s) => ({ status: s.status, label: s.label, at: s.at, source: 'server' }));
}

// The server no longer had the events this tab missed (the log was compacted): refetch.
replay.onNotRecovered(CHANNEL, async () => {
  say('Reconnected, but some updates were no longer in the log: reloading the order…');
  const order = await loadOrder();
  entries = fromServer(order);
  render();
  refetched.dataset.count = String(Number(refetched.dataset.count) + 1);
  refetched.hidden = false;
  say(`Order reloaded from the server (${order.statuses.length} updates).`);
});

replay.onRecovered(CHANNEL, ({ count }) => {
  if (count > 0) say(`Back online: ${count} missed update${count === 1 ? '' : 's'} replayed.`);
});

const saved = sessionStorage.getItem(SAVED);
if (saved) {
  entries = JSON.parse(saved);
} else {
  const order = await loadOrder();
  entries = fromServer(order);
  replay.resumeFrom(CHANNEL, order.head ?? ZERO_ID);
}
render();

window.Echo.private('orders.1').listen('.status', (event) => {
  const source = replay.isReplaying(CHANNEL) ? 'replayed' : 'live';
  window.received.push({ status: event.status, source });
  entries.push({ status: event.status, label: event.label, at: event.at, source });
  render();
});

const pusher = window.Echo.connector.pusher;
const showState = ({ current }) => {
  connection.dataset.state = current;
  connection.textContent = current;
};
pusher.connection.bind('state_change', showState);
showState({ current: pusher.connection.state });
document.body.dataset.ready = 'true';
