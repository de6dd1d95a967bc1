//! Configuration: one struct, read from a TOML file and/or Reverb's environment variables, validated
//! once at start-up (every problem reported together), then shared as `Arc<Config>`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::webhooks::config::WebhookConfig;

/// Reverb's default port.
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Pusher's and Reverb's default: the client pings after this much silence.
pub const DEFAULT_ACTIVITY_TIMEOUT_SECS: u64 = 30;
/// Reverb's default: the server pings a connection that has been idle this long.
pub const DEFAULT_PING_INTERVAL_SECS: u64 = 60;
/// Pusher's limit on one message (a client frame, or an event's data), in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10_000;
/// Reverb's limit on a REST request body, in bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 10_000;
/// Pusher's limit: members (distinct users) of one presence channel. Every joiner gets the whole
/// roster in one frame and every member gets each join and leave, so a roster costs its size
/// squared; past a hundred, Pusher recommends other designs.
pub const DEFAULT_PRESENCE_MAX_MEMBERS: usize = 100;
/// Pusher's limit: one presence member's `user_info`, as JSON, in bytes. With the member cap it
/// bounds a roster frame to about 100 KB.
pub const DEFAULT_PRESENCE_MAX_MEMBER_SIZE_BYTES: usize = 1024;
/// Pusher's limit: client events per second per socket.
pub const DEFAULT_CLIENT_EVENTS_PER_SEC: u32 = 10;
/// Most events a resume replays on subscribe; past it the client is told `recovered:false`.
/// Higher lets clients stay away longer; lower bounds the burst a reconnect storm costs.
pub const DEFAULT_REPLAY_CAP_EVENTS: usize = 1000;
/// Frames a connection may have queued before it counts as a slow consumer and is closed with
/// 4100. Large enough for a replay burst plus live traffic; small enough that a stalled socket
/// costs little memory.
pub const DEFAULT_OUTBOX_FRAMES: usize = 2048;
/// How long shutdown waits for sockets to close and publishes to finish before returning.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
/// How often the log is written out when `durability = "buffered"`.
pub const DEFAULT_FLUSH_EVERY_MS: u64 = 500;
/// How often retention settings are applied. Retention bounds disk use, it is not a precise
/// expiry, so a minute of slack costs nothing and keeps the scan cheap.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 60;
/// How long an HTTP connection may take to send a complete request head, counted from its accept
/// or from the end of the previous response (so it is also the keep-alive idle timeout). Long
/// enough for a slow mobile link; short enough that a connection that never speaks gives its
/// descriptor back soon. hyper's own default.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 30;
/// How long one write to the log (an append, an fsync, a compaction) may take before the disk is
/// declared failed and the server stops (src/log_guard.rs). Far above any healthy fsync, even on
/// a loaded network disk; short enough that publishes stuck behind a dead disk are answered.
pub const DEFAULT_LOG_WRITE_TIMEOUT_SECS: u64 = 30;
/// How often an event stream (`/app/{key}/stream`) that has nothing to send sends a comment, so
/// that proxies and load balancers (nginx's default read timeout is 60 s, many idle timeouts are
/// 30 s or more) keep it open. A few bytes per stream per interval.
pub const DEFAULT_SSE_HEARTBEAT_SECS: u64 = 15;
/// Where `/metrics` listens once `metrics_port` is set: loopback, so that figures about every app
/// are not served to the world unless the operator says so.
pub const DEFAULT_METRICS_HOST: &str = "127.0.0.1";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub cluster: ClusterConfig,
    pub apps: Vec<AppConfig>,
}

/// Reverb's default key prefix (`REVERB_SCALING_CHANNEL`).
pub const DEFAULT_CLUSTER_PREFIX: &str = "reverb";
/// Laravel's default Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// How long one Redis command may take, and how long a node retries a lost Redis before it reports
/// itself unhealthy (it keeps retrying after that, and never exits on its own).
pub const DEFAULT_REDIS_TIMEOUT_SECS: u64 = 5;

/// How long an idle channel is kept in Redis: a week, long past any reconnect.
pub const DEFAULT_CHANNEL_IDLE_TTL_SECS: u64 = 7 * 24 * 3600;

/// Cluster mode: several nodes share the log, presence and fan-out through Redis. Off by default:
/// then nothing touches Redis and the log is the embedded sled one.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `REVERB_SCALING_ENABLED=true`.
    pub enabled: bool,
    /// Prefix of every key the cluster keeps in Redis (`REVERB_SCALING_CHANNEL`), so two clusters
    /// sharing one Redis never see each other.
    pub prefix: String,
    /// `redis://` or `rediss://`, with user, password and db (`REDIS_URL`, else built from
    /// `REDIS_HOST`, `REDIS_PORT`, `REDIS_USERNAME`, `REDIS_PASSWORD`, `REDIS_DB`).
    pub redis_url: String,
    /// `REDIS_TIMEOUT`, in seconds: see [`DEFAULT_REDIS_TIMEOUT_SECS`].
    pub redis_timeout_secs: u64,
    /// Replicas a publish waits for (`WAIT`) before it is acknowledged; 0 waits for none.
    pub wait_replicas: u32,
    /// A channel nobody published to for this long expires from Redis (its stream and head), so
    /// Redis memory stays bounded; 0 keeps channels forever. Its next event starts a new
    /// sequence above the old one, and resumes from before get `recovered:false`.
    pub channel_idle_ttl_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            prefix: DEFAULT_CLUSTER_PREFIX.to_owned(),
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            redis_timeout_secs: DEFAULT_REDIS_TIMEOUT_SECS,
            wait_replicas: 0,
            channel_idle_ttl_secs: DEFAULT_CHANNEL_IDLE_TTL_SECS,
        }
    }
}

/// The URL without its password, which must never reach a log line.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("enabled", &self.enabled)
            .field("prefix", &self.prefix)
            .field("redis_url", &redact_url_password(&self.redis_url))
            .field("redis_timeout_secs", &self.redis_timeout_secs)
            .field("wait_replicas", &self.wait_replicas)
            .field("channel_idle_ttl_secs", &self.channel_idle_ttl_secs)
            .finish()
    }
}

/// `redis://user:secret@host` -> `redis://user:<redacted>@host`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

/// When a publish is answered.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Answer 200 only after the event is fsynced (concurrent publishes share one flush).
    #[default]
    Sync,
    /// Answer once the event is in the log's memory; the log is written out every `flush_every_ms`.
    /// A crash of the machine or process can lose the last `flush_every_ms` of acknowledged events.
    Buffered,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Where every route is served, below the root (Reverb's `REVERB_SERVER_PATH`): `/reverb`
    /// serves `/reverb/app/{key}`, `/reverb/apps/{id}/events`, `/reverb/up`...; empty (the
    /// default) serves them at the root. Normalized at load: one leading `/`, none at the end.
    pub path: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub flush_every_ms: u64,
    pub replay_cap_events: usize,
    pub outbox_frames: usize,
    pub shutdown_grace_ms: u64,
    pub retention_interval_secs: u64,
    pub http_header_timeout_secs: u64,
    pub log_write_timeout_secs: u64,
    pub sse_heartbeat_secs: u64,
    /// Most open connections (HTTP and WebSocket); none means derived from the open-files limit.
    pub max_open_connections: Option<usize>,
    /// Address of the metrics listener (`/metrics`, Prometheus text), see [`DEFAULT_METRICS_HOST`].
    pub metrics_host: String,
    /// Port of the metrics listener; none (the default) serves no metrics at all.
    pub metrics_port: Option<u16>,
    /// Open a log that lost durable appends anyway (`reprise start --accept-data-loss`). Only a
    /// flag, never a file setting: left in a config file it would accept every later loss too.
    #[serde(skip)]
    pub accept_data_loss: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            path: String::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            durability: Durability::Sync,
            flush_every_ms: DEFAULT_FLUSH_EVERY_MS,
            replay_cap_events: DEFAULT_REPLAY_CAP_EVENTS,
            outbox_frames: DEFAULT_OUTBOX_FRAMES,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            http_header_timeout_secs: DEFAULT_HTTP_HEADER_TIMEOUT_SECS,
            log_write_timeout_secs: DEFAULT_LOG_WRITE_TIMEOUT_SECS,
            sse_heartbeat_secs: DEFAULT_SSE_HEARTBEAT_SECS,
            max_open_connections: None,
            metrics_host: DEFAULT_METRICS_HOST.to_owned(),
            metrics_port: None,
            accept_data_loss: false,
        }
    }
}

/// Who may send client events (Reverb's `accept_client_events_from`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientEventsFrom {
    /// Sockets subscribed to the (private or presence) channel.
    #[default]
    Members,
    /// Any socket of the app, subscribed or not.
    All,
    /// Client events are disabled.
    None,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Host patterns (`*` wildcards) allowed in the `Origin` header; `["*"]` allows all.
    pub allowed_origins: Vec<String>,
    pub ping_interval_secs: u64,
    pub activity_timeout_secs: u64,
    pub max_message_size_bytes: usize,
    pub max_request_size_bytes: usize,
    /// Most simultaneous connections; none means unlimited.
    pub max_connections: Option<usize>,
    pub accept_client_events_from: ClientEventsFrom,
    pub client_events_per_sec: u32,
    /// Also log client events (off by default: they are ephemeral, like typing indicators).
    pub log_client_events: bool,
    /// Retention: keep at most this many events per channel (background compaction).
    pub retention_max_events: Option<u64>,
    /// Retention: drop events older than this (background compaction).
    pub retention_max_age_secs: Option<u64>,
    /// Most members (distinct users) of one presence channel.
    pub presence_max_members: usize,
    /// Largest `user_info` of a presence member, as JSON, in bytes.
    pub presence_max_member_size_bytes: usize,
    /// Webhook targets (`[[apps.webhooks]]`; docs/webhooks.md). None by default.
    pub webhooks: Vec<WebhookConfig>,
    /// Where these settings came from, for the start-up line that names each app.
    #[serde(skip)]
    pub source: AppSource,
}

/// Where an app's settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppSource {
    /// Built in code (a library user, a test).
    #[default]
    Code,
    /// An `[[apps]]` entry of the TOML file.
    File,
    /// Reverb's `REVERB_APP_*` variables.
    Environment,
    /// An `[[apps]]` entry with the same key, overridden by `REVERB_APP_*` variables.
    FileAndEnvironment,
    /// The demo app of a loopback server with nothing configured.
    Demo,
}

impl std::fmt::Display for AppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppSource::Code => "code",
            AppSource::File => "config file",
            AppSource::Environment => "REVERB_* variables",
            AppSource::FileAndEnvironment => "config file, overridden by REVERB_* variables",
            AppSource::Demo => "demo app",
        })
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            allowed_origins: vec!["*".to_owned()],
            ping_interval_secs: DEFAULT_PING_INTERVAL_SECS,
            activity_timeout_secs: DEFAULT_ACTIVITY_TIMEOUT_SECS,
            max_message_size_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_request_size_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: None,
            accept_client_events_from: ClientEventsFrom::Members,
            client_events_per_sec: DEFAULT_CLIENT_EVENTS_PER_SEC,
            log_client_events: false,
            retention_max_events: None,
            retention_max_age_secs: None,
            presence_max_members: DEFAULT_PRESENCE_MAX_MEMBERS,
            presence_max_member_size_bytes: DEFAULT_PRESENCE_MAX_MEMBER_SIZE_BYTES,
            webhooks: Vec::new(),
            source: AppSource::Code,
        }
    }
}

/// Every field but the secret, which must never reach a log line or a panic message.
impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AppConfig {
            id,
            key,
            secret: _,
            allowed_origins,
            ping_interval_secs,
            activity_timeout_secs,
            max_message_size_bytes,
            max_request_size_bytes,
            max_connections,
            accept_client_events_from,
            client_events_per_sec,
            log_client_events,
            retention_max_events,
            retention_max_age_secs,
            presence_max_members,
            presence_max_member_size_bytes,
            webhooks,
            source,
        } = self;
        f.debug_struct("AppConfig")
            .field("id", id)
            .field("key", key)
            .field("secret", &"<redacted>")
            .field("allowed_origins", allowed_origins)
            .field("ping_interval_secs", ping_interval_secs)
            .field("activity_timeout_secs", activity_timeout_secs)
            .field("max_message_size_bytes", max_message_size_bytes)
            .field("max_request_size_bytes", max_request_size_bytes)
            .field("max_connections", max_connections)
            .field("accept_client_events_from", accept_client_events_from)
            .field("client_events_per_sec", client_events_per_sec)
            .field("log_client_events", log_client_events)
            .field("retention_max_events", retention_max_events)
            .field("retention_max_age_secs", retention_max_age_secs)
            .field("presence_max_members", presence_max_members)
            .field("presence_max_member_size_bytes", presence_max_member_size_bytes)
            .field("webhooks", webhooks)
            .field("source", source)
            .finish()
    }
}

/// The demo app a loopback server starts with when nothing is configured.
pub fn demo_app() -> AppConfig {
    AppConfig {
        id: "reprise-demo".to_owned(),
        key: "reprise-demo-key".to_owned(),
        secret: "reprise-demo-secret".to_owned(),
        source: AppSource::Demo,
        ..AppConfig::default()
    }
}

/// What a failed configuration says: every problem, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        ConfigError { problems: vec![problem] }
    }
}

/// Environment variables, passed in so tests need not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Command-line overrides; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
    /// `--redis-url`: also turns cluster mode on.
    pub redis_url: Option<String>,
    pub http_header_timeout_secs: Option<u64>,
    pub max_open_connections: Option<usize>,
    pub metrics_host: Option<String>,
    pub metrics_port: Option<u16>,
    pub accept_data_loss: bool,
}

impl Config {
    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::one(e.to_string()))?;
        for app in &mut config.apps {
            app.source = AppSource::File;
        }
        Ok(config)
    }

    /// Builds the configuration the way `reprise start` does: file (if any), then Reverb's
    /// variables, then flags; then validates. Does not add the demo app (see [`Config::finish`]).
    pub fn load(file_text: Option<&str>, env: &dyn Env, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut config = match file_text {
            Some(text) => Config::from_toml(text)?,
            None => Config::default(),
        };
        let mut problems = Vec::new();
        config.apply_env(env, &mut problems);
        if let Some(host) = &overrides.host {
            config.server.host = host.clone();
        }
        if let Some(port) = overrides.port {
            config.server.port = port;
        }
        if let Some(dir) = &overrides.data_dir {
            config.server.data_dir = dir.clone();
        }
        if let Some(url) = &overrides.redis_url {
            config.cluster.enabled = true;
            config.cluster.redis_url = url.clone();
        }
        if let Some(secs) = overrides.http_header_timeout_secs {
            config.server.http_header_timeout_secs = secs;
        }
        if let Some(max) = overrides.max_open_connections {
            config.server.max_open_connections = Some(max);
        }
        if let Some(host) = &overrides.metrics_host {
            config.server.metrics_host = host.clone();
        }
        if let Some(port) = overrides.metrics_port {
            config.server.metrics_port = Some(port);
        }
        config.server.accept_data_loss = overrides.accept_data_loss;
        config.server.path = normalized_path(&config.server.path);
        problems.extend(config.problems());
        if problems.is_empty() { Ok(config) } else { Err(ConfigError { problems }) }
    }

    /// Reverb's scaling variables and Laravel's Redis variables.
    fn apply_cluster_env(&mut self, env: &dyn Env, problems: &mut Vec<String>) {
        let cluster = &mut self.cluster;
        if let Some(enabled) = env.var("REVERB_SCALING_ENABLED") {
            match enabled.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => cluster.enabled = true,
                "false" | "0" | "no" | "off" => cluster.enabled = false,
                _ => problems.push(format!("REVERB_SCALING_ENABLED: {enabled:?} is not true or false")),
            }
        }
        if let Some(prefix) = env.var("REVERB_SCALING_CHANNEL") {
            cluster.prefix = prefix;
        }
        if let Some(url) = env.var("REDIS_URL") {
            cluster.redis_url = url;
        } else if ["REDIS_HOST", "REDIS_PORT", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_DB"]
            .iter()
            .any(|name| env.var(name).is_some())
        {
            let host = env.var("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
            let port = env.var("REDIS_PORT").unwrap_or_else(|| "6379".to_owned());
            let db = env.var("REDIS_DB").unwrap_or_else(|| "0".to_owned());
            let encode = |text: String| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
            let credentials = match (env.var("REDIS_USERNAME"), env.var("REDIS_PASSWORD")) {
                (Some(user), Some(password)) => format!("{}:{}@", encode(user), encode(password)),
                (None, Some(password)) => format!(":{}@", encode(password)),
                (Some(user), None) => format!("{}@", encode(user)),
                (None, None) => String::new(),
            };
            cluster.redis_url = format!("redis://{credentials}{host}:{port}/{db}");
        }
        if let Some(timeout) = env.var("REDIS_TIMEOUT") {
            // Laravel's timeout may be fractional seconds; round up to whole ones.
            let parsed = timeout.parse::<f64>().ok().and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok());
            match parsed {
                Some(duration) if !duration.is_zero() => {
                    cluster.redis_timeout_secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
                }
                _ => problems.push(format!("REDIS_TIMEOUT: {timeout:?} is not a positive number of seconds")),
            }
        }
    }

    fn apply_env(&mut self, env: &dyn Env, problems: &mut Vec<String>) {
        self.apply_cluster_env(env, problems);
        if let Some(host) = env.var("REVERB_SERVER_HOST") {
            self.server.host = host;
        }
        if let Some(path) = env.var("REVERB_SERVER_PATH") {
            self.server.path = path;
        }
        if let Some(port) = env.var("REVERB_SERVER_PORT") {
            match port.parse() {
                Ok(port) => self.server.port = port,
                Err(_) => problems.push(format!("REVERB_SERVER_PORT: {port:?} is not a port number")),
            }
        }
        self.apply_app_env(env, problems);
        if let Some(value) = env.var("REVERB_MAX_REQUEST_SIZE") {
            match value.parse() {
                // Reverb's limit is the server's, so it is every app's here, the file's included.
                Ok(bytes) => self.apps.iter_mut().for_each(|app| app.max_request_size_bytes = bytes),
                Err(_) => problems.push(format!("REVERB_MAX_REQUEST_SIZE: {value:?} is not a whole number")),
            }
        }
    }

    /// The `REVERB_APP_*` variables (and Reprise's webhook variables): one app, the file's with
    /// that key or a new one.
    fn apply_app_env(&mut self, env: &dyn Env, problems: &mut Vec<String>) {
        let Some(key) = env.var("REVERB_APP_KEY") else {
            if env.var("REPRISE_WEBHOOK_URL").is_some() {
                problems.push(
                    "REPRISE_WEBHOOK_URL configures the app of the REVERB_APP_* variables, but REVERB_APP_KEY is not \
                     set (use [[apps.webhooks]] in a config file instead)"
                        .to_owned(),
                );
            }
            return;
        };
        // The variables describe one app: the file's app with that key (they win over the file
        // there), or a new one.
        let index = match self.apps.iter().position(|app| app.key == key) {
            Some(index) => {
                self.apps[index].source = AppSource::FileAndEnvironment;
                index
            }
            None => {
                self.apps.push(AppConfig { key, source: AppSource::Environment, ..AppConfig::default() });
                self.apps.len() - 1
            }
        };
        let app = &mut self.apps[index];
        if let Some(id) = env.var("REVERB_APP_ID") {
            app.id = id;
        }
        if let Some(secret) = env.var("REVERB_APP_SECRET") {
            app.secret = secret;
        }
        let mut number = |name: &str, target: &mut u64| {
            if let Some(value) = env.var(name) {
                match value.parse() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(format!("{name}: {value:?} is not a whole number")),
                }
            }
        };
        number("REVERB_APP_PING_INTERVAL", &mut app.ping_interval_secs);
        number("REVERB_APP_ACTIVITY_TIMEOUT", &mut app.activity_timeout_secs);
        let mut max_message = u64::try_from(app.max_message_size_bytes).unwrap_or(u64::MAX);
        number("REVERB_APP_MAX_MESSAGE_SIZE", &mut max_message);
        app.max_message_size_bytes = usize::try_from(max_message).unwrap_or(usize::MAX);
        if let Some(value) = env.var("REVERB_APP_MAX_CONNECTIONS") {
            match value.parse() {
                Ok(n) => app.max_connections = Some(n),
                Err(_) => problems.push(format!("REVERB_APP_MAX_CONNECTIONS: {value:?} is not a whole number")),
            }
        }
        if let Some(url) = env.var("REPRISE_WEBHOOK_URL") {
            let mut target = WebhookConfig::for_url(url);
            if let Some(events) = env.var("REPRISE_WEBHOOK_EVENTS") {
                target.event_types = Some(events.split(',').map(|name| name.trim().to_owned()).collect());
            }
            // The variable describes the one target of this app: it replaces the file's.
            app.webhooks = vec![target];
        } else if env.var("REPRISE_WEBHOOK_EVENTS").is_some() {
            problems.push("REPRISE_WEBHOOK_EVENTS is set without REPRISE_WEBHOOK_URL".to_owned());
        }
        if let Some(value) = env.var("REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM") {
            match value.as_str() {
                "members" => app.accept_client_events_from = ClientEventsFrom::Members,
                "all" => app.accept_client_events_from = ClientEventsFrom::All,
                "none" => app.accept_client_events_from = ClientEventsFrom::None,
                _ => problems
                    .push(format!("REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM: {value:?} must be members, all or none")),
            }
        }
    }

    /// Every problem with this configuration (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.server.host.parse::<IpAddr>().is_err() && self.server.host != "localhost" {
            problems.push(format!("server.host: {:?} is not an IP address", self.server.host));
        }
        let path_is_plain = self.server.path.split('/').skip(1).all(|segment| {
            !segment.is_empty() && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
        });
        if !path_is_plain {
            problems.push(format!(
                "server.path: {:?} is not a plain URL path such as \"/reverb\" (letters, digits, - . _ ~ between slashes)",
                self.server.path
            ));
        }
        if self.server.replay_cap_events == 0 {
            problems.push("server.replay_cap_events must be at least 1".to_owned());
        }
        if self.server.retention_interval_secs == 0 {
            problems.push("server.retention_interval_secs must be at least 1".to_owned());
        }
        if self.server.http_header_timeout_secs == 0 {
            problems.push("server.http_header_timeout_secs must be at least 1".to_owned());
        }
        if self.server.log_write_timeout_secs == 0 {
            problems.push("server.log_write_timeout_secs must be at least 1".to_owned());
        }
        if self.server.sse_heartbeat_secs == 0 {
            problems.push("server.sse_heartbeat_secs must be at least 1".to_owned());
        }
        if self.server.max_open_connections == Some(0) {
            problems.push("server.max_open_connections must be at least 1 (omit it for the default)".to_owned());
        }
        if self.server.metrics_host.parse::<IpAddr>().is_err() {
            problems.push(format!("server.metrics_host: {:?} is not an IP address", self.server.metrics_host));
        }
        if self.server.metrics_port.is_some_and(|port| port == self.server.port && port != 0) {
            problems.push("server.metrics_port must differ from server.port".to_owned());
        }
        if self.server.outbox_frames < 16 {
            problems.push("server.outbox_frames must be at least 16".to_owned());
        }
        if self.cluster.enabled {
            if !self.cluster.redis_url.starts_with("redis://") && !self.cluster.redis_url.starts_with("rediss://") {
                problems.push("cluster.redis_url must start with redis:// or rediss://".to_owned());
            }
            if self.cluster.prefix.is_empty() || self.cluster.prefix.contains(char::is_whitespace) {
                problems.push("cluster.prefix must be a non-empty word (REVERB_SCALING_CHANNEL)".to_owned());
            }
            if self.cluster.redis_timeout_secs == 0 {
                problems.push("cluster.redis_timeout_secs must be at least 1".to_owned());
            }
        }
        if self.server.durability == Durability::Buffered && self.server.flush_every_ms == 0 {
            problems.push("server.flush_every_ms must be at least 1 with durability = \"buffered\"".to_owned());
        }
        for (index, app) in self.apps.iter().enumerate() {
            let at = format!("apps[{index}]");
            for (field, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    problems.push(format!("{at}.{field} is missing"));
                }
            }
            if !app.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                problems.push(format!("{at}.id may only contain letters, digits, - _ ."));
            }
            if app.key.contains(['/', ':', '?', '#']) {
                problems.push(format!("{at}.key may not contain / : ? #"));
            }
            if app.ping_interval_secs == 0 {
                problems.push(format!("{at}.ping_interval_secs must be at least 1"));
            }
            if app.activity_timeout_secs == 0 {
                problems.push(format!("{at}.activity_timeout_secs must be at least 1"));
            }
            if app.max_message_size_bytes < 100 {
                problems.push(format!("{at}.max_message_size_bytes must be at least 100"));
            }
            if app.max_request_size_bytes < 100 {
                problems.push(format!("{at}.max_request_size_bytes must be at least 100"));
            }
            if app.presence_max_members == 0 || app.presence_max_member_size_bytes == 0 {
                problems
                    .push(format!("{at}.presence_max_members and .presence_max_member_size_bytes must be at least 1"));
            }
            if app.retention_max_events == Some(0) || app.retention_max_age_secs == Some(0) {
                problems.push(format!("{at}: retention settings must be at least 1 (omit them to keep everything)"));
            }
            if app.max_connections == Some(0) {
                problems.push(format!("{at}.max_connections must be at least 1 (omit it for no limit)"));
            }
            if app.client_events_per_sec == 0 && app.accept_client_events_from != ClientEventsFrom::None {
                problems.push(format!(
                    "{at}.client_events_per_sec must be at least 1 (or set accept_client_events_from = \"none\")"
                ));
            }
            for (target_index, target) in app.webhooks.iter().enumerate() {
                problems.extend(target.problems(&format!("{at}.webhooks[{target_index}]")));
                if app.webhooks[..target_index].iter().any(|other| other.url == target.url) {
                    problems.push(format!("{at}.webhooks[{target_index}].url is already a target of this app"));
                }
            }
            for (other_index, other) in self.apps.iter().enumerate().take(index) {
                if !app.id.is_empty() && other.id == app.id {
                    problems.push(format!("{at}.id {:?} is already used by apps[{other_index}]", app.id));
                }
                if !app.key.is_empty() && other.key == app.key {
                    problems.push(format!("{at}.key is already used by apps[{other_index}]"));
                }
            }
        }
        problems
    }

    /// Whether the server listens on loopback only (where a demo app is harmless).
    pub fn is_loopback(&self) -> bool {
        self.server.host == "localhost"
            || self.server.host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
    }

    /// Applies the no-app rule: on loopback, add the demo app (returned so the caller can print
    /// it); elsewhere refuse to start and say how to configure an app.
    pub fn finish(mut self) -> Result<(Self, Option<AppConfig>), ConfigError> {
        if !self.apps.is_empty() {
            return Ok((self, None));
        }
        if !self.is_loopback() {
            return Err(ConfigError::one(format!(
                "no app is configured and {} is not a loopback address: set REVERB_APP_ID, REVERB_APP_KEY and \
                 REVERB_APP_SECRET, or list apps in a config file (--config), or start on 127.0.0.1 for a demo app",
                self.server.host
            )));
        }
        let demo = demo_app();
        self.apps.push(demo.clone());
        Ok((self, Some(demo)))
    }
}

/// `path` as the server uses it: trimmed, with one leading `/` and no trailing one; `""` and `"/"`
/// are the root (empty).
fn normalized_path(path: &str) -> String {
    let path = path.trim().trim_end_matches('/');
    match path {
        "" => String::new(),
        path if path.starts_with('/') => path.to_owned(),
        path => format!("/{path}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> FakeEnv {
        FakeEnv(pairs.iter().copied().collect())
    }

    #[test]
    fn reverb_variables_configure_one_app_and_flags_win() {
        let env = env(&[
            ("REVERB_APP_ID", "1"),
            ("REVERB_APP_KEY", "k"),
            ("REVERB_APP_SECRET", "s"),
            ("REVERB_SERVER_HOST", "127.0.0.1"),
            ("REVERB_SERVER_PORT", "9000"),
            ("REVERB_APP_MAX_CONNECTIONS", "5"),
        ]);
        let config = Config::load(None, &env, &Overrides { port: Some(7000), ..Default::default() }).unwrap();
        assert_eq!(config.server.host, "127.0.0.1");
        assert_eq!(config.server.port, 7000);
        assert_eq!(config.apps.len(), 1);
        assert_eq!(
            (config.apps[0].id.as_str(), config.apps[0].key.as_str(), config.apps[0].secret.as_str()),
            ("1", "k", "s")
        );
        assert_eq!(config.apps[0].max_connections, Some(5));
        assert_eq!(config.apps[0].source, AppSource::Environment);
        assert_eq!(config.apps[0].max_message_size_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn reverb_variables_override_the_file_app_with_the_same_key() {
        let text = "[[apps]]\nid = \"file-id\"\nkey = \"k\"\nsecret = \"file-secret\"\nping_interval_secs = 5\n";
        let env = env(&[("REVERB_APP_KEY", "k"), ("REVERB_APP_SECRET", "env-secret")]);
        let config = Config::load(Some(text), &env, &Overrides::default()).unwrap();
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].secret, "env-secret");
        assert_eq!(config.apps[0].id, "file-id");
        assert_eq!(config.apps[0].ping_interval_secs, 5);
        assert_eq!(config.apps[0].source, AppSource::FileAndEnvironment);
        let file_only = Config::load(Some(text), &super::tests::env(&[]), &Overrides::default()).unwrap();
        assert_eq!(file_only.apps[0].source, AppSource::File);
    }

    /// `server.path` or Reverb's `REVERB_SERVER_PATH` (which wins) is normalized to one leading
    /// slash and none at the end; anything but plain segments is refused.
    #[test]
    fn the_path_prefix_is_normalized_and_checked() {
        let path_of = |file: &str, variable: Option<&'static str>| {
            let text = format!("[server]\npath = {file:?}\n");
            let variables: Vec<_> = variable.map(|value| ("REVERB_SERVER_PATH", value)).into_iter().collect();
            Config::load(Some(&text), &env(&variables), &Overrides::default()).map(|config| config.server.path)
        };
        assert_eq!(path_of("", None).unwrap(), "");
        assert_eq!(path_of("/", None).unwrap(), "");
        assert_eq!(path_of("reverb/", None).unwrap(), "/reverb");
        assert_eq!(path_of("/ws/reverb", None).unwrap(), "/ws/reverb");
        assert_eq!(path_of("/file", Some("/env")).unwrap(), "/env");
        for bad in ["/a b", "/a//b", "/a?b", "/%41"] {
            let err = path_of(bad, None).unwrap_err();
            assert!(err.to_string().contains("server.path"), "{bad}: {err}");
        }
    }

    /// Reverb's `REVERB_MAX_REQUEST_SIZE` is a server-wide limit: it sets every app's, the file's
    /// and the environment's, over the file's own; a value that is no number is a problem.
    #[test]
    fn reverb_max_request_size_sets_every_apps_limit() {
        let text = "[[apps]]\nid = \"a\"\nkey = \"ka\"\nsecret = \"s\"\nmax_request_size_bytes = 5000\n\
                    [[apps]]\nid = \"b\"\nkey = \"kb\"\nsecret = \"s\"\n";
        let variables = [("REVERB_APP_KEY", "kc"), ("REVERB_APP_ID", "c"), ("REVERB_APP_SECRET", "s")];
        let config = Config::load(Some(text), &env(&variables), &Overrides::default()).unwrap();
        let limits: Vec<usize> = config.apps.iter().map(|app| app.max_request_size_bytes).collect();
        assert_eq!(limits, [5000, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_BYTES]);

        let with_limit = [variables.as_slice(), &[("REVERB_MAX_REQUEST_SIZE", "20000")]].concat();
        let config = Config::load(Some(text), &env(&with_limit), &Overrides::default()).unwrap();
        let limits: Vec<usize> = config.apps.iter().map(|app| app.max_request_size_bytes).collect();
        assert_eq!(limits, [20000, 20000, 20000]);

        let err =
            Config::load(Some(text), &env(&[("REVERB_MAX_REQUEST_SIZE", "10kb")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("REVERB_MAX_REQUEST_SIZE: \"10kb\" is not a whole number"), "{err}");
        let err =
            Config::load(Some(text), &env(&[("REVERB_MAX_REQUEST_SIZE", "10")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("max_request_size_bytes must be at least 100"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [server]
            port = 8080
            [[apps]]
            id = "a"
            key = "k"
            secret = ""
            ping_interval_secs = 0
            [[apps]]
            id = "a"
            key = "k"
            secret = "s"
        "#;
        let err = Config::load(Some(text), &env(&[("REVERB_SERVER_PORT", "nope")]), &Overrides::default()).unwrap_err();
        let all = err.to_string();
        assert!(all.contains("REVERB_SERVER_PORT"), "{all}");
        assert!(all.contains("apps[0].secret is missing"), "{all}");
        assert!(all.contains("apps[0].ping_interval_secs"), "{all}");
        assert!(all.contains("apps[1].id \"a\" is already used"), "{all}");
        assert!(all.contains("apps[1].key is already used"), "{all}");
        assert_eq!(err.problems.len(), 5, "{all}");
    }

    /// Reverb's scaling variables turn cluster mode on; Laravel's REDIS_* variables say where
    /// Redis is, REDIS_URL first.
    #[test]
    fn reverb_scaling_and_laravel_redis_variables_configure_the_cluster() {
        let config = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        assert!(!config.cluster.enabled, "off unless asked");
        let config = Config::load(
            None,
            &env(&[
                ("REVERB_SCALING_ENABLED", "true"),
                ("REVERB_SCALING_CHANNEL", "shop"),
                ("REDIS_HOST", "10.0.0.5"),
                ("REDIS_PORT", "6380"),
                ("REDIS_PASSWORD", "p@ss word"),
                ("REDIS_DB", "2"),
                ("REDIS_TIMEOUT", "2.5"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(config.cluster.enabled);
        assert_eq!(config.cluster.prefix, "shop");
        assert_eq!(config.cluster.redis_url, "redis://:p%40ss+word@10.0.0.5:6380/2");
        assert_eq!(config.cluster.redis_timeout_secs, 3);
        assert!(!format!("{config:?}").contains("p%40ss"), "the password never reaches Debug output");
        let url_wins =
            env(&[("REVERB_SCALING_ENABLED", "1"), ("REDIS_URL", "rediss://u:s@h:1/0"), ("REDIS_HOST", "x")]);
        let config = Config::load(None, &url_wins, &Overrides::default()).unwrap();
        assert_eq!(config.cluster.redis_url, "rediss://u:s@h:1/0");
        let flag = Overrides { redis_url: Some("redis://127.0.0.1:7000".into()), ..Overrides::default() };
        let config = Config::load(None, &env(&[]), &flag).unwrap();
        assert!(config.cluster.enabled, "--redis-url turns cluster mode on");
        let err = Config::load(None, &env(&[("REVERB_SCALING_ENABLED", "maybe")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("REVERB_SCALING_ENABLED"), "{err}");
    }

    /// A config printed with `{:?}` (a log line, a panic, an assertion) never shows the secret.
    #[test]
    fn debug_output_redacts_the_secret() {
        let app = AppConfig { id: "1".into(), key: "k".into(), secret: "s3cr3t-value".into(), ..AppConfig::default() };
        let config = Config { apps: vec![app], ..Config::default() };
        let printed = format!("{config:?} {config:#?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(printed.contains("<redacted>") && printed.contains("\"k\""), "{printed}");
    }

    #[test]
    fn connection_limits_must_be_at_least_one() {
        let text = "[server]\nhttp_header_timeout_secs = 0\nmax_open_connections = 0\n";
        let err = Config::load(Some(text), &env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        let flags =
            Overrides { http_header_timeout_secs: Some(5), max_open_connections: Some(100), ..Default::default() };
        let config = Config::load(Some(text), &env(&[]), &flags).unwrap();
        assert_eq!((config.server.http_header_timeout_secs, config.server.max_open_connections), (5, Some(100)));
    }

    /// Metrics are off until a port is given, and then listen on loopback unless told otherwise.
    #[test]
    fn metrics_are_off_by_default_and_on_loopback_when_enabled() {
        let config = Config::from_toml("").unwrap();
        assert_eq!((config.server.metrics_port, config.server.metrics_host.as_str()), (None, "127.0.0.1"));
        let on = Config::from_toml("[server]\nmetrics_port = 9601\n").unwrap();
        assert_eq!(on.server.metrics_port, Some(9601));
        let bad = Config::from_toml("[server]\nport = 9601\nmetrics_port = 9601\nmetrics_host = \"here\"\n").unwrap();
        let problems = bad.problems();
        assert!(problems.iter().any(|p| p.contains("metrics_port must differ")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("metrics_host")), "{problems:?}");
    }

    /// Webhook targets come from `[[apps.webhooks]]`, or REPRISE_WEBHOOK_URL for the one-app case;
    /// every problem of every target is reported with the rest.
    #[test]
    fn webhooks_are_configured_per_app_and_validated() {
        let text = r#"
            [[apps]]
            id = "a"
            key = "k"
            secret = "s"
            [[apps.webhooks]]
            url = "https://example.com/hooks"
            event_types = ["member_added", "member_removed"]
            filter = { channel_name_starts_with = "presence-" }
            headers = { Authorization = "Bearer t" }
            [[apps.webhooks]]
            url = "http://other/"
        "#;
        let config = Config::load(Some(text), &env(&[]), &Overrides::default()).unwrap();
        let hooks = &config.apps[0].webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].filter.channel_name_starts_with.as_deref(), Some("presence-"));
        assert_eq!(hooks[1].event_types, None);
        let from_env = env(&[
            ("REVERB_APP_ID", "1"),
            ("REVERB_APP_KEY", "k2"),
            ("REVERB_APP_SECRET", "s"),
            ("REPRISE_WEBHOOK_URL", "http://127.0.0.1:9/w"),
            ("REPRISE_WEBHOOK_EVENTS", "channel_occupied, channel_vacated"),
        ]);
        let config = Config::load(None, &from_env, &Overrides::default()).unwrap();
        let hook = &config.apps[0].webhooks[0];
        assert_eq!((hook.url.as_str(), hook.kinds().count_ones()), ("http://127.0.0.1:9/w", 2));
        let bad = "[[apps]]\nid=\"a\"\nkey=\"k\"\nsecret=\"s\"\n[[apps.webhooks]]\nurl=\"nope\"\n\
                   event_types=[\"channel_ocupied\"]\n[[apps.webhooks]]\nurl=\"nope\"\n";
        let err = Config::load(Some(bad), &env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(err.to_string().contains("apps[0].webhooks[1].url is already"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[server]\nprot = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `prot`"), "{err}");
        let err =
            Config::from_toml("[[apps]]\nid=\"a\"\nkey=\"k\"\nsecret=\"s\"\nmax_mesage_size_bytes=1\n").unwrap_err();
        assert!(err.to_string().contains("max_mesage_size_bytes"), "{err}");
    }

    #[test]
    fn no_app_means_demo_on_loopback_and_refusal_elsewhere() {
        let loopback =
            Config::load(None, &env(&[]), &Overrides { host: Some("127.0.0.1".into()), ..Default::default() }).unwrap();
        let (config, demo) = loopback.finish().unwrap();
        assert_eq!(demo.unwrap().key, config.apps[0].key);
        assert_eq!(config.apps[0].source, AppSource::Demo);
        let public = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
        let err = public.finish().unwrap_err();
        assert!(err.to_string().contains("REVERB_APP_KEY"), "{err}");
    }
}
