//! The live status page on the metrics listener: `/` serves a self-contained page (no outside
//! scripts, styles or fonts) that polls `/status.json` every two seconds and draws the rates
//! from successive answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use reprise_storage::{Cursor, EventLog, LogKey, StorageError};
use serde::Serialize;

use crate::ServerState;
use crate::metrics::AppMetrics;

pub const PAGE: &str = include_str!("status.html");

/// How many of an app's channels the page lists, by subscriptions.
const BUSIEST_CHANNELS: usize = 5;

#[derive(Serialize)]
pub struct Status {
    version: &'static str,
    uptime_secs: u64,
    health: Health,
    /// None until the log's figures were first read.
    log: Option<LogFigures>,
    apps: Vec<AppStatus>,
}

#[derive(Serialize)]
struct Health {
    ok: bool,
    /// What is wrong, by component (`log`, `committer`, `redis`, ...).
    problems: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct LogFigures {
    backend: &'static str,
    events: u64,
    channels: u64,
    size_bytes: u64,
}

#[derive(Serialize)]
struct AppStatus {
    id: String,
    connections: usize,
    channels: usize,
    subscriptions: usize,
    presence_members: usize,
    messages_received: u64,
    fan_out_frames: u64,
    publishes_acknowledged: u64,
    publishes_failed: u64,
    resumes_recovered: u64,
    resumes_not_recovered: u64,
    slow_consumers: u64,
    /// None when the app has no webhook targets.
    webhooks: Option<WebhookStatus>,
    busiest: Vec<ChannelStatus>,
}

/// The app's webhooks, over its targets (this node's, in cluster mode).
#[derive(Serialize)]
struct WebhookStatus {
    targets: usize,
    pending: i64,
    sent: u64,
    failed_attempts: u64,
    dropped: u64,
}

#[derive(Serialize)]
struct ChannelStatus {
    name: String,
    subscriptions: usize,
    presence_members: usize,
    /// The log's latest id for the channel.
    head: Option<String>,
    /// Events the log holds for it (appended and not compacted away).
    events_held: u64,
}

/// `GET /status.json`: the figures the page shows. Counters are totals since start; the page
/// turns them into rates.
pub async fn json(State(state): State<Arc<ServerState>>) -> Json<Status> {
    let mut apps = Vec::new();
    for app in state.apps.iter() {
        let hub = &app.hub;
        let mut occupied = hub.occupied("");
        let counters = app.metrics.as_deref();
        let count = |pick: fn(&AppMetrics) -> u64| counters.map_or(0, pick);
        occupied.sort_by(|a, b| b.1.subscriptions.cmp(&a.1.subscriptions).then_with(|| a.0.cmp(&b.0)));
        let mut busiest = Vec::with_capacity(BUSIEST_CHANNELS);
        for (name, counts) in occupied.iter().take(BUSIEST_CHANNELS) {
            let key = LogKey::new(app.config.id.as_str(), name.as_str());
            // A log that cannot be read shows no head; `health` says why.
            let (head, events_held) = state.log.blocking(move |log| held(log, &key)).await.unwrap_or((None, 0));
            busiest.push(ChannelStatus {
                name: name.clone(),
                subscriptions: counts.subscriptions,
                presence_members: counts.users,
                head,
                events_held,
            });
        }
        apps.push(AppStatus {
            id: app.config.id.clone(),
            connections: hub.connections.load(Ordering::Relaxed),
            channels: occupied.len(),
            subscriptions: occupied.iter().map(|(_, counts)| counts.subscriptions).sum(),
            presence_members: occupied.iter().map(|(_, counts)| counts.users).sum(),
            messages_received: count(|app| app.messages_in.get()),
            fan_out_frames: count(|app| app.fan_out_frames.get()),
            publishes_acknowledged: count(AppMetrics::acknowledged),
            publishes_failed: count(AppMetrics::failed),
            resumes_recovered: count(|app| app.resumes_recovered.get()),
            resumes_not_recovered: count(|app| app.resumes_not_recovered.get()),
            slow_consumers: hub.slow_consumers.load(Ordering::Relaxed),
            webhooks: (!app.config.webhooks.is_empty()).then(|| {
                let stats = state.metrics.webhook_stats(&app.config.id);
                WebhookStatus {
                    targets: app.config.webhooks.len(),
                    pending: stats.pending.get(),
                    sent: stats.sent.get(),
                    failed_attempts: stats.failed_attempts.get(),
                    dropped: [stats.dropped_expired, stats.dropped_full, stats.dropped_error, stats.dropped_overflow]
                        .iter()
                        .map(prometheus_client::metrics::counter::Counter::get)
                        .sum(),
                }
            }),
            busiest,
        });
    }
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    let problems = state.health.problems();
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.metrics.uptime().as_secs(),
        health: Health { ok: problems.is_empty(), problems },
        log: state.metrics.log_figures().map(|stats| LogFigures {
            backend: if state.cluster.is_some() { "redis" } else { "embedded" },
            events: stats.events,
            channels: stats.channels,
            size_bytes: stats.size_on_disk_bytes,
        }),
        apps,
    })
}

/// The channel's head and how many events the log holds for it: ids are contiguous per
/// channel, so the count is the head's sequence less the first held event's, plus one.
fn held(log: &dyn EventLog, key: &LogKey) -> Result<(Option<String>, u64), StorageError> {
    let oldest = log.read(key, Cursor::Oldest, 1)?;
    let head = oldest.head;
    let held = match (head, oldest.events.first()) {
        (Some(head), Some(first)) => head.seq().saturating_sub(first.id.seq()) + 1,
        _ => 0,
    };
    Ok((head.map(|id| id.to_string()), held))
}
