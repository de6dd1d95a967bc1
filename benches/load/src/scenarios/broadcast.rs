//! `fanout` (S subscribers on one channel) and `channels` (C channels, a few subscribers each):
//! the same measurement with a different shape. Subscribers connect first; then publishers send
//! through the HTTP API for a while; every subscriber must receive every event of its channel, in
//! order, exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::{SUBSCRIBE_ALL_TIMEOUT, add_cpu, add_latency};
use crate::Env;
use crate::publisher::{self, Until};
use crate::report::{Check, Report};
use crate::sse;
use crate::stats::{self, Usage};
use crate::subscriber::{self, Outcome, Shared, Tracker};

/// How subscribers receive events.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A Pusher WebSocket per subscriber.
    Ws,
    /// A Reprise event stream (`GET /app/{key}/stream`, Server-Sent Events) per subscriber.
    Sse,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Subscribers on the one channel.
    #[arg(long, default_value_t = 2000)]
    subscribers: usize,
    /// How subscribers receive: Pusher WebSockets, or Reprise's event streams.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Publishes per second (0 = back to back, each as soon as the previous is acknowledged).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many publishes (before the duration if reached first).
    #[arg(long)]
    events: Option<u64>,
    /// How long to wait after the last publish for every frame to arrive.
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
    /// Events per publish request: above 1, each request is a `batch_events` call of this many
    /// events (at most 10), so every subscriber gets them together, as under a burst of
    /// publishes. Rates and counts stay per event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10))]
    batch: u16,
}

#[derive(Args, Debug)]
pub struct ChannelsArgs {
    #[arg(long, default_value_t = 5000)]
    channels: usize,
    #[arg(long, default_value_t = 2)]
    subscribers_per_channel: usize,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    transport: Transport,
    /// Concurrent publishers; each owns every P-th channel and cycles through them.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Publishes per second over all channels (0 = each publisher back to back).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    #[arg(long)]
    events: Option<u64>,
    #[arg(long, default_value_t = 30.0)]
    drain_secs: f64,
}

struct Plan {
    scenario: &'static str,
    channels: usize,
    subscribers_per_channel: usize,
    transport: Transport,
    publishers: usize,
    rate: f64,
    /// Events per publish request.
    batch: usize,
    duration: Duration,
    events: Option<u64>,
    drain: Duration,
}

pub async fn fanout(env: &Env, args: FanoutArgs) -> anyhow::Result<bool> {
    run(
        env,
        Plan {
            scenario: "fanout",
            channels: 1,
            subscribers_per_channel: args.subscribers,
            transport: args.transport,
            publishers: 1,
            rate: args.rate,
            batch: usize::from(args.batch),
            duration: Duration::from_secs_f64(args.duration_secs),
            events: args.events,
            drain: Duration::from_secs_f64(args.drain_secs),
        },
    )
    .await
}

pub async fn channels(env: &Env, args: ChannelsArgs) -> anyhow::Result<bool> {
    run(
        env,
        Plan {
            scenario: "channels",
            channels: args.channels.max(1),
            subscribers_per_channel: args.subscribers_per_channel,
            transport: args.transport,
            publishers: args.publishers.clamp(1, args.channels.max(1)),
            rate: args.rate,
            batch: 1,
            duration: Duration::from_secs_f64(args.duration_secs),
            events: args.events,
            drain: Duration::from_secs_f64(args.drain_secs),
        },
    )
    .await
}

async fn run(env: &Env, plan: Plan) -> anyhow::Result<bool> {
    let mut check = Check::default();
    let names: Vec<Arc<str>> =
        (0..plan.channels).map(|i| Arc::from(format!("{}-{}-{i}", plan.scenario, env.run_id))).collect();
    let connections = plan.channels * plan.subscribers_per_channel;
    eprintln!("{}: connecting {connections} subscribers on {} channel(s)", plan.scenario, plan.channels);

    let shared = Arc::new(Shared::new(env.connect_concurrency));
    let stop = CancellationToken::new();
    let connect_started = Instant::now();
    let mut subscribers = Vec::with_capacity(connections);
    // Round-robin over channels so every channel fills up at the same pace, and over the nodes
    // (with --nodes) so every channel has subscribers on every node.
    for round in 0..plan.subscribers_per_channel {
        for (channel, name) in names.iter().enumerate() {
            let node = env.node(channel + round).clone();
            let (shared, stop, target, name, transport) =
                (Arc::clone(&shared), stop.clone(), node, Arc::clone(name), plan.transport);
            subscribers.push(tokio::spawn(async move {
                let mut outcome =
                    Outcome { channel, tracker: Tracker::default(), replay: None, ended: None, error: None };
                if transport == Transport::Sse {
                    match sse::open(&shared, &target, &name).await {
                        Ok(mut conn) => {
                            shared.subscribed.fetch_add(1, Ordering::AcqRel);
                            outcome.ended = Some(sse::pump(&mut conn, &mut outcome.tracker, true, &stop).await);
                        }
                        Err(error) => {
                            shared.failed.fetch_add(1, Ordering::AcqRel);
                            outcome.error = Some(format!("stream open failed: {error}"));
                        }
                    }
                    return outcome;
                }
                match subscriber::open(&shared, &target, &name, None).await {
                    Ok((mut conn, replay)) => {
                        shared.subscribed.fetch_add(1, Ordering::AcqRel);
                        outcome.replay = Some(replay);
                        outcome.ended =
                            Some(subscriber::pump(&mut conn, &mut outcome.tracker, true, &stop, None).await);
                    }
                    Err(error) => {
                        shared.failed.fetch_add(1, Ordering::AcqRel);
                        outcome.error = Some(format!("connect/subscribe failed: {error}"));
                    }
                }
                outcome
            }));
        }
    }
    let (subscribed, failed) = shared.wait_subscribed(connections, SUBSCRIBE_ALL_TIMEOUT).await;
    let connect_time = connect_started.elapsed();
    check.expect(subscribed == connections, || {
        format!("only {subscribed} of {connections} subscribed ({failed} failed) within {SUBSCRIBE_ALL_TIMEOUT:?}")
    });

    // Measure: publish, then wait until every frame arrived.
    let published: Arc<[AtomicU64]> = (0..plan.channels).map(|_| AtomicU64::new(0)).collect();
    let mut publisher_reports = Vec::new();
    let before = Usage::now(env.server_pid)?;
    let started = Instant::now();
    if check.passed() {
        stats::reset();
        eprintln!("{}: publishing for {:?} at {} events/s", plan.scenario, plan.duration, plan.rate);
        let mut tasks = Vec::new();
        for p in 0..plan.publishers {
            let owned: Vec<(usize, Arc<str>)> =
                (p..plan.channels).step_by(plan.publishers).map(|i| (i, Arc::clone(&names[i]))).collect();
            let events = plan.events.map(|total| share(total, plan.publishers, p));
            let until = Until { duration: Some(plan.duration), events, stop: CancellationToken::new() };
            let rate = plan.rate / stats::as_f64(u64::try_from(plan.publishers).unwrap_or(1));
            // Each publisher sends through every node in turn, starting at its own.
            tasks.push(tokio::spawn(publisher::run_via(
                env.nodes_from(p),
                owned,
                rate,
                plan.batch,
                until,
                env.payload_bytes,
                Arc::clone(&published),
            )));
        }
        for task in tasks {
            publisher_reports.push(task.await?);
        }
    }
    let publishing_time = started.elapsed();
    let publishes: u64 = publisher_reports.iter().map(|r| r.publishes).sum();
    let subscribers_per_channel = u64::try_from(plan.subscribers_per_channel).unwrap_or(u64::MAX);
    let expected: u64 = published.iter().map(|p| p.load(Ordering::Acquire) * subscribers_per_channel).sum();
    let all_arrived = stats::wait_for_frames(expected, plan.drain).await;
    let elapsed = started.elapsed();
    let after = Usage::now(env.server_pid)?;
    let frames = stats::frames();
    check.expect(all_arrived, || {
        format!("only {frames} of {expected} frames arrived within {:?} of the last publish", plan.drain)
    });
    check.expect(publishes > 0, || "nothing was published".to_owned());

    stop.cancel();
    let mut ack = publisher::ack_histogram();
    for report in &publisher_reports {
        ack.add(&report.ack_ns).expect("same bounds");
        for error in &report.errors {
            check.fail(error.clone());
        }
    }
    for task in subscribers {
        let outcome = task.await?;
        outcome.check_complete(published[outcome.channel].load(Ordering::Acquire), &mut check);
    }

    let mut report = Report::new(plan.scenario, env.label.as_deref());
    report.add(
        "transport",
        format!("{:?}", plan.transport).to_lowercase(),
        "transport",
        format!("{:?}", plan.transport).to_lowercase(),
    );
    report.figure("nodes", "nodes", env.nodes.len());
    report.figure("connections", "connections", connections);
    report.figure("channels", "channels", plan.channels);
    report.figure("subscribers per channel", "subscribers_per_channel", plan.subscribers_per_channel);
    report.figure("connect + subscribe all (s)", "connect_secs", stats::round2(connect_time.as_secs_f64()));
    report.figure("publishers", "publishers", plan.publishers);
    report.figure("events per publish request", "batch", plan.batch);
    report.add(
        "target publish rate (/s)",
        if plan.rate > 0.0 { plan.rate.to_string() } else { "as fast as acknowledged".into() },
        "target_rate",
        plan.rate,
    );
    report.figure("publishes", "publishes", publishes);
    report.figure("achieved publish rate (/s)", "publish_rate", stats::rate(publishes, publishing_time));
    report.figure("payload bytes", "payload_bytes", env.payload_bytes);
    report.figure("frames delivered", "frames", frames);
    report.figure("delivered frames/s", "frames_per_sec", stats::rate(frames, elapsed));
    add_latency(&mut report, "publish->receive latency", "latency_us", &stats::latency());
    add_latency(&mut report, "publish ack latency", "ack_latency_us", &ack);
    add_cpu(&mut report, &before, &after, frames, "frame");
    // Each publish also costs its HTTP call and its commit: with few subscribers per channel
    // that, not the frames, is most of the server's work.
    let (server_us, _) = before.cpu_since(&after);
    report.maybe(
        "server CPU us per publish",
        "server_cpu_us_per_publish",
        server_us.and_then(|us| stats::per(us, publishes)),
    );
    Ok(report.print(&check))
}

/// Publisher `index`'s share of `total` events split over `parts`.
fn share(total: u64, parts: usize, index: usize) -> u64 {
    let parts = u64::try_from(parts).unwrap_or(1).max(1);
    let index = u64::try_from(index).unwrap_or(0);
    total / parts + u64::from(index < total % parts)
}
