//! A publisher task: publishes benchmark events through the HTTP API on its own keep-alive
//! connection, one at a time, to the channels it owns, at a fixed rate or as fast as acknowledged.
//!
//! One publish in flight per publisher keeps each channel's events in the publisher's order on
//! every server, which is what lets subscribers check order without Reprise's ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::pusher;
use crate::rest::{Rest, Target};
use crate::stats::now_ns;

/// When a publisher stops.
#[derive(Debug, Clone)]
pub struct Until {
    pub duration: Option<Duration>,
    pub events: Option<u64>,
    pub stop: CancellationToken,
}

/// What a publisher did.
pub struct PublisherReport {
    pub publishes: u64,
    /// Publish round trips (send to acknowledgement), ns.
    pub ack_ns: Histogram<u64>,
    pub errors: Vec<String>,
}

pub fn ack_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Publishes to `channels` (index into `published`, name) round-robin, `rate` events/s in total
/// (0 = as fast as acknowledged). After each acknowledgement `published[index]` holds the last
/// sequence acknowledged on that channel. Reprise's returned ids are checked to grow by one per
/// channel.
pub async fn run(
    target: Target,
    channels: Vec<(usize, Arc<str>)>,
    rate: f64,
    until: Until,
    payload_bytes: usize,
    published: Arc<[AtomicU64]>,
) -> PublisherReport {
    run_via(vec![target], channels, rate, 1, until, payload_bytes, published).await
}

/// [`run`] through several nodes of one cluster: a keep-alive connection to each, the k-th
/// publish sent through `targets[k % n]`. Still one publish in flight, so each channel's events
/// keep the publisher's order whichever node takes them.
///
/// `batch` above 1 sends that many events to one channel per `batch_events` call (at most 10,
/// Pusher's limit); `publishes` and `rate` still count events.
pub async fn run_via(
    targets: Vec<Target>,
    channels: Vec<(usize, Arc<str>)>,
    rate: f64,
    batch: usize,
    until: Until,
    payload_bytes: usize,
    published: Arc<[AtomicU64]>,
) -> PublisherReport {
    let mut report = PublisherReport { publishes: 0, ack_ns: ack_histogram(), errors: Vec::new() };
    if channels.is_empty() || targets.is_empty() {
        return report;
    }
    let mut rests = Vec::with_capacity(targets.len());
    for target in &targets {
        match Rest::connect(target).await {
            Ok(rest) => rests.push(rest),
            Err(error) => {
                report.errors.push(format!("publisher cannot connect to {}: {error:#}", target.addr));
                return report;
            }
        }
    }
    let mut last_id_seq: Vec<Option<u64>> = vec![None; channels.len()];
    let started = Instant::now();
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next = 0usize;
    loop {
        if until.stop.is_cancelled()
            || until.events.is_some_and(|max| report.publishes >= max)
            || until.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        if let Some(interval) = interval {
            // An open-loop schedule: event k goes at start + k * interval. A late publisher
            // catches up back to back; the achieved rate is reported.
            let due = started + interval.mul_f64(crate::stats::as_f64(report.publishes));
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = until.stop.cancelled() => break,
            }
        }
        let slot = next % channels.len();
        next += 1;
        let (index, name) = &channels[slot];
        let first_seq = published[*index].load(Ordering::Acquire) + 1;
        let sent = now_ns();
        let node = usize::try_from(report.publishes).unwrap_or(0) % rests.len();
        let acknowledged = if batch > 1 {
            let last_seq = first_seq + batch as u64 - 1;
            let datas: Vec<String> =
                (first_seq..=last_seq).map(|seq| pusher::payload(seq, sent, payload_bytes)).collect();
            rests[node].batch(name, &datas).await.and_then(|ids| {
                if !ids.is_empty() && ids.len() != batch {
                    anyhow::bail!("channel {name}: {} ids for a batch of {batch}", ids.len());
                }
                Ok(ids)
            })
        } else {
            let data = pusher::payload(first_seq, sent, payload_bytes);
            rests[node].trigger(name, &data).await.map(|id| id.into_iter().collect())
        };
        match acknowledged {
            Ok(ids) => {
                report.ack_ns.saturating_record(now_ns().saturating_sub(sent).max(1_000));
                let events = batch.max(1) as u64;
                published[*index].store(first_seq + events - 1, Ordering::Release);
                report.publishes += events;
                for id in ids {
                    let id_seq = pusher::id_seq(&id);
                    if let (Some(previous), Some(now)) = (last_id_seq[slot], id_seq)
                        && now != previous + 1
                    {
                        report.errors.push(format!("channel {name}: acknowledged id sequence {now} after {previous}"));
                    }
                    last_id_seq[slot] = id_seq;
                }
            }
            Err(error) => {
                // The event may or may not be logged; the sequence would have a hole. Stop.
                report.errors.push(format!("publish to {name} failed: {error:#}"));
                break;
            }
        }
    }
    report
}
