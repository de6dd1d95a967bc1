//! Background retention: applies each app's `retention_max_events` / `retention_max_age_secs` to
//! every channel of its log, the same compaction `POST /compact` performs.

use std::sync::Arc;
use std::time::Duration;

use reprise_storage::{CompactRule, EventLog};
use tokio_util::sync::CancellationToken;

use crate::config::AppConfig;
use crate::routes::history::{compact_all, older_than_ms};

/// The compaction an app's retention settings ask for, if any.
pub fn rule(app: &AppConfig) -> Option<CompactRule> {
    let rule = CompactRule {
        keep_last: app.retention_max_events,
        older_than_ms: app.retention_max_age_secs.map(older_than_ms),
        before: None,
    };
    (rule != CompactRule::default()).then_some(rule)
}

pub async fn run(log: Arc<dyn EventLog>, apps: Vec<AppConfig>, every: Duration, shutdown: CancellationToken) {
    if apps.iter().all(|app| rule(app).is_none()) {
        return;
    }
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let log = Arc::clone(&log);
        let apps = apps.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for app in &apps {
                if let Some(rule) = rule(app) {
                    removed += compact_all(log.as_ref(), &log.channels(&app.id)?, rule)?;
                }
            }
            Ok::<_, reprise_storage::StorageError>(removed)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "retention removed old events"),
            Ok(Err(error)) => tracing::error!(%error, "retention failed"),
            Err(_) => tracing::error!("retention panicked"),
        }
    }
}
