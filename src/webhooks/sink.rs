//! Where the server tells an app's webhooks what happened: a bounded queue into the app's batcher,
//! fed with `try_send` so that a subscribe, a leave or a client event never waits on webhooks.
//! An app without webhooks has no sink at all, so the hot path pays one `Option` check.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;

use reprise_api::webhook::{WebhookEvent, WebhookKind};
use tokio::sync::mpsc;

/// Events waiting for the batcher. The batcher takes them as fast as they come (it only sorts
/// them into batches; the disk write is per batch), so this fills only if the disk stalls: then
/// events are dropped and counted rather than slowing sockets down. 64 Ki events is about 10 MB.
pub const SINK_CAPACITY_EVENTS: usize = 65_536;

pub struct WebhookSink {
    /// The event types some target of the app wants ([`WebhookKind::bit`]): the others are never
    /// built.
    kinds: u8,
    events_tx: mpsc::Sender<WebhookEvent>,
    /// Events dropped because the batcher's queue was full.
    dropped: Counter,
    /// Set while the queue is full, so the warning is logged once per episode.
    full: AtomicBool,
    app_id: String,
    stats: super::WebhookStats,
}

impl WebhookSink {
    pub fn new(app_id: &str, kinds: u8, stats: super::WebhookStats) -> (Self, mpsc::Receiver<WebhookEvent>) {
        let (events_tx, events_rx) = mpsc::channel(SINK_CAPACITY_EVENTS);
        let sink = WebhookSink {
            kinds,
            events_tx,
            dropped: stats.dropped_overflow.clone(),
            full: AtomicBool::new(false),
            app_id: app_id.to_owned(),
            stats,
        };
        (sink, events_rx)
    }

    /// The app's webhook figures (for a sink that feeds this one).
    pub fn stats(&self) -> super::WebhookStats {
        self.stats.clone()
    }

    /// Whether some target wants events of this kind (check before building one).
    pub fn wants(&self, kind: WebhookKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// Hands `event` to the batcher without waiting. Safe under a hub lock: `try_send` takes no
    /// lock the hub holds.
    pub fn emit(&self, event: WebhookEvent) {
        if !self.wants(event.kind()) {
            return;
        }
        match self.events_tx.try_send(event) {
            Ok(()) => {
                if self.full.load(Ordering::Relaxed) {
                    self.full.store(false, Ordering::Relaxed);
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(app = %self.app_id, capacity = SINK_CAPACITY_EVENTS,
                        "webhook events are coming faster than they can be queued; dropping them until it catches up");
                }
            }
            // The batcher is gone: the server is shutting down.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
