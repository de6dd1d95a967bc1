//! `publish`: acknowledged publishes per second through the HTTP API, from many concurrent
//! publishers (each on its own keep-alive connection and channel, one publish in flight each).
//! The durability mode is the server's; say which with `--label`. With `--batch N` each request
//! is a `batch_events` call of N events to the publisher's channel, and every figure (publishes,
//! publishes/s, CPU per publish) counts events, so the two modes compare per event.
//!
//! Check: every publish answered 200, and where the server returns event ids (Reprise) each
//! channel's ids grow by exactly one per acknowledged publish.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{add_cpu, add_latency};
use crate::Env;
use crate::publisher::{self, PublisherReport, Until};
use crate::report::{Check, Report};
use crate::stats::{self, Usage};

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Concurrent publishers (one HTTP connection and one channel each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Publish this long first, unmeasured (connections, caches, sled's first segments).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Events per request: above 1, each publisher sends `batch_events` calls of this many
    /// events to its channel (at most 10, Pusher's limit). Figures stay per event.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10))]
    batch: u16,
}

async fn phase(
    env: &Env,
    batch: usize,
    names: &[Arc<str>],
    published: &Arc<[AtomicU64]>,
    duration: Duration,
) -> anyhow::Result<Vec<PublisherReport>> {
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let until = Until { duration: Some(duration), events: None, stop: CancellationToken::new() };
        let channels = vec![(i, Arc::clone(name))];
        // Publisher i on node i mod n: every node takes publishes, each channel through one node.
        tasks.push(tokio::spawn(publisher::run_via(
            vec![env.node(i).clone()],
            channels,
            0.0,
            batch,
            until,
            env.payload_bytes,
            Arc::clone(published),
        )));
    }
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await?);
    }
    Ok(reports)
}

pub async fn run(env: &Env, args: PublishArgs) -> anyhow::Result<bool> {
    let mut check = Check::default();
    let concurrency = args.concurrency.max(1);
    let batch = usize::from(args.batch);
    let names: Vec<Arc<str>> = (0..concurrency).map(|i| Arc::from(format!("publish-{}-{i}", env.run_id))).collect();
    let published: Arc<[AtomicU64]> = (0..concurrency).map(|_| AtomicU64::new(0)).collect();
    if args.warmup_secs > 0.0 {
        eprintln!("publish: warming up for {}s", args.warmup_secs);
        for report in phase(env, batch, &names, &published, Duration::from_secs_f64(args.warmup_secs)).await? {
            for error in report.errors {
                check.fail(format!("warm-up: {error}"));
            }
        }
    }
    eprintln!("publish: {concurrency} publishers for {}s", args.duration_secs);
    let before = Usage::now(env.server_pid)?;
    let started = Instant::now();
    let reports = phase(env, batch, &names, &published, Duration::from_secs_f64(args.duration_secs)).await?;
    let elapsed = started.elapsed();
    let after = Usage::now(env.server_pid)?;
    let mut ack = publisher::ack_histogram();
    let mut publishes = 0;
    for report in reports {
        publishes += report.publishes;
        ack.add(&report.ack_ns).expect("same bounds");
        for error in report.errors {
            check.fail(error);
        }
    }
    check.expect(publishes > 0, || "nothing was acknowledged".to_owned());

    let mut report = Report::new("publish", env.label.as_deref());
    report.add(
        "durability (--label)",
        env.label.clone().unwrap_or_else(|| "not given".into()),
        "durability",
        env.label.clone(),
    );
    report.figure("nodes", "nodes", env.nodes.len());
    report.figure("concurrent publishers", "concurrency", concurrency);
    report.figure("events per request", "batch", batch);
    report.figure("payload bytes", "payload_bytes", env.payload_bytes);
    report.figure("acknowledged publishes", "publishes", publishes);
    report.figure("acknowledged publishes/s", "publishes_per_sec", stats::rate(publishes, elapsed));
    add_latency(&mut report, "publish ack latency", "ack_latency_us", &ack);
    add_cpu(&mut report, &before, &after, publishes, "publish");
    Ok(report.print(&check))
}
