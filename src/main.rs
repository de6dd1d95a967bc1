//! The `reprise` binary: command line, logging and signals. Everything else is the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use reprise::config::{AppSource, ClusterConfig, Config, DEFAULT_DATA_DIR, Overrides, ProcessEnv};
use reprise_storage::{EventLog, SledLog, StorageError};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// Small over-aligned blocks (tokio's tasks and sockets' readiness records) come from free lists
/// instead of glibc's `memalign`, which leaves a hole in front of each: ~320 bytes per idle socket
/// (see `alloc/src/lib.rs`). Everything else is the system allocator's.
#[global_allocator]
static ALLOCATOR: reprise_alloc::Allocator = reprise_alloc::Allocator;

/// Reprise: a Pusher-protocol WebSocket server (drop-in for Laravel Reverb) that keeps a durable
/// log of every event and replays what a reconnecting client missed.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// How log lines are written to stderr: text (coloured only on a terminal, never with
    /// NO_COLOR set), or json (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "REPRISE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    ///
    /// Apps come from a config file (--config) and/or Reverb's variables: REVERB_APP_ID,
    /// REVERB_APP_KEY, REVERB_APP_SECRET, REVERB_SERVER_HOST, REVERB_SERVER_PORT, REVERB_SERVER_PATH,
    /// REVERB_APP_PING_INTERVAL, REVERB_APP_ACTIVITY_TIMEOUT, REVERB_APP_MAX_MESSAGE_SIZE,
    /// REVERB_APP_MAX_CONNECTIONS, REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM, REVERB_MAX_REQUEST_SIZE.
    /// Flags win over both.
    /// With no app on a loopback host, a demo app is created and printed.
    Start(StartArgs),
    /// Inspect, back up and restore the event log of a stopped server (offline: they fail while
    /// a server uses the data directory). See docs/operations.md, "Backup, restore and inspect".
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
}

#[derive(Args)]
struct StartArgs {
    /// Address to listen on [default: 0.0.0.0, or REVERB_SERVER_HOST].
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on [default: 8080, or REVERB_SERVER_PORT].
    #[arg(long)]
    port: Option<u16>,
    /// TOML file with [server] options and [[apps]] (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the event log [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds an HTTP connection has to send each request head, also the keep-alive idle
    /// timeout [default: 30].
    #[arg(long, value_name = "SECS")]
    http_header_timeout_secs: Option<u64>,
    /// Most open connections, HTTP and WebSocket; past it WebSockets are closed with 4100 and
    /// API calls get 503 [default: the open-files limit minus 256].
    #[arg(long, value_name = "N")]
    max_open_connections: Option<usize>,
    /// Serve Prometheus metrics at /metrics on this port, on its own listener [default: off].
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Address of the metrics listener [default: 127.0.0.1].
    #[arg(long, value_name = "ADDR")]
    metrics_host: Option<String>,
    /// Start even though the event log lost events it had made durable (a damaged data
    /// directory, which otherwise stops the start-up). What is left is kept, new ids never
    /// repeat old ones, and every client resuming from before gets recovered:false. Use it
    /// once, after reading docs/operations.md, not in a service file.
    #[arg(long)]
    accept_data_loss: bool,
    /// Run as a node of a cluster sharing this Redis (turns cluster mode on, like
    /// REVERB_SCALING_ENABLED=true with REDIS_URL; see docs/cluster.md).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print what the log holds, as JSON: channels, events and size; with --app, one line per
    /// channel of the app with its head and compaction mark.
    Stats {
        #[command(flatten)]
        data: DataDir,
        /// Also list this app's channels.
        #[arg(long, value_name = "ID")]
        app: Option<String>,
    },
    /// Write an app's history to stdout as JSON Lines (one event per line, with its id), for
    /// `reprise log import`.
    Export {
        #[command(flatten)]
        data: DataDir,
        /// The app whose channels to export.
        #[arg(long, value_name = "ID")]
        app: String,
        /// Only this channel.
        #[arg(long, value_name = "NAME")]
        channel: Option<String>,
    },
    /// Read `reprise log export` output from stdin into the log (created if missing), keeping
    /// every id. Refuses lines that would leave a gap in a channel or reuse an id.
    Import {
        #[command(flatten)]
        data: DataDir,
    },
}

/// Which log a `reprise log` command works on: a single node's data directory, or in cluster
/// mode the cluster's log in Redis, found as `reprise start` finds it.
#[derive(Args)]
struct DataDir {
    /// Directory of the event log.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Work on a cluster's shared log in this Redis instead (also REVERB_SCALING_ENABLED=true
    /// with REDIS_URL or REDIS_HOST...; the key prefix is REVERB_SCALING_CHANNEL). Online: the
    /// cluster may be running.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

/// A log opened for a `reprise log` command. Fields drop in order: the log before the runtime
/// its Redis connection runs on.
struct OpenedLog {
    log: Box<dyn EventLog>,
    _runtime: Option<tokio::runtime::Runtime>,
}

impl DataDir {
    /// The cluster's settings when the command is for the cluster's Redis.
    fn cluster(&self) -> anyhow::Result<Option<ClusterConfig>> {
        let overrides = Overrides { redis_url: self.redis_url.clone(), ..Overrides::default() };
        let config = Config::load(None, &ProcessEnv, &overrides)?;
        Ok(config.cluster.enabled.then_some(config.cluster))
    }

    /// Opens the log; `must_exist` refuses a data directory that holds none (an export from a
    /// mistyped path must not create an empty log and report nothing to export).
    fn open(&self, must_exist: bool) -> anyhow::Result<OpenedLog> {
        let Some(cluster) = self.cluster()? else {
            if must_exist {
                // sled keeps its log in the file `db` of its directory.
                anyhow::ensure!(
                    self.data_dir.join("db").is_file(),
                    "no event log in {} (see --data-dir)",
                    self.data_dir.display()
                );
            }
            return Ok(OpenedLog { log: Box::new(open_log(&self.data_dir)?), _runtime: None });
        };
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let where_ = reprise::config::redact_url_password(&cluster.redis_url);
        let log = reprise::cluster::open_log(&cluster, runtime.handle().clone())
            .with_context(|| format!("cannot reach the cluster's Redis at {where_}"))?;
        Ok(OpenedLog { log: Box::new(log), _runtime: Some(runtime) })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Start(args) => start_server(args),
        Command::Log { command } => run_log_command(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, cli.log_format);
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr (stdout is `reprise log export`'s), in the chosen format.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(ansi).init();
        }
        // Fields at the top level next to `message`, as log shippers index them.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Prints why the command failed: each cause once (an error that already quotes its cause is
/// not followed by it again), and what to do where that is known.
fn report(error: &anyhow::Error, format: LogFormat) {
    let mut message = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !message.contains(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    let hint = error.chain().find_map(|cause| match cause.downcast_ref::<StorageError>() {
        Some(StorageError::Locked(_)) => Some(
            "another reprise is probably running with this data directory: stop it first, or give each server \
             its own --data-dir",
        ),
        _ => None,
    });
    match format {
        LogFormat::Text => {
            eprintln!("Error: {message}");
            if let Some(hint) = hint {
                eprintln!("Hint: {hint}");
            }
        }
        LogFormat::Json => tracing::error!(error = %message, hint, "reprise failed"),
    }
}

fn start_server(args: StartArgs) -> anyhow::Result<()> {
    let StartArgs {
        host,
        port,
        config,
        data_dir,
        http_header_timeout_secs,
        max_open_connections,
        metrics_port,
        metrics_host,
        accept_data_loss,
        redis_url,
    } = args;
    let file_text = config
        .as_ref()
        .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    let overrides = Overrides {
        host,
        port,
        data_dir,
        redis_url,
        http_header_timeout_secs,
        max_open_connections,
        metrics_host,
        metrics_port,
        accept_data_loss,
    };
    let (config, _demo) = Config::load(file_text.as_deref(), &ProcessEnv, &overrides).and_then(Config::finish)?;
    for app in &config.apps {
        // Never the secret, even the demo's: it is in the README.
        if app.source == AppSource::Demo {
            tracing::warn!(
                app_id = %app.id, key = %app.key, source = %app.source,
                "no app configured: serving a demo app on loopback only; configure REVERB_APP_* for real use"
            );
        } else {
            tracing::info!(app_id = %app.id, key = %app.key, source = %app.source, "app configured");
        }
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    raise_open_files_limit();
    let served = runtime.block_on(async move {
        let listener = listen(&config.server.host, config.server.port)
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.server.host, config.server.port))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        reprise::run(listener, Arc::new(config), shutdown).await?;
        Ok(())
    });
    // Not a plain drop, which waits for every blocking call: one stuck on a disk that stopped
    // answering would keep the process from ever exiting.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    served
}

/// How long the runtime waits, after `run` returned, for calls still blocked in the log.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

fn run_log_command(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Stats { data, app } => {
            let opened = data.open(true)?;
            let log = opened.log.as_ref();
            let stats = log.stats()?;
            println!(
                "{}",
                serde_json::json!({
                    "channels": stats.channels, "events": stats.events, "size_on_disk_bytes": stats.size_on_disk_bytes,
                })
            );
            for key in app.map(|app| log.channels(&app)).transpose()?.unwrap_or_default() {
                let head = log.head(&key)?;
                println!(
                    "{}",
                    serde_json::json!({
                        "app": key.app, "channel": key.channel, "head": head.head,
                        "compacted_through": head.compacted_through,
                    })
                );
            }
        }
        LogCommand::Export { data, app, channel } => {
            let opened = data.open(true)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let moved = reprise::backup::export(opened.log.as_ref(), &app, channel.as_deref(), &mut out)?;
            tracing::info!(app, channels = moved.channels, events = moved.events, "exported");
        }
        LogCommand::Import { data } => {
            let opened = data.open(false)?;
            let moved = reprise::backup::import(opened.log.as_ref(), &mut std::io::stdin().lock())?;
            tracing::info!(channels = moved.channels, events = moved.events, "imported");
        }
    }
    Ok(())
}

fn open_log(dir: &Path) -> anyhow::Result<SledLog> {
    SledLog::open(dir).with_context(|| format!("cannot open the event log in {}", dir.display()))
}

/// Pending connections the kernel may queue before `accept`. A reconnect storm (a load balancer
/// recycling, every laptop waking at 9:00) arrives all at once; with the usual 128, SYNs beyond it
/// are dropped and retried by clients a second later. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("the host resolves to no address")))
}

/// Every socket is an open file: raise the soft limit to the hard one (often 1024 -> far more),
/// so the server is not capped at a thousand connections by a default it did not choose.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(open_files = ?limit.maximum, "raised the open-files limit"),
        Err(error) => tracing::warn!(%error, current = ?limit.current, "cannot raise the open-files limit"),
    }
}

/// Fires `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
