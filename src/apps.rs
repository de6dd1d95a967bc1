//! The configured apps, found by key (WebSocket path) or id (HTTP API path).

use std::collections::HashMap;
use std::sync::Arc;

use reprise_api::ChannelName;
use reprise_api::signature::SigningKey;
use reprise_storage::LogKey;

use crate::config::AppConfig;
use crate::hub::AppHub;
use crate::metrics::{AppMetrics, Metrics};
use crate::webhooks::AppWebhooks;

/// One app: its configuration, its live channels and its counters.
pub struct App {
    pub config: AppConfig,
    /// `config.secret`, ready to verify signatures with (made once: see `SigningKey`).
    pub signing_key: SigningKey,
    pub hub: Arc<AppHub>,
    /// Resolved once: every connection's batch counts its frames here, and a lookup by app id
    /// (hashing the id) cost a delivered frame more than counting it (`benches/callgrind.sh`).
    /// None only for an app the metrics do not know, which `run` never builds.
    pub metrics: Option<Arc<AppMetrics>>,
}

impl App {
    /// The log that holds `channel`'s events for this app.
    pub fn log_key(&self, channel: &ChannelName) -> LogKey {
        LogKey::new(self.config.id.as_str(), channel.as_str())
    }
}

pub struct Apps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

impl Apps {
    /// The apps of `configs`; `clustered` hubs leave presence events to the cluster. An app with
    /// an entry in `webhooks` tells its hub's events to its webhook sink.
    pub fn new(
        configs: &[AppConfig],
        clustered: bool,
        webhooks: &HashMap<String, Arc<AppWebhooks>>,
        metrics: &Metrics,
    ) -> Self {
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for config in configs {
            let hub = if clustered { AppHub::clustered() } else { AppHub::default() };
            let hub = match webhooks.get(&config.id) {
                Some(webhooks) => hub.with_webhooks(Arc::clone(&webhooks.sink), Arc::clone(&webhooks.local)),
                None => hub,
            };
            let metrics = metrics.app(&config.id).cloned();
            let signing_key = SigningKey::new(&config.secret);
            let app = Arc::new(App { config: config.clone(), signing_key, hub: Arc::new(hub), metrics });
            by_key.insert(config.key.clone(), Arc::clone(&app));
            by_id.insert(config.id.clone(), app);
        }
        Apps { by_key, by_id }
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}
