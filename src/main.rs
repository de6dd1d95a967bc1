//! The `reprise` binary: command line, logging and signals. Everything else is the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reprise::config::{Config, Overrides, ProcessEnv};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// Reprise: a Pusher-protocol WebSocket server (drop-in for Laravel Reverb) that keeps a durable
/// log of every event and replays what a reconnecting client missed.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    ///
    /// Apps come from a config file (--config) and/or Reverb's variables: REVERB_APP_ID,
    /// REVERB_APP_KEY, REVERB_APP_SECRET, REVERB_SERVER_HOST, REVERB_SERVER_PORT,
    /// REVERB_APP_PING_INTERVAL, REVERB_APP_ACTIVITY_TIMEOUT, REVERB_APP_MAX_MESSAGE_SIZE,
    /// REVERB_APP_MAX_CONNECTIONS, REVERB_APP_ACCEPT_CLIENT_EVENTS_FROM. Flags win over both.
    /// With no app on a loopback host, a demo app is created and printed.
    Start {
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
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let Command::Start {
        host,
        port,
        config,
        data_dir,
        http_header_timeout_secs,
        max_open_connections,
        accept_data_loss,
        redis_url,
    } = Cli::parse().command;
    let file_text = config
        .as_ref()
        .map(|path| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    let overrides =
        Overrides { host, port, data_dir, redis_url, http_header_timeout_secs, max_open_connections, accept_data_loss };
    let (config, demo) = Config::load(file_text.as_deref(), &ProcessEnv, &overrides)
        .and_then(Config::finish)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(demo) = demo {
        // Never the secret, even the demo's: it is in the README.
        tracing::warn!(
            app_id = %demo.id, key = %demo.key,
            "no app configured: serving a demo app on loopback only; configure REVERB_APP_* for real use"
        );
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
