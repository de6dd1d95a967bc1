//! `idle`: N connections subscribed and silent. Measures the server's resident memory per
//! connection (VmRSS after minus before, over N), then proves every connection is still alive by
//! publishing one event per channel and checking each socket receives exactly its channel's one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::SUBSCRIBE_ALL_TIMEOUT;
use crate::Env;
use crate::publisher::{self, Until};
use crate::report::{Check, Report};
use crate::stats::{self, Usage};
use crate::subscriber::{self, Outcome, Shared, Tracker};

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 15_000)]
    connections: usize,
    /// Connection i subscribes to channel i mod C.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Wait this long after the last subscribe before reading the server's memory.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
}

pub async fn run(env: &Env, args: IdleArgs) -> anyhow::Result<bool> {
    let mut check = Check::default();
    let connections = args.connections;
    let channels = args.channels.clamp(1, connections.max(1));
    let names: Vec<Arc<str>> = (0..channels).map(|i| Arc::from(format!("idle-{}-{i}", env.run_id))).collect();
    let before = Usage::now(env.server_pid)?;
    eprintln!("idle: connecting {connections} subscribers on {channels} channels");

    let shared = Arc::new(Shared::new(env.connect_concurrency));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut subscribers = Vec::with_capacity(connections);
    for i in 0..connections {
        let channel = i % channels;
        let (shared, stop, target, name) =
            (Arc::clone(&shared), stop.clone(), env.target.clone(), Arc::clone(&names[channel]));
        subscribers.push(tokio::spawn(async move {
            let mut outcome = Outcome { channel, tracker: Tracker::default(), replay: None, ended: None, error: None };
            match subscriber::open(&shared, &target, &name, None).await {
                Ok((mut conn, _)) => {
                    shared.subscribed.fetch_add(1, Ordering::AcqRel);
                    outcome.ended = Some(subscriber::pump(&mut conn, &mut outcome.tracker, false, &stop, None).await);
                }
                Err(error) => {
                    shared.failed.fetch_add(1, Ordering::AcqRel);
                    outcome.error = Some(format!("connect/subscribe failed: {error}"));
                }
            }
            outcome
        }));
    }
    let (subscribed, failed) = shared.wait_subscribed(connections, SUBSCRIBE_ALL_TIMEOUT).await;
    let connect_time = started.elapsed();
    check.expect(subscribed == connections, || {
        format!("only {subscribed} of {connections} subscribed ({failed} failed)")
    });
    let connected = Usage::now(env.server_pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let settled = Usage::now(env.server_pid)?;

    // Liveness: one event per channel; every socket must get exactly its channel's event.
    let published: Arc<[AtomicU64]> = (0..channels).map(|_| AtomicU64::new(0)).collect();
    if check.passed() {
        stats::reset();
        let all: Vec<(usize, Arc<str>)> = names.iter().cloned().enumerate().collect();
        let until = Until { duration: None, events: Some(u64::try_from(channels)?), stop: CancellationToken::new() };
        let report =
            publisher::run(env.target.clone(), all, 0.0, until, env.payload_bytes, Arc::clone(&published)).await;
        for error in report.errors {
            check.fail(error);
        }
        let expected = u64::try_from(connections)?;
        let arrived = stats::wait_for_frames(expected, Duration::from_secs(30)).await;
        check.expect(arrived, || format!("liveness: only {} of {expected} sockets got their event", stats::frames()));
    }
    stop.cancel();
    for task in subscribers {
        let outcome = task.await?;
        outcome.check_complete(published[outcome.channel].load(Ordering::Acquire), &mut check);
    }

    let n = u64::try_from(connections)?;
    let mut report = Report::new("idle", env.label.as_deref());
    report.figure("connections", "connections", connections);
    report.figure("channels", "channels", channels);
    report.figure("connect + subscribe all (s)", "connect_secs", stats::round2(connect_time.as_secs_f64()));
    report.figure("connects + subscribes/s", "connects_per_sec", stats::rate(n, connect_time));
    let server_rss = before.server.zip(settled.server).map(|(a, b)| (a.rss_bytes, b.rss_bytes));
    report.maybe("server RSS before (MiB)", "server_rss_before_mib", server_rss.map(|(a, _)| mib(a)));
    report.maybe("server RSS with N idle (MiB)", "server_rss_after_mib", server_rss.map(|(_, b)| mib(b)));
    report.maybe(
        "server bytes per idle connection",
        "server_bytes_per_connection",
        server_rss.and_then(|(a, b)| stats::per(b.saturating_sub(a), n)),
    );
    let (server_cpu, _) = before.cpu_since(&connected);
    report.maybe(
        "server CPU us per connect+subscribe",
        "server_cpu_us_per_connect",
        server_cpu.and_then(|us| stats::per(us, n)),
    );
    let (idle_cpu, _) = connected.cpu_since(&settled);
    report.maybe(
        "server CPU while idle (% of one core)",
        "server_idle_cpu_percent",
        idle_cpu.and_then(|us| {
            stats::per(us * 100, u64::try_from(settled.at.duration_since(connected.at).as_micros()).ok()?)
        }),
    );
    report.figure(
        "load generator bytes per connection",
        "loadgen_bytes_per_connection",
        stats::per(settled.client.rss_bytes.saturating_sub(before.client.rss_bytes), n).unwrap_or(0.0),
    );
    super::add_others(&mut report, &before, &settled);
    Ok(report.print(&check))
}

fn mib(bytes: u64) -> f64 {
    stats::round2(stats::as_f64(bytes) / (1024.0 * 1024.0))
}
