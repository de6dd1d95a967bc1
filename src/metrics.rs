//! Prometheus metrics: one [`Metrics`] registry shared by the server, served as text at
//! `/metrics` on a listener of its own (off unless `metrics_port` is set), with a small live
//! status page at `/` that polls `/status.json`.
//!
//! Counters on the hot path are pre-resolved per app ([`AppMetrics`], looked up once per
//! connection or publish group): an atomic increment each, no allocation. Figures the server
//! already keeps (open connections, slow consumers, channels, subscriptions) are read at scrape
//! time instead of being counted twice. Every name is documented in `docs/metrics.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use reprise_storage::LogStats;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ServerState;
use crate::webhooks::WebhookStats;

/// `prometheus-client` writes the OpenMetrics text format, which Prometheus reads (and which is
/// the plain Prometheus text format plus `# EOF`).
const TEXT_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Commit (append + fsync) latency buckets, in seconds: from a page-cache write to a very slow disk.
const COMMIT_SECONDS_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];
/// Publishes per group commit: powers of two up to the committer's cap of 1024.
const COMMIT_SIZE_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// How often the log's size figures are read while metrics are on. The embedded log keeps them
/// as running counts, so this is a few file stats.
pub const LOG_FIGURES_EVERY_EMBEDDED: Duration = Duration::from_secs(5);
/// The same for the cluster's Redis log, which has to scan its keys (and which every node reads
/// alike): rarely.
pub const LOG_FIGURES_EVERY_REDIS: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    app: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    app: String,
    /// The close code the server sent, or `client` / `transport`.
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    app: String,
    /// `expired` (not delivered within the retry period), `full` (the target's queue was full),
    /// `overflow` (events came faster than they could be queued), `error` (the queue failed).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CompactionLabels {
    app: String,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Cluster mode's own figures (registered only in cluster mode).
pub struct ClusterMetrics {
    nodes: Gauge,
    bus_messages: Family<KindLabel, Counter>,
    /// Bus connections lost and made again.
    pub bus_reconnects: Counter,
    /// Events delivered from the shared log because their bus message was missed.
    pub gap_events: Counter,
    /// Channels whose subscribers here were asked to resume: events were compacted away before
    /// this node delivered them.
    pub channel_restarts: Counter,
}

impl ClusterMetrics {
    /// Counts one bus message of `kind` heard (`event`, `client_event`, `member_added`, ...).
    pub fn bus_message(&self, kind: &'static str) {
        self.bus_messages.get_or_create(&KindLabel { kind }).inc();
    }
}

/// Who asked for a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// `POST /apps/{id}/compact`.
    Api,
    /// The app's retention settings, applied in the background.
    Retention,
}

/// What became of a publish (one HTTP API call or client event), as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    Acknowledged,
    /// The log refused the append.
    Refused,
    /// Published but the flush failed.
    NotDurable,
    /// The committer failed mid-group, or the server is shutting down.
    Unknown,
}

/// How a connection ended, for `reprise_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The server sent this close code.
    ByServer(u16),
    /// The client sent a close frame or hung up.
    ByClient,
    /// The socket broke (or a write stalled).
    Transport,
}

/// One app's hot-path counters, resolved once.
#[derive(Clone)]
pub struct AppMetrics {
    app: String,
    pub connections_accepted: Counter,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub fan_out_frames: Counter,
    pub fan_out_bytes: Counter,
    pub resumes_recovered: Counter,
    pub resumes_not_recovered: Counter,
    pub events_replayed: Counter,
    pub client_events_rate_limited: Counter,
    acknowledged: Counter,
    refused: Counter,
    not_durable: Counter,
    unknown: Counter,
}

impl AppMetrics {
    /// Publishes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.get()
    }

    /// Publishes that failed so far, whatever the reason.
    pub fn failed(&self) -> u64 {
        self.refused.get() + self.not_durable.get() + self.unknown.get()
    }

    pub fn publish(&self, outcome: PublishOutcome) {
        match outcome {
            PublishOutcome::Acknowledged => &self.acknowledged,
            PublishOutcome::Refused => &self.refused,
            PublishOutcome::NotDurable => &self.not_durable,
            PublishOutcome::Unknown => &self.unknown,
        }
        .inc();
    }
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    apps: HashMap<String, Arc<AppMetrics>>,
    closed: Family<ClosedLabels, Counter>,
    connections_open: Family<AppLabel, Gauge>,
    channels: Family<AppLabel, Gauge>,
    subscriptions: Family<AppLabel, Gauge>,
    presence_members: Family<AppLabel, Gauge>,
    slow_consumers: Family<AppLabel, Counter>,
    compactions: Family<CompactionLabels, Counter>,
    compacted_events: Family<CompactionLabels, Counter>,
    pub commit_size: Histogram,
    pub commit_seconds: Histogram,
    flush_seconds: Histogram,
    log_events: Gauge,
    log_channels: Gauge,
    log_size: Gauge,
    /// The log's figures as last read (None until the first read succeeds), for the status page.
    log_figures: Mutex<Option<LogStats>>,
    /// In cluster mode.
    pub cluster: Option<ClusterMetrics>,
    /// When the server started, for the status page's uptime.
    started: Instant,
    webhooks_sent: Family<AppLabel, Counter>,
    webhook_attempts_failed: Family<AppLabel, Counter>,
    webhooks_dropped: Family<DroppedLabels, Counter>,
    webhooks_pending: Family<AppLabel, Gauge>,
    /// Scrapes refresh the scrape-time figures one at a time, so counters copied from the hub
    /// are never advanced twice.
    scrape: Mutex<()>,
}

impl Metrics {
    /// The metrics of the apps with these ids.
    pub fn new<'a>(app_ids: impl IntoIterator<Item = &'a str>) -> Metrics {
        let mut registry = Registry::with_prefix("reprise");
        let accepted = Family::<AppLabel, Counter>::default();
        registry.register("connections_accepted", "WebSocket connections accepted", accepted.clone());
        let closed = Family::<ClosedLabels, Counter>::default();
        registry.register("connections_closed", "WebSocket connections closed, by close code", closed.clone());
        let connections_open = Family::<AppLabel, Gauge>::default();
        registry.register("connections_open", "WebSocket connections open now", connections_open.clone());
        let channels = Family::<AppLabel, Gauge>::default();
        registry.register("channels", "Channels with a subscriber on this node", channels.clone());
        let subscriptions = Family::<AppLabel, Gauge>::default();
        registry.register("subscriptions", "Channel subscriptions on this node", subscriptions.clone());
        let presence_members = Family::<AppLabel, Gauge>::default();
        registry.register(
            "presence_members",
            "Members of presence channels on this node, summed over channels",
            presence_members.clone(),
        );
        let slow_consumers = Family::<AppLabel, Counter>::default();
        registry.register("slow_consumers", "Sockets closed because their outbox overflowed", slow_consumers.clone());
        let messages_in = Family::<AppLabel, Counter>::default();
        registry.register("messages_received", "WebSocket messages received from clients", messages_in.clone());
        let bytes_in = Family::<AppLabel, Counter>::default();
        registry.register("received_bytes", "Bytes of WebSocket messages received from clients", bytes_in.clone());
        let fan_out_frames = Family::<AppLabel, Counter>::default();
        registry.register(
            "fan_out_frames",
            "Live frames written to sockets (published and presence events)",
            fan_out_frames.clone(),
        );
        let fan_out_bytes = Family::<AppLabel, Counter>::default();
        registry.register("fan_out_sent_bytes", "Bytes of the live frames written to sockets", fan_out_bytes.clone());
        let publishes = Family::<OutcomeLabels, Counter>::default();
        registry.register("publishes", "Publishes answered, by outcome", publishes.clone());
        let recovered = Family::<OutcomeLabels, Counter>::default();
        registry.register("resumes", "Subscriptions that resumed from an event id, by outcome", recovered.clone());
        let replayed = Family::<AppLabel, Counter>::default();
        registry.register("events_replayed", "Events replayed to resuming subscribers", replayed.clone());
        let rate_limited = Family::<AppLabel, Counter>::default();
        registry.register(
            "client_events_rate_limited",
            "Client events refused by the rate limit",
            rate_limited.clone(),
        );
        let compactions = Family::<CompactionLabels, Counter>::default();
        registry.register("compactions", "Compactions of an app's log (one channel or all)", compactions.clone());
        let compacted_events = Family::<CompactionLabels, Counter>::default();
        registry.register("compacted_events", "Events removed from the log by compaction", compacted_events.clone());
        let commit_size = Histogram::new(COMMIT_SIZE_BUCKETS);
        registry.register("commit_publishes", "Publishes committed together in one group commit", commit_size.clone());
        let commit_seconds = Histogram::new(COMMIT_SECONDS_BUCKETS);
        registry.register_with_unit(
            "commit_duration",
            "Time to append (and with sync durability, fsync) one group",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        let flush_seconds = Histogram::new(COMMIT_SECONDS_BUCKETS);
        registry.register_with_unit(
            "flush_duration",
            "Time to make the log durable (fsync): per group with sync durability, per period with buffered",
            Unit::Seconds,
            flush_seconds.clone(),
        );
        let log_events = Gauge::default();
        registry.register(
            "log_events",
            "Events the log holds (every app; the cluster's in cluster mode)",
            log_events.clone(),
        );
        let log_channels = Gauge::default();
        registry.register("log_channels", "Channels the log has ever been appended to", log_channels.clone());
        let log_size = Gauge::default();
        registry.register_with_unit(
            "log_size",
            "Size of the log: on disk for the embedded log, in Redis's memory in cluster mode",
            Unit::Bytes,
            log_size.clone(),
        );
        let webhooks_sent = Family::<AppLabel, Counter>::default();
        registry.register("webhooks_sent", "Webhook requests delivered (answered 2xx)", webhooks_sent.clone());
        let webhook_attempts_failed = Family::<AppLabel, Counter>::default();
        registry.register(
            "webhook_attempts_failed",
            "Webhook delivery attempts that failed (timeout, connection error, non-2xx) and are retried",
            webhook_attempts_failed.clone(),
        );
        let webhooks_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register(
            "webhooks_dropped",
            "Webhooks (or events) never delivered, by reason",
            webhooks_dropped.clone(),
        );
        let webhooks_pending = Family::<AppLabel, Gauge>::default();
        registry.register("webhooks_pending", "Webhook requests queued, not yet delivered", webhooks_pending.clone());
        let apps = app_ids
            .into_iter()
            .map(|id| {
                let app = AppLabel { app: id.to_owned() };
                let outcome = |family: &Family<OutcomeLabels, Counter>, outcome| {
                    family.get_or_create(&OutcomeLabels { app: id.to_owned(), outcome }).clone()
                };
                let metrics = AppMetrics {
                    app: id.to_owned(),
                    connections_accepted: accepted.get_or_create(&app).clone(),
                    messages_in: messages_in.get_or_create(&app).clone(),
                    bytes_in: bytes_in.get_or_create(&app).clone(),
                    fan_out_frames: fan_out_frames.get_or_create(&app).clone(),
                    fan_out_bytes: fan_out_bytes.get_or_create(&app).clone(),
                    resumes_recovered: outcome(&recovered, "recovered"),
                    resumes_not_recovered: outcome(&recovered, "not_recovered"),
                    events_replayed: replayed.get_or_create(&app).clone(),
                    client_events_rate_limited: rate_limited.get_or_create(&app).clone(),
                    acknowledged: outcome(&publishes, "acknowledged"),
                    refused: outcome(&publishes, "refused"),
                    not_durable: outcome(&publishes, "not_durable"),
                    unknown: outcome(&publishes, "unknown"),
                };
                (id.to_owned(), Arc::new(metrics))
            })
            .collect();
        Metrics {
            registry,
            apps,
            closed,
            connections_open,
            channels,
            subscriptions,
            presence_members,
            slow_consumers,
            compactions,
            compacted_events,
            commit_size,
            commit_seconds,
            flush_seconds,
            log_events,
            log_channels,
            log_size,
            log_figures: Mutex::new(None),
            cluster: None,
            started: Instant::now(),
            webhooks_sent,
            webhook_attempts_failed,
            webhooks_dropped,
            webhooks_pending,
            scrape: Mutex::new(()),
        }
    }

    /// Adds cluster mode's figures (`reprise_cluster_*`).
    #[must_use]
    pub fn with_cluster(mut self) -> Metrics {
        let nodes = Gauge::default();
        self.registry.register(
            "cluster_nodes",
            "Live nodes of the cluster, as this node's last heartbeat saw them",
            nodes.clone(),
        );
        let bus_messages = Family::<KindLabel, Counter>::default();
        self.registry.register(
            "cluster_bus_messages",
            "Messages this node heard on the cluster bus, by kind",
            bus_messages.clone(),
        );
        let bus_reconnects = Counter::default();
        self.registry.register(
            "cluster_bus_reconnects",
            "Times this node's bus connection was lost and made again",
            bus_reconnects.clone(),
        );
        let gap_events = Counter::default();
        self.registry.register(
            "cluster_gap_events",
            "Events delivered from the shared log because this node missed their bus message",
            gap_events.clone(),
        );
        let channel_restarts = Counter::default();
        self.registry.register(
            "cluster_channel_restarts",
            "Channels whose subscribers on this node were asked to resume: events were compacted before delivery",
            channel_restarts.clone(),
        );
        self.cluster = Some(ClusterMetrics { nodes, bus_messages, bus_reconnects, gap_events, channel_restarts });
        self
    }

    /// The counters of app `id` (None for an app that is not configured, which cannot happen).
    pub fn app(&self, id: &str) -> Option<&Arc<AppMetrics>> {
        self.apps.get(id)
    }

    /// The webhook figures of app `id`, shared by its targets (once per app at start-up).
    pub fn webhook_stats(&self, id: &str) -> WebhookStats {
        let app = AppLabel { app: id.to_owned() };
        let dropped =
            |reason| self.webhooks_dropped.get_or_create(&DroppedLabels { app: id.to_owned(), reason }).clone();
        WebhookStats {
            sent: self.webhooks_sent.get_or_create(&app).clone(),
            failed_attempts: self.webhook_attempts_failed.get_or_create(&app).clone(),
            dropped_expired: dropped("expired"),
            dropped_full: dropped("full"),
            dropped_error: dropped("error"),
            dropped_overflow: dropped("overflow"),
            pending: self.webhooks_pending.get_or_create(&app).clone(),
        }
    }

    /// Counts a closed connection: once per connection, so the label is built here.
    pub fn closed(&self, app: &AppMetrics, how: Closed) {
        let reason = match how {
            Closed::ByServer(code) => code.to_string(),
            Closed::ByClient => "client".to_owned(),
            Closed::Transport => "transport".to_owned(),
        };
        self.closed.get_or_create(&ClosedLabels { app: app.app.clone(), reason }).inc();
    }

    /// Runs `flush` (the log's fsync) and records how long it took.
    pub fn timed_flush<T>(&self, flush: impl FnOnce() -> T) -> T {
        let started = std::time::Instant::now();
        let flushed = flush();
        self.flush_seconds.observe(started.elapsed().as_secs_f64());
        flushed
    }

    /// Counts one compaction of `app` that removed `removed` events (rare: labels built here).
    pub fn compacted(&self, app: &str, trigger: Compaction, removed: u64) {
        let trigger = match trigger {
            Compaction::Api => "api",
            Compaction::Retention => "retention",
        };
        let labels = CompactionLabels { app: app.to_owned(), trigger };
        self.compactions.get_or_create(&labels).inc();
        self.compacted_events.get_or_create(&labels).inc_by(removed);
    }

    /// Records the log's figures as just read.
    pub fn record_log_figures(&self, stats: LogStats) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.log_events.set(gauge(stats.events));
        self.log_channels.set(gauge(stats.channels));
        self.log_size.set(gauge(stats.size_on_disk_bytes));
        *self.log_figures.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// The log's figures as last read, if a read has succeeded yet.
    pub fn log_figures(&self) -> Option<LogStats> {
        *self.log_figures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the server has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The text exposition, after reading the scrape-time figures from the hubs.
    pub fn render(&self, state: &ServerState) -> Result<String, std::fmt::Error> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for app in state.apps.iter() {
            let label = AppLabel { app: app.config.id.clone() };
            let hub = &app.hub;
            let open = hub.connections.load(std::sync::atomic::Ordering::Relaxed);
            self.connections_open.get_or_create(&label).set(i64::try_from(open).unwrap_or(i64::MAX));
            let occupied = hub.occupied("");
            let subscriptions: usize = occupied.iter().map(|(_, counts)| counts.subscriptions).sum();
            self.channels.get_or_create(&label).set(i64::try_from(occupied.len()).unwrap_or(i64::MAX));
            self.subscriptions.get_or_create(&label).set(i64::try_from(subscriptions).unwrap_or(i64::MAX));
            // Only presence channels have members.
            let members: usize = occupied.iter().map(|(_, counts)| counts.users).sum();
            self.presence_members.get_or_create(&label).set(i64::try_from(members).unwrap_or(i64::MAX));
            // The hub counts slow consumers itself; the counter catches up with it.
            let slow = hub.slow_consumers.load(std::sync::atomic::Ordering::Relaxed);
            let counter = self.slow_consumers.get_or_create(&label);
            counter.inc_by(slow.saturating_sub(counter.get()));
        }
        if let (Some(metrics), Some(cluster)) = (&self.cluster, &state.cluster) {
            metrics.nodes.set(i64::try_from(cluster.live_nodes().len()).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `/metrics`, the status page `/` and its `/status.json` on `listener` until `shutdown`
/// fires, and keeps the log's figures fresh meanwhile.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>, shutdown: CancellationToken) {
    let every = if state.cluster.is_some() { LOG_FIGURES_EVERY_REDIS } else { LOG_FIGURES_EVERY_EMBEDDED };
    tokio::spawn(keep_log_figures(Arc::clone(&state), every, shutdown.clone()));
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { axum::response::Html(crate::status::PAGE) }))
        .route("/status.json", get(crate::status::json))
        .with_state(state);
    if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(%error, "metrics listener failed");
    }
}

/// Reads the log's figures every `every` until `shutdown`. A failing read is logged once, until
/// a read succeeds again; the gauges keep their last values meanwhile.
async fn keep_log_figures(state: Arc<ServerState>, every: Duration, shutdown: CancellationToken) {
    let mut failing = false;
    loop {
        match state.log.blocking(|log| log.stats()).await {
            Ok(stats) => {
                state.metrics.record_log_figures(stats);
                failing = false;
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot read the log's size figures for the metrics");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn scrape(State(state): State<Arc<ServerState>>) -> Response {
    match state.metrics.render(&state) {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
