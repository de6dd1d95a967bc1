//! Compaction (`POST /apps/{id}/compact`) and retention (each app's `retention_max_events` /
//! `retention_max_age_secs`, applied in the background): both remove a prefix of a channel's log.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise_storage::{CompactRule, EventLog, LogKey, StorageError};
use tokio_util::sync::CancellationToken;

use super::LogService;
use crate::cluster::Cluster;
use crate::config::AppConfig;
use crate::metrics::{Compaction, Metrics};

impl LogService {
    /// Compacts one channel of `app`, or every channel of it, with `rule`; the total removed.
    pub async fn compact(&self, app: &str, channel: Option<&str>, rule: CompactRule) -> Result<u64, StorageError> {
        let app = app.to_owned();
        let channel = channel.map(str::to_owned);
        self.blocking(move |log| {
            let keys = match channel {
                Some(channel) => vec![LogKey::new(app, channel)],
                None => log.channels(&app)?,
            };
            compact_all(log, &keys, rule)
        })
        .await
    }

    /// Applies every app's retention settings once; the total removed.
    pub async fn apply_retention(&self, apps: &[AppConfig], metrics: &Metrics) -> Result<u64, StorageError> {
        let mut removed = 0;
        for app in apps {
            if let Some(rule) = retention_rule(app) {
                let removed_here = self.compact(&app.id, None, rule).await?;
                metrics.compacted(&app.id, Compaction::Retention, removed_here);
                removed += removed_here;
            }
        }
        Ok(removed)
    }
}

/// Compacts each channel with `rule`, then flushes; the total removed.
fn compact_all(log: &dyn EventLog, keys: &[LogKey], rule: CompactRule) -> Result<u64, StorageError> {
    let mut removed = 0;
    for key in keys {
        removed += log.compact(key, rule)?;
    }
    log.flush()?;
    Ok(removed)
}

/// The absolute instant (unix ms) before which events are older than `max_age_secs`.
pub fn older_than_ms(max_age_secs: u64) -> u64 {
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now_ms.saturating_sub(max_age_secs.saturating_mul(1000))
}

/// The compaction an app's retention settings ask for, if any.
pub fn retention_rule(app: &AppConfig) -> Option<CompactRule> {
    let rule = CompactRule {
        keep_last: app.retention_max_events,
        older_than_ms: app.retention_max_age_secs.map(older_than_ms),
        before: None,
    };
    (!rule.is_empty()).then_some(rule)
}

/// The cluster chore name of retention (see `cluster::turns`).
const RETENTION_CHORE: &str = "retention";

/// Applies retention at start-up and every `every` until shutdown (a no-op without settings).
/// In cluster mode (`cluster`), one node per round does it for the shared log.
pub async fn run_retention(
    service: Arc<LogService>,
    apps: Vec<AppConfig>,
    every: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
) {
    if apps.iter().all(|app| retention_rule(app).is_none()) {
        return;
    }
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Some(cluster) = &cluster {
            // Another node's round, or Redis is failing (health says so): skip this one.
            // The lease is a little shorter than the round, so the node that had it finds it
            // expired at its next tick (its ticks and Redis's clock drift apart by milliseconds).
            if !cluster.claim_turn(RETENTION_CHORE, every.mul_f64(0.9)).await.unwrap_or(false) {
                continue;
            }
        }
        match service.apply_retention(&apps, &metrics).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "retention removed old events"),
            Err(error) => tracing::error!(%error, "retention failed"),
        }
    }
}
