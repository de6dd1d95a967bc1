//! Reprise: a Pusher-protocol (v7) WebSocket server, drop-in for Laravel Reverb, that appends
//! every published event to a durable per-channel log and replays what a reconnecting client
//! missed.
//!
//! [`run`] serves on an already-bound listener until the shutdown token fires, so tests bind
//! `127.0.0.1:0` and the binary binds what the configuration says.

mod accept;
pub mod apps;
pub mod backup;
pub mod capacity;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod health;
pub mod hub;
pub mod log_guard;
pub mod log_service;
pub mod metrics;
pub mod publisher;
pub mod routes;
pub mod sse;
pub mod status;
mod throttle;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reprise_storage::{DataLoss, EventLog, SledLog, StorageError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::Apps;
use crate::capacity::ConnectionCap;
use crate::cluster::occupancy::ClusterWebhooks;
use crate::cluster::{Cluster, SharedLog};
use crate::config::Config;
use crate::health::Health;
use crate::log_guard::GuardedLog;
use crate::log_service::LogService;
use crate::metrics::Metrics;
use crate::publisher::{FanOut, Publisher};
use crate::webhooks::AppWebhooks;
use crate::webhooks::queue::QueueError;
use crate::webhooks::redis_queue::RedisQueue;
use crate::webhooks::sled_queue::SledQueue;

/// What every handler and connection shares.
pub struct ServerState {
    pub config: Arc<Config>,
    pub apps: Apps,
    /// Every read and trim of the log goes through it.
    pub log: Arc<LogService>,
    pub publisher: Publisher,
    /// What is wrong right now, for `/up`.
    pub health: Arc<Health>,
    /// Served at `/metrics` on the metrics listener, when there is one.
    pub metrics: Arc<Metrics>,
    /// This node's handle on the cluster, in cluster mode.
    pub cluster: Option<Arc<Cluster>>,
    /// Fired once on shutdown: every connection closes with 4200 when it fires (asked by the
    /// registry's sweeper), and every event stream ends.
    pub shutdown: CancellationToken,
    /// Every open WebSocket connection: its ping deadline and its close on shutdown.
    pub sockets: Arc<connection::registry::Registry>,
    /// Tracks event streams, which the accept loop's graceful shutdown does not wait for
    /// (WebSocket connections are waited for through `sockets`).
    pub tracker: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the event log in {path}: {source}")]
    OpenLog { path: String, source: StorageError },
    #[error(
        "refusing to start: {loss} (data directory {path}). To start with what is left, run `reprise start \
         --accept-data-loss` once: new ids will not repeat old ones and clients resuming from before get \
         recovered:false (docs/operations.md, \"A damaged data directory\")"
    )]
    DataLoss { path: String, loss: DataLoss },
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),
    #[error("cannot listen for metrics on {address}: {source}")]
    MetricsListener { address: String, source: std::io::Error },
    #[error("flushing the event log on shutdown failed: {0}")]
    FinalFlush(StorageError),
    #[error("cannot open the webhook queue in {path}: {source}")]
    WebhookQueue { path: String, source: QueueError },
    #[error("cluster mode: cannot reach Redis at {url}: {reason}")]
    Redis { url: String, reason: String },
    /// The server stopped itself because a part of it failed for good.
    #[error("stopped: {0}")]
    Failed(String),
}

/// Opens the log in `config.server.data_dir` and serves until `shutdown` fires; then stops
/// accepting, closes every socket with 4200, waits up to the grace period, flushes the log and
/// returns.
pub async fn run(listener: TcpListener, config: Arc<Config>, shutdown: CancellationToken) -> Result<(), ServerError> {
    if config.cluster.enabled {
        return run_clustered(listener, config, shutdown).await;
    }
    let data_dir = config.server.data_dir.clone();
    let path = data_dir.display().to_string();
    let accept_data_loss = config.server.accept_data_loss;
    let opened = tokio::task::spawn_blocking(move || {
        if accept_data_loss { SledLog::open_accepting_data_loss(&data_dir) } else { SledLog::open(&data_dir) }
    })
    .await
    .unwrap_or_else(|_| Err(StorageError::Backend("opening was cancelled".into())));
    let log = opened.map_err(|source| match source {
        StorageError::DataLoss(loss) => ServerError::DataLoss { path: path.clone(), loss },
        source => ServerError::OpenLog { path: path.clone(), source },
    })?;
    match log.accepted_loss() {
        Some(loss) => tracing::warn!(%loss, data_dir = %path, "started with --accept-data-loss: the loss is accepted"),
        None if accept_data_loss => tracing::info!(data_dir = %path, "--accept-data-loss given, but no loss was found"),
        None => {}
    }
    serve(listener, config, Arc::new(log), shutdown).await
}

/// Cluster mode: the log, presence and fan-out are shared through Redis; no data directory.
async fn run_clustered(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let settings = config.cluster.clone();
    let where_ = config::redact_url_password(&settings.redis_url);
    let unreachable = |reason: String| ServerError::Redis { url: where_.clone(), reason };
    let health = Arc::new(Health::default());
    let cluster = Cluster::connect(&settings, Arc::clone(&health)).await.map_err(|e| unreachable(e.to_string()))?;
    let handle = tokio::runtime::Handle::current();
    let timeout = Duration::from_secs(settings.redis_timeout_secs);
    let opened = tokio::task::spawn_blocking(move || {
        let log = cluster::open_log(&settings, handle)?;
        Ok::<_, StorageError>(match settings.wait_replicas {
            0 => log,
            replicas => log.with_wait_replicas(replicas, timeout),
        })
    })
    .await
    .unwrap_or_else(|_| Err(StorageError::Backend("connecting was cancelled".into())));
    let log = opened.map_err(|e| unreachable(e.to_string()))?;
    let backend = Backend::Cluster { log: Arc::new(log), cluster: Arc::new(cluster) };
    serve_on(listener, config, backend, health, shutdown).await
}

/// Where the log lives, and who fans out.
pub enum Backend {
    /// A single node: the log is this node's own (sled, or one a test opened).
    Local(Arc<dyn EventLog>),
    /// A node of a cluster: the shared log in Redis, and the cluster's bus, presence and census.
    Cluster { log: Arc<dyn SharedLog>, cluster: Arc<Cluster> },
}

/// Like [`run`], with a log the caller opened (another backend, or a failing double).
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    log: Arc<dyn EventLog>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    serve_on(listener, config, Backend::Local(log), Arc::new(Health::default()), shutdown).await
}

/// Opens the webhook queue and starts every app's webhooks: nothing at all when no app has a
/// target. Delivery workers stop when `shutdown` fires; batchers once the server state (which
/// holds their senders) is dropped, after queueing what they still held.
async fn start_webhooks(
    config: &Config,
    cluster: Option<&Arc<Cluster>>,
    metrics: &Metrics,
    background: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<HashMap<String, Arc<AppWebhooks>>, ServerError> {
    if config.apps.iter().all(|app| app.webhooks.is_empty()) {
        return Ok(HashMap::new());
    }
    if let Some(cluster) = cluster {
        // The queue is Redis, shared by the nodes; the cluster decides occupancy and members.
        let runtime = tokio::runtime::Handle::current();
        let queue = RedisQueue::new(cluster.connection(), cluster.prefix(), &cluster.node_id, runtime);
        let clustered = ClusterWebhooks { cluster: Arc::clone(cluster), relays: background.clone() };
        let clustered: &dyn webhooks::Clustered = &clustered;
        return Ok(webhooks::start(&config.apps, Arc::new(queue), Some(clustered), metrics, background, shutdown).await);
    }
    let path = config.server.data_dir.join(webhooks::QUEUE_DIR);
    let shown = path.display().to_string();
    let opened = tokio::task::spawn_blocking(move || SledQueue::open(&path))
        .await
        .unwrap_or_else(|_| Err(QueueError::Backend("opening was cancelled".into())));
    let queue = opened.map_err(|source| ServerError::WebhookQueue { path: shown, source })?;
    Ok(webhooks::start(&config.apps, Arc::new(queue), None, metrics, background, shutdown).await)
}

/// Serves on `backend` until `shutdown` fires; `health` is where problems are reported.
pub async fn serve_on(
    listener: TcpListener,
    config: Arc<Config>,
    backend: Backend,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let (log, fan_out, cluster): (Arc<dyn EventLog>, FanOut, Option<Arc<Cluster>>) = match backend {
        Backend::Local(log) => (log, FanOut::Local, None),
        Backend::Cluster { log, cluster } => (log.clone(), FanOut::Bus(log), Some(cluster)),
    };
    // Publisher and retention tasks outlive the sockets: they finish after the state is dropped.
    let background = TaskTracker::new();
    // Every write goes through the guard: a disk failure stops the server (src/log_guard.rs).
    let guarded = Arc::new(GuardedLog::new(log, Arc::clone(&health), shutdown.clone()));
    let stalled = guarded.stalled();
    // Watches until the final flush is over, whenever `serve` returns.
    let watchdog_stop = CancellationToken::new();
    let _stop_watchdog = watchdog_stop.clone().drop_guard();
    let write_timeout = Duration::from_secs(config.server.log_write_timeout_secs);
    tokio::spawn(Arc::clone(&guarded).watch(write_timeout, watchdog_stop));
    let log: Arc<dyn EventLog> = guarded;
    let metrics = Metrics::new(config.apps.iter().map(|app| app.id.as_str()));
    let metrics = Arc::new(if cluster.is_some() { metrics.with_cluster() } else { metrics });
    let publisher = Publisher::start(
        Arc::clone(&log),
        fan_out,
        (config.server.durability, Duration::from_millis(config.server.flush_every_ms)),
        &background,
        Arc::clone(&health),
        (shutdown.clone(), stalled.clone()),
        Arc::clone(&metrics),
    );
    let log_service = Arc::new(LogService::new(Arc::clone(&log), config.server.replay_cap_events));
    background.spawn(log_service::compaction::run_retention(
        Arc::clone(&log_service),
        config.apps.clone(),
        Duration::from_secs(config.server.retention_interval_secs),
        shutdown.clone(),
        Arc::clone(&metrics),
        cluster.clone(),
    ));
    let webhooks = start_webhooks(&config, cluster.as_ref(), &metrics, &background, shutdown.clone()).await?;
    let tracker = TaskTracker::new();
    let sockets = Arc::new(connection::registry::Registry::default());
    background.spawn(connection::registry::run(
        Arc::clone(&sockets),
        shutdown.clone(),
        reprise_api::ErrorCode::Reconnect.as_u16(),
    ));
    let state = Arc::new(ServerState {
        config: Arc::clone(&config),
        apps: Apps::new(&config.apps, cluster.is_some(), &webhooks, &metrics),
        log: log_service,
        publisher,
        health: Arc::clone(&health),
        metrics,
        cluster: cluster.clone(),
        shutdown: shutdown.clone(),
        sockets: Arc::clone(&sockets),
        tracker: tracker.clone(),
    });
    // The hubs hold the webhook sinks now: once the state is dropped on shutdown, the batchers see
    // their senders gone, queue what they still hold and end.
    drop(webhooks);
    if let Some(cluster) = &cluster {
        background.spawn(cluster::bus::run(Arc::clone(cluster), Arc::clone(&state), shutdown.clone()));
        background.spawn(cluster::census::run(Arc::clone(cluster), Arc::clone(&state), shutdown.clone()));
        tracing::info!(node = %cluster.node_id, "cluster mode: a node of the cluster");
    }
    if let Some(port) = config.server.metrics_port {
        let address = (config.server.metrics_host.as_str(), port);
        let metrics_listener = TcpListener::bind(address).await.map_err(|source| ServerError::MetricsListener {
            address: format!("{}:{port}", config.server.metrics_host),
            source,
        })?;
        tracing::info!(address = %metrics_listener.local_addr()?, "metrics listening");
        background.spawn(metrics::serve(metrics_listener, Arc::clone(&state), shutdown.clone()));
    }
    let app = routes::router(Arc::clone(&state));
    let over_capacity_app = routes::over_capacity_router(Arc::clone(&state));
    let cap =
        ConnectionCap::new(config.server.max_open_connections.unwrap_or_else(capacity::default_max_open_connections));
    tracing::info!(address = %listener.local_addr()?, max_open_connections = cap.max(), "reprise listening");
    let header_timeout = Duration::from_secs(config.server.http_header_timeout_secs);
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let server = accept::serve(listener, (app, over_capacity_app), cap, header_timeout, shutdown.clone());
    tokio::pin!(server);
    // One grace period for the whole shutdown, starting when the token fires.
    let deadline = tokio::select! {
        () = &mut server => tokio::time::Instant::now() + grace,
        () = shutdown.cancelled() => {
            let deadline = tokio::time::Instant::now() + grace;
            // Accepting stops now; in-flight HTTP requests get until the deadline.
            if tokio::time::timeout_at(deadline, &mut server).await.is_err() {
                tracing::warn!("HTTP requests still running at the end of the grace period");
            }
            deadline
        }
    };

    // The registry asked every socket to close with 4200; event streams saw the token.
    tracker.close();
    let closed = async { tokio::join!(tracker.wait(), sockets.all_closed()) };
    if tokio::time::timeout_at(deadline, closed).await.is_err() {
        let (sockets, streams) = (sockets.open(), tracker.len());
        tracing::warn!(sockets, streams, "shutdown grace period over; sockets and streams still open are dropped");
    }
    drop(state);
    background.close();
    if tokio::time::timeout_at(deadline, background.wait()).await.is_err() {
        tracing::warn!("publishes still committing at the end of the grace period");
    }
    // A disk that stopped answering would hold the process here for good.
    let flushed = if stalled.is_cancelled() {
        None
    } else {
        let flush = tokio::task::spawn_blocking(move || log.flush());
        tokio::select! {
            flushed = flush => Some(flushed),
            () = stalled.cancelled() => None,
        }
    };
    match flushed {
        Some(Ok(Ok(()))) => {}
        // After a fatal problem the exit reports that problem; the flush's failure follows from it.
        Some(Ok(Err(error))) if health.fatal().is_some() => tracing::error!(%error, "final log flush failed"),
        Some(Ok(Err(error))) => return Err(ServerError::FinalFlush(error)),
        // The runtime is being dropped under us; sled flushes on drop as well.
        Some(Err(_)) => tracing::warn!("final flush cancelled by the runtime shutting down"),
        None => tracing::error!("no final log flush: the disk is not answering"),
    }
    if let Some(problem) = health.fatal() {
        return Err(ServerError::Failed(problem));
    }
    tracing::info!("reprise stopped");
    Ok(())
}
