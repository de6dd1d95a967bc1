//! `reprise-load`: a load generator for Pusher-protocol servers (Reprise, Laravel Reverb, Soketi,
//! Sockudo). It only needs an app id, key and secret, talks to loopback only, and checks what it
//! receives (count per subscriber, order, no duplicates) so that a fast wrong answer fails.
//!
//! Every scenario prints a table and ends with one line of JSON; it exits non-zero when its check
//! fails. `replay` and `storm` use Reprise's replay extension (`since`, event ids); `fanout` and
//! `channels` can subscribe through Reprise's event streams (`--transport sse`).
//! See docs/benchmarks.md for the commands and figures.

mod publisher;
mod pusher;
mod report;
mod rest;
mod scenarios;
mod sse;
mod stats;
mod subscriber;
mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::rest::Target;

/// Load generator for Pusher-protocol WebSocket servers (loopback only).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Server address; must be a loopback address (127.0.0.0/8, ::1 or localhost).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, global = true, default_value_t = 8080, env = "REVERB_SERVER_PORT")]
    port: u16,
    /// The nodes of one Reprise cluster, comma-separated, each `HOST:PORT` or a bare `PORT` (on
    /// `--host`); replaces `--port`. `fanout` and `channels` spread their subscribers over the
    /// nodes and send each publisher's publishes through every node in turn; `publish` puts its
    /// publishers on the nodes in turn. Other scenarios use the first node only.
    #[arg(long, global = true, value_name = "NODE,NODE,...")]
    nodes: Option<String>,
    #[arg(long, global = true, default_value = "reprise-demo", env = "REVERB_APP_ID")]
    app_id: String,
    #[arg(long, global = true, default_value = "reprise-demo-key", env = "REVERB_APP_KEY")]
    key: String,
    #[arg(long, global = true, default_value = "reprise-demo-secret", env = "REVERB_APP_SECRET")]
    secret: String,
    /// The server's pid: report its CPU time per unit of work and its memory (from /proc).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Free text printed with the figures (e.g. the durability mode the server runs in).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Size of each event's data, in bytes (at least the sequence and timestamp).
    #[arg(long, global = true, default_value_t = 100)]
    payload_bytes: usize,
    /// Connects + subscribes in flight at once. Keep it under the server's accept backlog
    /// (Reprise's is 128): a SYN the backlog drops is retried by the kernel only after 1 s.
    #[arg(long, global = true, default_value_t = 100)]
    connect_concurrency: usize,
}

#[derive(Subcommand)]
enum Scenario {
    /// S subscribers on one channel; delivered frames/s and publish-to-receive latency.
    Fanout(scenarios::broadcast::FanoutArgs),
    /// C channels with a few subscribers each; publishes spread over them.
    Channels(scenarios::broadcast::ChannelsArgs),
    /// N idle subscribed connections; server memory per connection.
    Idle(scenarios::idle::IdleArgs),
    /// Acknowledged publishes/s through the HTTP API from many concurrent publishers.
    Publish(scenarios::publish::PublishArgs),
    /// Fill a channel with M events, then replay it to one client (WebSocket or HTTP history).
    Replay(scenarios::replay::ReplayArgs),
    /// K subscribers drop at once while publishing goes on, then all resume with since.
    Storm(scenarios::storm::StormArgs),
}

/// What a scenario needs to know about the server and the run.
#[derive(Debug, Clone)]
pub struct Env {
    /// The first node: the only one scenarios without a cluster run use.
    pub target: Target,
    /// Every node, `target` first; one entry without `--nodes`.
    pub nodes: Vec<Target>,
    pub server_pid: Option<u32>,
    pub label: Option<String>,
    pub payload_bytes: usize,
    pub connect_concurrency: usize,
    /// Makes channel names unique per run, so runs against one server never share a channel.
    pub run_id: String,
}

impl Env {
    /// The node the `index`-th socket or publisher uses: the nodes in turn.
    pub fn node(&self, index: usize) -> &Target {
        &self.nodes[index % self.nodes.len()]
    }

    /// Every node, starting with the `index`-th one's: a publisher that sends its k-th publish
    /// through `nodes_from(p)[k % n]` spreads its publishes over the cluster, and publishers
    /// started at different nodes do not all hit the same node at once.
    pub fn nodes_from(&self, index: usize) -> Vec<Target> {
        let n = self.nodes.len();
        (0..n).map(|k| self.nodes[(index + k) % n].clone()).collect()
    }
}

/// The nodes to target: `--nodes` (comma-separated `HOST:PORT` or `PORT`, each on `host` when no
/// host is given) or, without it, `host:port` alone. Every node must be on loopback.
fn node_addrs(nodes: Option<&str>, host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let Some(list) = nodes else { return Ok(vec![loopback_addr(host, port)?]) };
    let mut addrs = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let (node_host, node_port) = match entry.rsplit_once(':') {
            // `[::1]:8080` names an IPv6 host in brackets.
            Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            None => (host, entry),
        };
        let node_port: u16 =
            node_port.parse().map_err(|_| anyhow::anyhow!("--nodes: {entry:?} is not HOST:PORT or PORT"))?;
        let addr = loopback_addr(node_host, node_port)?;
        if addrs.contains(&addr) {
            bail!("--nodes: {addr} is named twice");
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

fn loopback_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = if host == "localhost" { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host.parse()? };
    if !ip.is_loopback() {
        bail!("--host {host} is not a loopback address: reprise-load only targets servers on this machine");
    }
    Ok(SocketAddr::new(ip, port))
}

/// Raises the soft open-files limit to the hard limit: every socket is a file, and the idle
/// scenario holds 15,000 of them (the default soft limit is often 1024).
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                eprintln!("reprise-load: open files limit raised from {:?} to {:?}", limit.current, limit.maximum)
            }
            Err(error) => eprintln!("reprise-load: cannot raise the open files limit: {error}"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_open_files_limit();
    let common = cli.common;
    if common.payload_bytes > 9_000 {
        bail!("--payload-bytes must stay under Pusher's 10 KB message limit");
    }
    let nodes: Vec<Target> = node_addrs(common.nodes.as_deref(), &common.host, common.port)?
        .into_iter()
        .map(|addr| Target {
            addr,
            app_id: common.app_id.clone(),
            key: common.key.clone(),
            secret: common.secret.clone(),
        })
        .collect();
    let env = Env {
        target: nodes[0].clone(),
        nodes,
        server_pid: common.server_pid,
        label: common.label,
        payload_bytes: common.payload_bytes,
        connect_concurrency: common.connect_concurrency,
        run_id: format!("{:x}", rand::random::<u32>()),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(common.threads.max(1)).enable_all().build()?;
    let passed = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Fanout(args) => scenarios::broadcast::fanout(&env, args).await,
            Scenario::Channels(args) => scenarios::broadcast::channels(&env, args).await,
            Scenario::Idle(args) => scenarios::idle::run(&env, args).await,
            Scenario::Publish(args) => scenarios::publish::run(&env, args).await,
            Scenario::Replay(args) => scenarios::replay::run(&env, args).await,
            Scenario::Storm(args) => scenarios::storm::run(&env, args).await,
        }
    })?;
    // Subscriber tasks may still hold sockets; do not wait for them to notice.
    runtime.shutdown_background();
    let reconnects = rest::RECONNECTS.load(std::sync::atomic::Ordering::Relaxed);
    if reconnects > 0 {
        eprintln!("note: the server closed the HTTP API connection {reconnects} times (Connection: close)");
    }
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(nodes: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(node_addrs(nodes, "127.0.0.1", 8080)?.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn without_nodes_the_one_target_is_host_and_port() {
        assert_eq!(addrs(None).unwrap(), ["127.0.0.1:8080"]);
    }

    #[test]
    fn nodes_are_kept_in_the_order_given_with_bare_ports_on_host() {
        assert_eq!(
            addrs(Some("127.0.0.1:9001, 9002,localhost:9003,[::1]:9004")).unwrap(),
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", "[::1]:9004"]
        );
    }

    #[test]
    fn a_node_off_loopback_is_refused() {
        let error = addrs(Some("127.0.0.1:9001,10.0.0.5:9002")).unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
    }

    #[test]
    fn malformed_or_repeated_nodes_are_refused() {
        assert!(addrs(Some("127.0.0.1:http")).is_err());
        assert!(addrs(Some("9001,,9002")).is_err());
        assert!(addrs(Some("127.0.0.1:70000")).is_err());
        let error = addrs(Some("9001,127.0.0.1:9001")).unwrap_err().to_string();
        assert!(error.contains("named twice"), "{error}");
    }
}
