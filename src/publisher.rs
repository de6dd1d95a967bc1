//! The one path every logged event takes: append to the log, make it durable, fan out in id
//! order, then answer the publisher.
//!
//! A single committer thread owns the order. It takes every publish queued while the previous
//! flush ran and commits them together (group commit): one `append`, one fsync, however many
//! publishers were waiting. Fan-out happens after the flush, so anything a subscriber sees is in
//! the log (and on disk, with sync durability), and happens from this one thread, so every
//! channel's subscribers get its events in id order.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use reprise_api::{ChannelName, EventId};
use reprise_storage::{EventLog, LogKey, NewEvent, StorageError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::App;
use crate::cluster::SharedLog;
use crate::config::Durability;
use crate::health::Health;
use crate::hub::{Frame, Logged};
use crate::metrics::{Metrics, PublishOutcome};

/// Publishes waiting for the committer. A full queue makes publishers wait (back-pressure on
/// the HTTP API), never subscribers.
const QUEUE_JOBS: usize = 4096;
/// Most publishes committed in one group: bounds the latency of the first one in the group.
const MAX_JOBS_PER_COMMIT: usize = 1024;

/// One event for one channel.
#[derive(Debug, Clone)]
pub struct PublishItem {
    pub channel: ChannelName,
    pub event: String,
    pub data: String,
    /// The socket that must not receive it (the sender).
    pub except_socket: Option<String>,
    /// Added to the frame for client events on presence channels.
    pub user_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The log refused the append: nothing was published (the cause is in the server log).
    #[error("the event log refused the append")]
    Storage,
    /// Appended and fanned out, but the flush failed: the events may not survive a crash.
    #[error("the event was published but could not be made durable")]
    NotDurable,
    /// The committer failed in the middle of the group: the event may or may not be in the log.
    #[error("the server failed while publishing the event")]
    OutcomeUnknown,
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Job {
    app: Arc<App>,
    items: Vec<PublishItem>,
    reply: oneshot::Sender<Result<Vec<EventId>, PublishError>>,
}

/// Who fans a committed event out.
pub enum FanOut {
    /// This node's committer, right after the append (and flush): a single node.
    Local,
    /// Every node, from the cluster's bus: the shared log announces each append itself.
    Bus(Arc<dyn SharedLog>),
}

/// A handle to the committer; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    jobs_tx: mpsc::Sender<Job>,
    /// Fired when a write to the log stalled (`log_guard`): the committer may never answer, so
    /// publishes stop waiting for it.
    stalled: CancellationToken,
}

impl Publisher {
    /// Starts the committer thread (and, for buffered durability, the periodic flusher task);
    /// `tasks` lets the server wait for both. The committer stops once every `Publisher` is
    /// dropped and the queue is drained, so the server waits only after dropping its own.
    ///
    /// The committer is supervised: if it panics, the server is marked unhealthy (fatally) and
    /// shut down. It is not restarted: a panic may have left a group appended but not fanned out
    /// (live subscribers would miss those events) or the hub's in-flight counts unbalanced, and
    /// only a fresh start (which reads everything back from the log) is known to be consistent.
    ///
    /// `shutdown` stops the server; `stalled` fires when a log write never returned (see
    /// `log_guard`).
    pub fn start(
        log: Arc<dyn EventLog>,
        fan_out: FanOut,
        (durability, flush_every): (Durability, Duration),
        tasks: &TaskTracker,
        health: Arc<Health>,
        (shutdown, stalled): (CancellationToken, CancellationToken),
        metrics: Arc<Metrics>,
    ) -> Publisher {
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_JOBS);
        // A thread of its own: every commit blocks on an fsync, and handing each one to the
        // blocking pool would cost a thread hand-off and a wake-up per commit.
        let (finished_tx, finished_rx) = oneshot::channel::<Result<(), String>>();
        let committer_log = Arc::clone(&log);
        let committer_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("reprise-committer".into())
            .spawn(move || {
                let _ = finished_tx.send(run_committer(
                    committer_log.as_ref(),
                    &fan_out,
                    durability,
                    jobs_rx,
                    &committer_metrics,
                ));
            })
            .expect("the committer thread starts: without it no publish could ever be answered");
        // Lets the server wait for the last commits on shutdown, and stops it if the committer dies.
        let supervisor_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let problem = match finished_rx.await {
                Ok(Ok(())) => return, // every publisher is gone: the server is stopping
                Ok(Err(panic)) => format!("the committer stopped after a panic: {panic}"),
                Err(_) => "the committer stopped without a word".to_owned(),
            };
            health.report_fatal("committer", problem);
            supervisor_shutdown.cancel();
        });
        if durability == Durability::Buffered {
            tasks.spawn(run_flusher(log, flush_every, shutdown, Arc::clone(&metrics)));
        }
        Publisher { jobs_tx, stalled }
    }

    /// Logs `items` and fans them out; returns their ids once they are as durable as configured.
    pub async fn publish(&self, app: &Arc<App>, items: Vec<PublishItem>) -> Result<Vec<EventId>, PublishError> {
        let answered = self.answer(app, items).await;
        if let Some(metrics) = app.metrics.as_deref() {
            metrics.publish(match &answered {
                Ok(_) => PublishOutcome::Acknowledged,
                Err(PublishError::Storage) => PublishOutcome::Refused,
                Err(PublishError::NotDurable) => PublishOutcome::NotDurable,
                Err(PublishError::OutcomeUnknown | PublishError::ShuttingDown) => PublishOutcome::Unknown,
            });
        }
        answered
    }

    async fn answer(&self, app: &Arc<App>, items: Vec<PublishItem>) -> Result<Vec<EventId>, PublishError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { app: Arc::clone(app), items, reply };
        tokio::select! {
            biased;
            sent = self.jobs_tx.send(job) => sent.map_err(|_| PublishError::ShuttingDown)?,
            // Never queued: nothing was published.
            () = self.stalled.cancelled() => return Err(PublishError::Storage),
        }
        tokio::select! {
            biased;
            answer = answer => answer.map_err(|_| PublishError::ShuttingDown)?,
            // The committer may have appended it, or not yet taken it.
            () = self.stalled.cancelled() => Err(PublishError::OutcomeUnknown),
        }
    }
}

/// The committer's loop, on its own thread: it ends when every `Publisher` is gone and the
/// queue is empty (Ok), or at the first panic (Err, after answering that group).
fn run_committer(
    log: &dyn EventLog,
    fan_out: &FanOut,
    durability: Durability,
    mut jobs_rx: mpsc::Receiver<Job>,
    metrics: &Metrics,
) -> Result<(), String> {
    // One vector for every group, emptied by `answer`: no allocation per commit.
    let mut jobs = Vec::new();
    while let Some(first) = jobs_rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match jobs_rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = std::panic::catch_unwind(AssertUnwindSafe(|| commit(log, fan_out, durability, &jobs, metrics)));
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.commit_size.observe(jobs.len() as f64);
        match committed {
            Ok(outcome) => answer(&mut jobs, outcome),
            Err(panic) => {
                answer(&mut jobs, Outcome::Unknown);
                // Dropping the queue answers every waiting publish with "shutting down": none
                // of them was appended.
                return Err(panic_message(panic.as_ref()));
            }
        }
    }
    Ok(())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "no message".to_owned(),
    }
}

/// What became of one group of publishes.
enum Outcome {
    /// Appended (and flushed, with sync durability): fanned out, answered with the ids.
    Committed(Vec<EventId>),
    /// Appended and fanned out, but the flush failed: the events may not survive a crash.
    NotDurable(Vec<EventId>, StorageError),
    /// Not appended: nothing was published.
    Failed(StorageError),
    /// The commit panicked part-way: appended or not, fanned out or not.
    Unknown,
}

/// Announces, appends, flushes and fans out one group of jobs (with the bus, the shared log
/// announces and every node fans out).
fn commit(log: &dyn EventLog, fan_out: &FanOut, durability: Durability, jobs: &[Job], metrics: &Metrics) -> Outcome {
    let local = matches!(fan_out, FanOut::Local);
    let mut events = Vec::new();
    for job in jobs {
        for item in &job.items {
            let key = LogKey { app: job.app.config.id.clone(), channel: item.channel.as_str().to_owned() };
            // Before the append, so that nobody takes the log's head for the published head
            // while this event is between the two.
            if local {
                job.app.hub.begin_logged(item.channel.as_str());
            }
            events.push(NewEvent {
                key,
                event: item.event.as_str().into(),
                data: item.data.as_str().into(),
                user_id: item.user_id.as_deref().map(Into::into),
            });
        }
    }
    // Locally, `begin_logged` was called once per item: every item is ended below, appended or not.
    let appended = match fan_out {
        FanOut::Local => log.append(&events),
        FanOut::Bus(shared) => {
            let except: Vec<Option<String>> =
                jobs.iter().flat_map(|job| job.items.iter().map(|item| item.except_socket.clone())).collect();
            shared.append_announced(&events, &except)
        }
    };
    let ids = match appended {
        Ok(ids) => ids,
        Err(error) => {
            if local {
                end_all(jobs, None);
            }
            return Outcome::Failed(error);
        }
    };
    let flushed = match durability {
        Durability::Sync => metrics.timed_flush(|| log.flush()),
        Durability::Buffered => Ok(()),
    };
    // Fan out even if the flush failed: the events are in the log (history, replay), and live
    // subscribers must not disagree with it. (With the bus, they were announced with the append.)
    if local {
        end_all(jobs, Some(&ids));
    }
    match flushed {
        Ok(()) => Outcome::Committed(ids),
        Err(error) => Outcome::NotDurable(ids, error),
    }
}

/// Fans out every item of `jobs` with its id (or just ends the announcement if nothing was appended).
fn end_all(jobs: &[Job], ids: Option<&[EventId]>) {
    let mut ids = ids.map(|ids| ids.iter());
    for job in jobs {
        for item in &job.items {
            match ids.as_mut().and_then(Iterator::next) {
                Some(&id) => {
                    let frame = || {
                        let logged =
                            Logged { channel: item.channel.clone(), id, event: Some(item.event.as_str().into()) };
                        let event = (item.event.as_str(), item.channel.as_str(), item.data.as_str());
                        Frame::event(event, Some(id), item.user_id.as_deref(), Some(logged))
                    };
                    job.app.hub.end_logged(&item.channel, id, frame, item.except_socket.as_deref());
                }
                None => job.app.hub.abandon_logged(&item.channel),
            }
        }
    }
}

/// Answers every job of the group, leaving `jobs` empty.
fn answer(jobs: &mut Vec<Job>, outcome: Outcome) {
    let (ids, error) = match outcome {
        Outcome::Committed(ids) => (ids, None),
        Outcome::NotDurable(ids, error) => {
            tracing::error!(%error, publishes = jobs.len(), "event log flush failed; events were published but may not be durable");
            (ids, Some(PublishError::NotDurable))
        }
        Outcome::Failed(error) => {
            tracing::error!(%error, publishes = jobs.len(), "event log append failed; nothing was published");
            (Vec::new(), Some(PublishError::Storage))
        }
        Outcome::Unknown => (Vec::new(), Some(PublishError::OutcomeUnknown)),
    };
    let mut ids = ids.into_iter();
    for job in jobs.drain(..) {
        let job_ids: Vec<EventId> = ids.by_ref().take(job.items.len()).collect();
        let reply = match &error {
            None => Ok(job_ids),
            Some(PublishError::NotDurable) => Err(PublishError::NotDurable),
            Some(PublishError::OutcomeUnknown) => Err(PublishError::OutcomeUnknown),
            Some(_) => Err(PublishError::Storage),
        };
        // The publisher may have given up (its client went away); the outcome stands regardless.
        let _ = job.reply.send(reply);
    }
}

/// With buffered durability, writes the log out every `every` (and once more on shutdown).
async fn run_flusher(log: Arc<dyn EventLog>, every: Duration, shutdown: CancellationToken, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let (log, metrics) = (Arc::clone(&log), Arc::clone(&metrics));
        match tokio::task::spawn_blocking(move || metrics.timed_flush(|| log.flush())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "periodic log flush failed"),
            Err(_) => tracing::error!("periodic log flush panicked"),
        }
        if stopping {
            return;
        }
    }
}
