// The order page with no library at all: one `new EventSource(url)`. The browser reconnects by
// itself and sends the last `id:` it saw as `Last-Event-ID`; Reprise replays what was missed.

const timeline = document.querySelector('#timeline');
const connection = document.querySelector('#connection');
const notice = document.querySelector('#notice');

/** What the page received, for the test: one entry per status event, in order. */
window.received = [];
/** How many times the stream was (re)opened. */
window.opens = 0;

const source = new EventSource(window.STREAM_URL);

source.onopen = () => {
  window.opens += 1;
  connection.dataset.state = 'connected';
  connection.textContent = window.opens === 1 ? 'live' : `live (reconnected ${window.opens - 1}×)`;
};

source.onerror = () => {
  // EventSource reconnects by itself (after the server's `retry:`); CLOSED means it gave up.
  const closed = source.readyState === EventSource.CLOSED;
  connection.dataset.state = closed ? 'closed' : 'reconnecting';
  connection.textContent = closed ? 'stream closed' : 'reconnecting…';
};

source.addEventListener('status', (event) => {
  const frame = JSON.parse(event.data); // {event, channel, data, id}: data as the backend sent it
  const status = JSON.parse(frame.data);
  window.received.push({ id: frame.id, status: status.status, lastEventId: event.lastEventId });
  const item = document.createElement('li');
  item.dataset.status = status.status;
  item.dataset.id = frame.id;
  item.innerHTML = '<strong></strong> <time></time> <code></code>';
  item.querySelector('strong').textContent = status.label;
  item.querySelector('time').textContent = new Date(status.at).toLocaleTimeString('en-GB');
  item.querySelector('code').textContent = frame.id;
  timeline.append(item);
});

source.addEventListener('reprise:not_recovered', (event) => {
  const { channel } = JSON.parse(event.data);
  notice.hidden = false;
  notice.textContent = `Some updates on ${channel} are no longer in the server's log: reload the order.`;
});
