//! Webhooks: what happens on the socket side (channels occupied and vacated, presence members
//! added and removed, client events, cache misses, subscription counts), told to the app's
//! backend as Pusher tells it, and never lost (docs/webhooks.md).
//!
//! - `sink`: where the hub and the connections hand events over, without waiting;
//! - `batcher`: one task per app: Pusher's batching and delays, then the durable queue;
//! - `queue` (+ `sled_queue`): the durable FIFO per target;
//! - `delivery`: one worker per target: signed POSTs, retries, 410.
//!
//! An app without webhooks has no sink, no batcher and no worker: nothing on any path.

pub mod batcher;
pub mod config;
pub mod delivery;
pub mod queue;
pub mod redis_queue;
pub mod sink;
pub mod sled_queue;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::config::WebhookConfig;
use self::queue::WebhookQueue;
use self::sink::WebhookSink;
use crate::config::AppConfig;
use crate::metrics::Metrics;

/// The directory under the data directory that holds the single-node queue.
pub const QUEUE_DIR: &str = "webhooks";

/// One app's figures about its webhooks (shared by its targets), exported by `/metrics`.
#[derive(Clone, Default)]
pub struct WebhookStats {
    pub sent: Counter,
    pub failed_attempts: Counter,
    /// Given up after the target's retry period.
    pub dropped_expired: Counter,
    /// Not queued: the target already had `max_pending` waiting.
    pub dropped_full: Counter,
    /// Not queued: the queue could not be written.
    pub dropped_error: Counter,
    /// Not queued: events came faster than the batcher could take them.
    pub dropped_overflow: Counter,
    /// Waiting in the queue, over the app's targets.
    pub pending: Gauge,
}

/// One target of one app.
pub struct Target {
    pub config: WebhookConfig,
    /// Its queue's name ([`WebhookConfig::target_id`]).
    pub id: String,
    /// The URL as logs show it (no credentials or query).
    pub url: String,
    app_key: String,
    app_secret: String,
    /// Wakes the delivery worker when the batcher queued something. A `Notify` keeps one permit,
    /// so a wake-up sent while the worker is busy is not lost.
    wake: Notify,
    /// Set by a 410: nothing more is queued for or sent to this target until the next start.
    stopped: AtomicBool,
    /// Set while the target's queue is full, so that is logged once per episode.
    full: AtomicBool,
    /// Set while queueing fails (a full or failing disk, Redis away), logged once per episode.
    failing: AtomicBool,
    pub stats: WebhookStats,
}

impl Target {
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// After a push: `queued` webhooks are in the queue, `dropped` did not fit.
    fn queued(&self, queued: usize, dropped: usize) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(target = %self.url, "webhooks can be queued again");
        }
        self.stats.pending.inc_by(i64::try_from(queued).unwrap_or(i64::MAX));
        if queued > 0 {
            self.wake.notify_one();
        }
        if dropped > 0 {
            self.stats.dropped_full.inc_by(dropped as u64);
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::error!(target = %self.url, max_pending = self.config.max_pending,
                    "webhook queue of this target is full: new webhooks are dropped (counted) until it drains");
            }
        } else if queued > 0 && self.full.swap(false, Ordering::Relaxed) {
            tracing::info!(target = %self.url, "webhook queue of this target has room again");
        }
    }

    fn queue_failed(&self, error: &str, dropped: usize) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(%error, target = %self.url, "webhooks cannot be queued: they are dropped (counted) until \
                the queue can be written again");
        }
        self.stats.dropped_error.inc_by(dropped as u64);
    }
}

/// One app's webhooks: the sink its hub and connections feed, and its targets.
pub struct AppWebhooks {
    pub sink: Arc<WebhookSink>,
    /// Where the hub tells this node's channel changes (occupied, vacated, counts, members): the
    /// app's sink on a single node; in cluster mode the relay that lets the cluster decide.
    pub local: Arc<WebhookSink>,
    pub targets: Vec<Arc<Target>>,
}

/// What `start` needs of cluster mode, which decides departures and occupancy cluster-wide.
pub trait Clustered: Send + Sync {
    /// Confirms app `app_id`'s held departures against the cluster.
    fn departures(&self, app_id: &str) -> Arc<dyn batcher::Departures>;
    /// Starts the relay of app `app_id`'s local channel changes to the cluster, which tells
    /// `sink` the cluster-wide ones; returns the sink that feeds the relay.
    fn relay(&self, app_id: &str, sink: Arc<WebhookSink>) -> Arc<WebhookSink>;
}

/// Starts the batcher of every app that has targets and a delivery worker per target, on
/// `queue`. Workers stop when `shutdown` fires; a batcher when its app's sink is dropped (with
/// the server state), after queueing whatever it still held. Returns each app's webhooks by id.
pub async fn start(
    apps: &[AppConfig],
    queue: Arc<dyn WebhookQueue>,
    clustered: Option<&dyn Clustered>,
    metrics: &Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> HashMap<String, Arc<AppWebhooks>> {
    warn_of_orphans(apps, &queue).await;
    let client = delivery::client();
    let mut started = HashMap::new();
    for app in apps.iter().filter(|app| !app.webhooks.is_empty()) {
        let stats = metrics.webhook_stats(&app.id);
        let kinds = app.webhooks.iter().fold(0, |kinds, target| kinds | target.kinds());
        let (sink, events_rx) = WebhookSink::new(&app.id, kinds, stats.clone());
        let mut targets = Vec::new();
        for config in &app.webhooks {
            let target = Arc::new(Target {
                id: config.target_id(&app.id),
                url: config.url_for_logs(),
                config: config.clone(),
                app_key: app.key.clone(),
                app_secret: app.secret.clone(),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
                full: AtomicBool::new(false),
                failing: AtomicBool::new(false),
                stats: stats.clone(),
            });
            count_pending(&target, &queue).await;
            tracker.spawn(delivery::run(Arc::clone(&target), Arc::clone(&queue), client.clone(), shutdown.clone()));
            targets.push(target);
        }
        let sink = Arc::new(sink);
        let (departures, local) = match clustered {
            Some(clustered) => (Some(clustered.departures(&app.id)), clustered.relay(&app.id, Arc::clone(&sink))),
            None => (None, Arc::clone(&sink)),
        };
        tracker.spawn(batcher::run(events_rx, targets.clone(), Arc::clone(&queue), departures));
        tracing::info!(app = %app.id, targets = targets.len(), "webhooks on");
        started.insert(app.id.clone(), Arc::new(AppWebhooks { sink, local, targets }));
    }
    started
}

/// Adds what `target` has pending from before the start to the gauge (and says so). A shared
/// queue's count is the cluster's, not this node's to add up.
async fn count_pending(target: &Target, queue: &Arc<dyn WebhookQueue>) {
    if queue.shared() {
        return;
    }
    let (queue, id) = (Arc::clone(queue), target.id.clone());
    match tokio::task::spawn_blocking(move || queue.pending(&id)).await {
        Ok(Ok(0)) | Err(_) => {}
        Ok(Ok(pending)) => {
            target.stats.pending.inc_by(i64::try_from(pending).unwrap_or(i64::MAX));
            tracing::info!(target = %target.url, pending, "webhooks pending from before the start");
        }
        Ok(Err(error)) => tracing::error!(%error, target = %target.url, "cannot count pending webhooks"),
    }
}

/// Says at start-up which queued webhooks belong to no configured target (its URL changed, or it
/// was removed): they are kept, not sent, until the target is configured again.
async fn warn_of_orphans(apps: &[AppConfig], queue: &Arc<dyn WebhookQueue>) {
    let configured: Vec<String> =
        apps.iter().flat_map(|app| app.webhooks.iter().map(|target| target.target_id(&app.id))).collect();
    let queue = Arc::clone(queue);
    let orphans = tokio::task::spawn_blocking(move || {
        let mut orphans = Vec::new();
        for target in queue.targets()?.into_iter().filter(|target| !configured.contains(target)) {
            let pending = queue.pending(&target)?;
            if pending > 0 {
                orphans.push((target, pending));
            }
        }
        Ok::<_, queue::QueueError>(orphans)
    })
    .await;
    if let Ok(Ok(orphans)) = orphans {
        for (target, pending) in orphans {
            tracing::warn!(%target, pending, "webhooks are queued for a target that is no longer configured (its URL \
                changed or it was removed); they are kept, and sent if it is configured again");
        }
    }
}
