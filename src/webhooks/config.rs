//! One app's webhook targets as configured (`[[apps.webhooks]]`, or `REPRISE_WEBHOOK_URL`), their
//! validation, and which events each target wants.

use std::collections::BTreeMap;

use reprise_api::webhook::{WebhookEvent, WebhookKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How long a webhook is retried before it is given up (and counted as dropped): a day, so a
/// receiver down for a night loses nothing. Pusher gives up after 5 minutes.
pub const DEFAULT_RETRY_FOR_SECS: u64 = 24 * 3600;
/// Webhook requests a target may have waiting (on disk, or in Redis) before new ones are dropped
/// and counted. Each is one batch of at most [`super::batcher::MAX_BATCH_EVENTS`] events, about
/// 2 KB: 10,000 is about 20 MB of disk for a receiver that is down, hours of a busy app's
/// presence traffic.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// How long one delivery attempt may take (connect, send, answer) before it counts as failed.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// One webhook target of an app.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// Pusher's event names (`channel_occupied`, ...); omitted means every type.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Only events of channels whose name matches (soketi's filter).
    #[serde(default)]
    pub filter: ChannelFilter,
    /// Extra headers sent with every request (for instance a bearer token of the receiver).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_retry_for_secs")]
    pub retry_for_secs: u64,
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_retry_for_secs() -> u64 {
    DEFAULT_RETRY_FOR_SECS
}
fn default_max_pending() -> usize {
    DEFAULT_MAX_PENDING
}
fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

/// No header value (a receiver's token) nor the URL's credentials or query in a log line.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url_for_logs())
            .field("event_types", &self.event_types)
            .field("filter", &self.filter)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("retry_for_secs", &self.retry_for_secs)
            .field("max_pending", &self.max_pending)
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelFilter {
    pub channel_name_starts_with: Option<String>,
    pub channel_name_ends_with: Option<String>,
}

impl WebhookConfig {
    /// A target for `url` with every default (`REPRISE_WEBHOOK_URL`).
    pub fn for_url(url: String) -> Self {
        WebhookConfig {
            url,
            event_types: None,
            filter: ChannelFilter::default(),
            headers: BTreeMap::new(),
            retry_for_secs: DEFAULT_RETRY_FOR_SECS,
            max_pending: DEFAULT_MAX_PENDING,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }

    /// The event types this target wants, as a bit set ([`WebhookKind::bit`]).
    pub fn kinds(&self) -> u8 {
        match &self.event_types {
            None => WebhookKind::ALL.iter().fold(0, |bits, kind| bits | kind.bit()),
            Some(names) => names.iter().filter_map(|name| WebhookKind::parse(name)).fold(0, |bits, k| bits | k.bit()),
        }
    }

    /// Whether this target wants `event`.
    pub fn wants(&self, event: &WebhookEvent) -> bool {
        let channel = event.channel();
        self.kinds() & event.kind().bit() != 0
            && self.filter.channel_name_starts_with.as_deref().is_none_or(|prefix| channel.starts_with(prefix))
            && self.filter.channel_name_ends_with.as_deref().is_none_or(|suffix| channel.ends_with(suffix))
    }

    /// The target's stable name in the queue: the app and a hash of the URL, so pending webhooks
    /// find their target again after a restart even if targets are reordered in the file.
    pub fn target_id(&self, app_id: &str) -> String {
        let digest = Sha256::digest(self.url.as_bytes());
        format!("{app_id}:{}", hex::encode(&digest[..8]))
    }

    /// The URL as it may be logged: no credentials, no query (which may carry a token).
    pub fn url_for_logs(&self) -> String {
        let without_query = self.url.split(['?', '#']).next().unwrap_or_default();
        match without_query.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
                None => without_query.to_owned(),
            },
            None => without_query.to_owned(),
        }
    }

    /// Every problem with this target; `at` names it (`apps[0].webhooks[1]`).
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) || url_host(&self.url).is_none() {
            problems.push(format!("{at}.url must be an http:// or https:// URL with a host"));
        }
        for name in self.event_types.iter().flatten() {
            if WebhookKind::parse(name).is_none() {
                let known: Vec<&str> = WebhookKind::ALL.iter().map(|kind| kind.name()).collect();
                problems.push(format!("{at}.event_types: {name:?} is not one of {}", known.join(", ")));
            }
        }
        if self.event_types.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!("{at}.event_types is empty (omit it for every type)"));
        }
        for (name, value) in &self.headers {
            let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid_name || value.bytes().any(|b| b.is_ascii_control()) {
                problems.push(format!("{at}.headers: {name:?} is not a valid header"));
            }
            let lower = name.to_ascii_lowercase();
            if ["content-type", "x-pusher-key", "x-pusher-signature", "x-reprise-webhook-id"].contains(&lower.as_str())
            {
                problems.push(format!("{at}.headers: {name:?} is set by Reprise"));
            }
        }
        if self.retry_for_secs == 0 || self.max_pending == 0 || self.timeout_secs == 0 {
            problems.push(format!("{at}: retry_for_secs, max_pending and timeout_secs must be at least 1"));
        }
        problems
    }
}

/// The host part of an http(s) URL, if it has a non-empty one.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> WebhookConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn event_types_and_filters_select_events() {
        let hook = target(
            "url = \"http://h/w\"\nevent_types = [\"channel_occupied\", \"client_event\"]\n\
             filter = { channel_name_starts_with = \"private-\", channel_name_ends_with = \"-x\" }\n",
        );
        let occupied = |channel: &str| WebhookEvent::ChannelOccupied { channel: channel.into() };
        assert!(hook.wants(&occupied("private-a-x")));
        assert!(!hook.wants(&occupied("private-a")), "suffix");
        assert!(!hook.wants(&occupied("presence-a-x")), "prefix");
        assert!(!hook.wants(&WebhookEvent::ChannelVacated { channel: "private-a-x".into() }), "type");
        let every = WebhookConfig::for_url("http://h".into());
        assert_eq!(every.kinds().count_ones(), 7);
    }

    #[test]
    fn every_problem_of_a_target_is_reported() {
        let hook = target(
            "url = \"ftp://h\"\nevent_types = [\"channel_occupied\", \"nope\"]\nretry_for_secs = 0\n\
             headers = { \"X-Pusher-Signature\" = \"x\", \"bad name\" = \"v\" }\n",
        );
        let problems = hook.problems("apps[0].webhooks[0]");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].contains("apps[0].webhooks[0].url"), "{problems:?}");
        assert!(target("url = \"https://user:pw@example.com/hook?token=t\"\n").problems("w").is_empty());
        assert!(!target("url = \"http:///nohost\"\n").problems("w").is_empty());
    }

    #[test]
    fn logged_urls_carry_no_credentials_or_query() {
        let hook = WebhookConfig::for_url("https://user:pw@example.com/hook?token=t".into());
        assert_eq!(hook.url_for_logs(), "https://<redacted>@example.com/hook");
        let with_token = target("url = \"http://h/\"\nheaders = { Authorization = \"Bearer s3cr3t\" }\n");
        assert!(!format!("{with_token:?} {hook:?}").contains("s3cr3t") && !format!("{hook:?}").contains("pw"));
        assert_eq!(hook.target_id("app"), WebhookConfig::for_url(hook.url.clone()).target_id("app"));
        assert_ne!(hook.target_id("app"), WebhookConfig::for_url("https://example.com/".into()).target_id("app"));
    }
}
