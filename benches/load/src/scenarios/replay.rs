//! `replay`: fill one channel with M events (through `batch_events`, 10 per call), then one client
//! reads them all back: over WebSocket (`pusher:subscribe` with `since` = before the first event)
//! or by paging the signed history endpoint (`GET /apps/{id}/channels/{name}/events?since=`).
//!
//! Check: M events, ids ascending with sequence +1 each (contiguous), and every event the fill
//! published seen exactly once. Reprise only: it needs the replay extension.
//!
//! Reprise replays at most `replay_cap_events` (default 1000) on a subscribe and sends none past
//! that (the client is told `recovered:false` and should page the history endpoint). So the
//! WebSocket variant needs a server started with `replay_cap_events >= M`; with the default cap,
//! use `--via http`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use super::add_cpu;
use crate::Env;
use crate::pusher::{self, BEFORE_FIRST_ID, Incoming};
use crate::report::{Check, Report};
use crate::rest::Rest;
use crate::stats::{self, Usage};
use crate::subscriber;
use crate::ws::Frame;

/// Pusher's limit on events per `batch_events` call.
const BATCH_EVENTS: u64 = 10;
/// How long the read-back may take before the run fails.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Via {
    Ws,
    Http,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Events to fill the channel with.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, value_enum, default_value_t = Via::Ws)]
    via: Via,
    /// Events per history page with --via http (the server allows at most 1000).
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// Concurrent batch_events calls while filling.
    #[arg(long, default_value_t = 16)]
    fill_concurrency: usize,
    /// Read back an already filled channel (--channel) instead of filling one; then every event
    /// in it is expected, with contiguous sequences from its first.
    #[arg(long, requires = "channel")]
    skip_fill: bool,
    /// The channel to fill or read (default: a fresh one per run).
    #[arg(long)]
    channel: Option<String>,
}

/// What the read-back saw.
struct Seen {
    received: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    /// Data sequences seen, to catch duplicates and losses (the fill numbers events 1..=M).
    data_seen: Vec<bool>,
    check: Check,
}

impl Seen {
    fn new(expected: u64) -> Seen {
        Seen {
            received: 0,
            first_seq: None,
            last_seq: None,
            data_seen: vec![false; usize::try_from(expected).unwrap_or(0) + 1],
            check: Check::default(),
        }
    }

    fn event(&mut self, id: Option<&[u8]>, data_seq: u64, verify_data: bool) {
        self.received += 1;
        let Some(seq) = id.and_then(pusher::id_seq) else {
            self.check.fail("an event without a Reprise id: the replay scenario needs Reprise's replay extension");
            return;
        };
        if let Some(last) = self.last_seq {
            self.check.expect(seq == last + 1, || format!("id sequence {seq} after {last}: not contiguous"));
        } else {
            self.first_seq = Some(seq);
        }
        self.last_seq = Some(seq);
        if verify_data {
            match self.data_seen.get_mut(usize::try_from(data_seq).unwrap_or(usize::MAX)) {
                Some(seen) if data_seq > 0 && !*seen => *seen = true,
                Some(_) if data_seq > 0 => self.check.fail(format!("event {data_seq} received twice")),
                _ => self.check.fail(format!("event {data_seq} was never published")),
            }
        }
    }
}

pub async fn run(env: &Env, args: ReplayArgs) -> anyhow::Result<bool> {
    let mut check = Check::default();
    let channel = args.channel.clone().unwrap_or_else(|| format!("replay-{}", env.run_id));
    let mut fill_figures = None;
    if !args.skip_fill {
        let started = Instant::now();
        let filled = fill(env, &channel, args.events, args.fill_concurrency, &mut check).await?;
        fill_figures = Some((filled, started.elapsed()));
        check.expect(filled == args.events, || format!("filled {filled} of {} events", args.events));
    }
    let verify_data = !args.skip_fill;
    let mut seen = Seen::new(if verify_data { args.events } else { 0 });
    eprintln!("replay: reading {channel} back via {:?}", args.via);
    let before = Usage::now(env.server_pid)?;
    let started = Instant::now();
    let outcome = match args.via {
        Via::Ws => {
            tokio::time::timeout(
                READ_TIMEOUT,
                read_ws(env, &channel, args.events, args.skip_fill, verify_data, &mut seen),
            )
            .await
        }
        Via::Http => {
            tokio::time::timeout(READ_TIMEOUT, read_http(env, &channel, args.page, verify_data, &mut seen)).await
        }
    };
    let elapsed = started.elapsed();
    let after = Usage::now(env.server_pid)?;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => check.fail(format!("read-back failed: {error:#}")),
        Err(_) => check.fail(format!("read-back did not finish within {READ_TIMEOUT:?}")),
    }
    if verify_data {
        check.expect(seen.received == args.events, || {
            format!("replayed {} events, expected {}", seen.received, args.events)
        });
        check.expect(seen.first_seq == Some(1), || format!("first sequence {:?}, expected 1", seen.first_seq));
        let missing = seen.data_seen.iter().skip(1).filter(|seen| !**seen).count();
        check.expect(missing == 0, || format!("{missing} published events never replayed"));
    }
    check.absorb(seen.check);

    let mut report = Report::new("replay", env.label.as_deref());
    report.add("channel", channel.clone(), "channel", channel);
    if let Some((filled, fill_time)) = fill_figures {
        report.figure("events filled (batch_events of 10)", "filled", filled);
        report.figure("fill events/s", "fill_events_per_sec", stats::rate(filled, fill_time));
    }
    report.add(
        "read back via",
        format!("{:?}", args.via).to_lowercase(),
        "via",
        format!("{:?}", args.via).to_lowercase(),
    );
    report.figure("events replayed", "events", seen.received);
    report.figure("replay time (s)", "replay_secs", stats::round2(elapsed.as_secs_f64()));
    report.figure("replayed events/s", "events_per_sec", stats::rate(seen.received, elapsed));
    add_cpu(&mut report, &before, &after, seen.received, "event");
    Ok(report.print(&check))
}

/// Publishes `events` events numbered 1..=events in batches of 10; returns how many were
/// acknowledged.
async fn fill(env: &Env, channel: &str, events: u64, concurrency: usize, check: &mut Check) -> anyhow::Result<u64> {
    eprintln!("replay: filling {channel} with {events} events");
    let batches = events.div_ceil(BATCH_EVENTS);
    let next_batch = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (target, channel, next_batch, size) =
            (env.target.clone(), channel.to_owned(), Arc::clone(&next_batch), env.payload_bytes);
        tasks.push(tokio::spawn(async move {
            let mut rest = Rest::connect(&target).await?;
            let mut acknowledged = 0u64;
            loop {
                let batch = next_batch.fetch_add(1, Ordering::AcqRel);
                if batch >= batches {
                    return Ok::<_, anyhow::Error>(acknowledged);
                }
                let first = batch * BATCH_EVENTS + 1;
                let last = (first + BATCH_EVENTS - 1).min(events);
                let datas: Vec<String> =
                    (first..=last).map(|seq| pusher::payload(seq, stats::now_ns(), size)).collect();
                rest.batch(&channel, &datas).await?;
                acknowledged += last - first + 1;
            }
        }));
    }
    let mut filled = 0;
    for task in tasks {
        match task.await? {
            Ok(count) => filled += count,
            Err(error) => check.fail(format!("fill: {error:#}")),
        }
    }
    Ok(filled)
}

async fn read_ws(
    env: &Env,
    channel: &str,
    expected: u64,
    skip_fill: bool,
    verify_data: bool,
    seen: &mut Seen,
) -> anyhow::Result<()> {
    let mut conn = subscriber::connect(&env.target).await?;
    let block = subscriber::subscribe(&mut conn, channel, Some(BEFORE_FIRST_ID)).await?;
    if block.recovered != Some(true) {
        anyhow::bail!(
            "the server did not replay (replay block {block:?}): Reprise replays at most replay_cap_events \
             (default 1000) on a subscribe; start it with replay_cap_events >= {expected} or use --via http"
        );
    }
    let count = block.count.unwrap_or(0);
    if !skip_fill && count != expected {
        anyhow::bail!("the server announced {count} replayed events, expected {expected}");
    }
    while seen.received < count {
        match conn.next_frame().await? {
            Frame::Text(text) => {
                if let Incoming::Event { seq, id, .. } = pusher::classify(text) {
                    seen.event(id, seq, verify_data);
                }
            }
            Frame::Close(code) => anyhow::bail!("the server closed during the replay ({code:?})"),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    events: Vec<PageEvent<'a>>,
    recovered: bool,
}

#[derive(Deserialize)]
struct PageEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

async fn read_http(env: &Env, channel: &str, page: usize, verify_data: bool, seen: &mut Seen) -> anyhow::Result<()> {
    let mut rest = Rest::connect(&env.target).await?;
    let mut since: Option<String> = None;
    loop {
        let body = rest.history(channel, since.as_deref(), page).await?;
        let parsed: Page<'_> = serde_json::from_slice(&body)?;
        if !parsed.recovered {
            anyhow::bail!("history page after {since:?} is not recovered: events were compacted away");
        }
        for event in &parsed.events {
            let data_seq =
                event.data.strip_prefix("rl:").and_then(|rest| rest.split(':').next()).and_then(|n| n.parse().ok());
            seen.event(Some(event.id.as_bytes()), data_seq.unwrap_or(0), verify_data);
        }
        match parsed.events.last() {
            Some(last) if parsed.events.len() == page => since = Some(last.id.to_string()),
            _ => return Ok(()),
        }
    }
}
