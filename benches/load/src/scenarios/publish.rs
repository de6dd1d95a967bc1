//! `publish`: acknowledged publishes per second through the HTTP API, from many concurrent
//! publishers (each on its own keep-alive connection and channel, one publish in flight each).
//! The durability mode is the server's; say which with `--label`. With `--batch N` each request
//! is a `batch_events` call of N events to the publisher's channel, and every figure (publishes,
//! publishes/s, CPU per publish) counts events, so the two modes compare per event.
//!
//! Check: every publish answered 200, and where the server returns event ids (Reprise) each
//! channel's ids grow by exactly one per acknowledged publish.
//!
//! `--request rejected` and `--request up` send requests that stop early instead, with the same
//! publishers, connections and closed loop, so that one run shows what a publish costs beyond
//! them: `rejected` is the same publish signed with a wrong secret (the server reads and checks
//! all of it, then answers 401), `up` is `GET /up` (the HTTP stack alone). Every figure is then
//! per request, and the check is that every answer was the expected one.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::{add_cpu, add_latency};
use crate::Env;
use crate::publisher::{self, PublisherReport, Until};
use crate::pusher;
use crate::report::{Check, Report};
use crate::rest::Rest;
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
    /// What each request is: a publish, or one that stops early (see the scenario's docs;
    /// `--batch` applies to publishes only).
    #[arg(long, value_enum, default_value_t = RequestKind::Publish)]
    request: RequestKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RequestKind {
    /// A signed publish (`events`, or `batch_events` with `--batch`).
    Publish,
    /// The same publish signed with a wrong secret: answered 401 after the signature check.
    Rejected,
    /// `GET /up`.
    Up,
}

impl RequestKind {
    fn name(self) -> &'static str {
        match self {
            RequestKind::Publish => "publish",
            RequestKind::Rejected => "rejected",
            RequestKind::Up => "up",
        }
    }
}

/// One publisher sending requests that stop early, one at a time, for `duration`; `publishes`
/// counts the expected answers.
async fn run_early(
    env: &Env,
    kind: RequestKind,
    index: usize,
    channel: Arc<str>,
    duration: Duration,
) -> PublisherReport {
    let mut report = PublisherReport { publishes: 0, ack_ns: publisher::ack_histogram(), errors: Vec::new() };
    let target = env.node(index);
    let mut rest = match Rest::connect(target).await {
        Ok(rest) => rest,
        Err(error) => {
            report.errors.push(format!("cannot connect to {}: {error:#}", target.addr));
            return report;
        }
    };
    let data = pusher::payload(1, stats::now_ns(), env.payload_bytes);
    let started = Instant::now();
    while started.elapsed() < duration {
        let sent = stats::now_ns();
        let answered = match kind {
            RequestKind::Rejected => rest.rejected_trigger(&channel, &data).await,
            RequestKind::Up => rest.up().await,
            RequestKind::Publish => unreachable!("publishes go through publisher::run_via"),
        };
        if let Err(error) = answered {
            report.errors.push(format!("{error:#}"));
            break;
        }
        report.ack_ns.saturating_record(stats::now_ns().saturating_sub(sent).max(1_000));
        report.publishes += 1;
    }
    report
}

async fn phase(
    env: &Env,
    kind: RequestKind,
    batch: usize,
    names: &[Arc<str>],
    published: &Arc<[AtomicU64]>,
    duration: Duration,
) -> anyhow::Result<Vec<PublisherReport>> {
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if kind != RequestKind::Publish {
            let (env, name) = (env.clone(), Arc::clone(name));
            tasks.push(tokio::spawn(async move { run_early(&env, kind, i, name, duration).await }));
            continue;
        }
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
        for report in
            phase(env, args.request, batch, &names, &published, Duration::from_secs_f64(args.warmup_secs)).await?
        {
            for error in report.errors {
                check.fail(format!("warm-up: {error}"));
            }
        }
    }
    eprintln!("publish: {concurrency} publishers for {}s", args.duration_secs);
    let before = Usage::now(env.server_pid)?;
    let started = Instant::now();
    let reports =
        phase(env, args.request, batch, &names, &published, Duration::from_secs_f64(args.duration_secs)).await?;
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
    report.add("requests (--request)", args.request.name(), "request", args.request.name());
    report.figure("events per request", "batch", batch);
    report.figure("payload bytes", "payload_bytes", env.payload_bytes);
    report.figure("acknowledged publishes", "publishes", publishes);
    report.figure("acknowledged publishes/s", "publishes_per_sec", stats::rate(publishes, elapsed));
    add_latency(&mut report, "publish ack latency", "ack_latency_us", &ack);
    add_cpu(&mut report, &before, &after, publishes, "publish");
    Ok(report.print(&check))
}
