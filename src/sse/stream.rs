//! One event stream's state: its channels, the hub socket it is subscribed with (released in
//! `Drop`), and where each channel stands (the composite cursor and the replay watermarks).

use std::sync::Arc;

use reprise_api::sse::cursor::CursorWriter;
use reprise_api::{ChannelName, EventId, frames, sse};
use reprise_storage::StoredEvent;

use crate::apps::App;
use crate::cluster::Cluster;
use crate::connection::ConnectionSlot;
use crate::hub::{Frame, Socket};
use crate::log_service::Replay;

/// What a stream holds: subscriptions in the hub on one socket, and one of the app's connection
/// slots. However the stream ends (the client goes, a slow reader is cut, a panic), `Drop` leaves
/// every channel and gives the slot back.
pub struct Stream {
    pub app: Arc<App>,
    pub socket: Arc<Socket>,
    /// Sorted, each once: the order of the cursor's positions.
    pub channels: Vec<ChannelName>,
    /// Per channel: the id of the last event the client was given (or where it started).
    positions: Vec<EventId>,
    /// Per channel: live copies at or below this sequence were replayed already (or predate the
    /// stream); the first live event above it clears it. As `connection::Watermarks::is_replayed_already`.
    watermarks: Vec<Option<u64>>,
    /// Channels subscribed in the hub so far (a prefix of `channels`).
    subscribed: usize,
    /// Writes the cursor of each event sent into `cursor_text`, reused from event to event.
    cursor_writer: CursorWriter,
    cursor_text: String,
    _slot: ConnectionSlot,
    /// In cluster mode: told of every subscription this stream adds and drops, so the other
    /// nodes' HTTP API counts it as they count a WebSocket's.
    cluster: Option<Arc<Cluster>>,
}

impl Stream {
    /// A stream of `channels` (sorted, each once) that starts at `positions`.
    pub fn new(
        app: Arc<App>,
        socket: Arc<Socket>,
        channels: Vec<ChannelName>,
        slot: ConnectionSlot,
        cluster: Option<Arc<Cluster>>,
    ) -> Stream {
        let positions = vec![EventId::new(0, 0); channels.len()];
        let watermarks = vec![None; channels.len()];
        let cursor_writer = CursorWriter::new(&channels);
        Stream {
            app,
            socket,
            channels,
            positions,
            watermarks,
            subscribed: 0,
            cursor_writer,
            cursor_text: String::new(),
            _slot: slot,
            cluster,
        }
    }

    /// Registers the socket on every channel: from now on each event fanned out reaches its
    /// outbox (and waits there while the log is read).
    pub fn subscribe_all(&mut self) {
        for channel in &self.channels {
            // Not a presence member (streams only read), so no roster limit applies.
            let _ = self.app.hub.subscribe(channel, &self.socket, None, usize::MAX);
            self.subscribed += 1;
            if let Some(cluster) = &self.cluster {
                cluster.count_changed(&self.app.config.id, channel.as_str());
            }
        }
    }

    /// Sets channel `index`'s position without sending anything (where a resume starts).
    pub fn set_position(&mut self, index: usize, position: EventId) {
        self.positions[index] = position;
    }

    /// The cursor a client holding every event sent so far resumes from.
    pub fn cursor(&mut self) -> &str {
        self.cursor_writer.write(&mut self.cursor_text, &self.positions);
        &self.cursor_text
    }

    /// Appends what channel `index` gets at the start: the not-recovered notice, the replayed
    /// events, or a cache channel's last event; then sets its position and watermark.
    pub fn start_channel(&mut self, out: &mut String, index: usize, resumed: bool, replay: &Replay) {
        let channel = self.channels[index].as_str().to_owned();
        if resumed && !replay.recovered {
            sse::event(out, None, sse::NOT_RECOVERED, &sse::not_recovered_data(&channel, replay.head));
        }
        for event in &replay.events {
            self.send_stored(out, index, event);
        }
        if !replay.recovered {
            // Not resumed: the client starts at the head (a channel never published to starts
            // before its first event).
            self.positions[index] = replay.head.unwrap_or(EventId::new(0, 0));
            if self.channels[index].is_cache() {
                match &replay.last {
                    Some(last) => self.send_stored(out, index, last),
                    None => sse::event(out, None, sse::CACHE_MISS, &sse::cache_miss_data(&channel)),
                }
            }
        }
        self.watermarks[index] = replay.watermark;
    }

    fn send_stored(&mut self, out: &mut String, index: usize, event: &StoredEvent) {
        let channel = self.channels[index].as_str();
        let frame = frames::event_frame(&event.event, channel, &event.data, Some(event.id), event.user_id.as_deref());
        self.positions[index] = event.id;
        sse::event(out, Some(self.cursor()), &event.event, &frame);
    }

    /// Appends a live frame taken from the outbox, unless it is not a logged event (presence
    /// member changes, unlogged client events: streams carry only what has an id) or a copy of
    /// one the start already sent.
    pub fn send_live(&mut self, out: &mut String, frame: &Frame) {
        let Some(logged) = &frame.logged else { return };
        let Ok(index) = self.channels.binary_search_by(|c| c.as_str().cmp(logged.channel.as_str())) else { return };
        match self.watermarks[index] {
            Some(watermark) if logged.id.seq() <= watermark => return,
            // Live events of a channel arrive in sequence order: none after this one can be a
            // duplicate.
            Some(_) => self.watermarks[index] = None,
            None => {}
        }
        self.positions[index] = logged.id;
        let cursor = self.cursor();
        match &logged.event {
            Some(name) => sse::event(out, Some(cursor), name, &frame.text),
            // A skipped marker: not delivered, but the cursor moves past it.
            None => sse::position(out, cursor),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.socket.close_outbox();
        for channel in &self.channels[..self.subscribed] {
            self.app.hub.unsubscribe(channel.as_str(), &self.socket);
            if let Some(cluster) = &self.cluster {
                cluster.count_changed(&self.app.config.id, channel.as_str());
            }
        }
    }
}
