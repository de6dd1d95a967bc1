//! The one path every logged event takes: append to the log, make it durable, fan out in id
//! order, then answer the publisher.
//!
//! A single committer task owns the order. It takes every publish queued while the previous
//! flush ran and commits them together (group commit): one `append`, one fsync, however many
//! publishers were waiting. Fan-out happens after the flush, so anything a subscriber sees is in
//! the log, and happens from this one task, so every channel's subscribers get its events in id
//! order.

use std::sync::Arc;
use std::time::Duration;

use reprise_api::{ChannelName, EventId, frames};
use reprise_storage::{EventLog, LogKey, NewEvent, StorageError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Durability;
use crate::hub::{AppHub, Frame};

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
    /// The log refused the append; nothing was published. The text is for the server log only.
    #[error("the event log failed: {0}")]
    Storage(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Job {
    app_id: String,
    hub: Arc<AppHub>,
    items: Vec<PublishItem>,
    reply: oneshot::Sender<Result<Vec<EventId>, PublishError>>,
}

/// A handle to the committer task; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    jobs_tx: mpsc::Sender<Job>,
}

impl Publisher {
    /// Starts the committer (and, for buffered durability, the periodic flusher) on `tasks`.
    /// The committer stops once every `Publisher` is dropped and the queue is drained, so the
    /// server waits for `tasks` only after it dropped its own handles.
    pub fn start(
        log: Arc<dyn EventLog>,
        durability: Durability,
        flush_every: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Publisher {
        let (jobs_tx, jobs_rx) = mpsc::channel(QUEUE_JOBS);
        tasks.spawn(run_committer(Arc::clone(&log), durability, jobs_rx));
        if durability == Durability::Buffered {
            tasks.spawn(run_flusher(log, flush_every, shutdown));
        }
        Publisher { jobs_tx }
    }

    /// Logs `items` and fans them out; returns their ids once they are as durable as configured.
    pub async fn publish(&self, app_id: &str, hub: &Arc<AppHub>, items: Vec<PublishItem>) -> Result<Vec<EventId>, PublishError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { app_id: app_id.to_owned(), hub: Arc::clone(hub), items, reply };
        self.jobs_tx.send(job).await.map_err(|_| PublishError::ShuttingDown)?;
        answer.await.map_err(|_| PublishError::ShuttingDown)?
    }
}

async fn run_committer(log: Arc<dyn EventLog>, durability: Durability, mut jobs_rx: mpsc::Receiver<Job>) {
    while let Some(first) = jobs_rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match jobs_rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let events: Vec<NewEvent> = jobs
            .iter()
            .flat_map(|job| {
                job.items.iter().map(|item| NewEvent {
                    key: LogKey { app: job.app_id.clone(), channel: item.channel.as_str().to_owned() },
                    event: item.event.clone(),
                    data: item.data.clone(),
                })
            })
            .collect();
        let log = Arc::clone(&log);
        // The blocking pool: sled's flush is an fsync and must not stall a runtime worker.
        let committed = tokio::task::spawn_blocking(move || {
            let ids = log.append(&events)?;
            if durability == Durability::Sync {
                log.flush()?;
            }
            Ok::<_, StorageError>(ids)
        })
        .await
        .expect("the commit closure does not panic");
        match committed {
            Ok(ids) => fan_out_and_answer(jobs, ids),
            Err(error) => {
                tracing::error!(%error, publishes = jobs.len(), "event log append failed");
                for job in jobs {
                    let _ = job.reply.send(Err(PublishError::Storage(error.to_string())));
                }
            }
        }
    }
}

fn fan_out_and_answer(jobs: Vec<Job>, ids: Vec<EventId>) {
    let mut ids = ids.into_iter();
    for job in jobs {
        let job_ids: Vec<EventId> = ids.by_ref().take(job.items.len()).collect();
        for (item, id) in job.items.iter().zip(&job_ids) {
            let text = frames::event_frame(&item.event, item.channel.as_str(), &item.data, Some(*id), item.user_id.as_deref());
            let frame = Arc::new(Frame { text: text.into(), logged: Some((item.channel.clone(), id.seq())) });
            job.hub.publish(&item.channel, &frame, item.except_socket.as_deref());
        }
        // The publisher may have given up (client went away); the event is logged regardless.
        let _ = job.reply.send(Ok(job_ids));
    }
}

/// With buffered durability, writes the log out every `every` (and once more on shutdown).
async fn run_flusher(log: Arc<dyn EventLog>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let log = Arc::clone(&log);
        match tokio::task::spawn_blocking(move || log.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "periodic log flush failed"),
            Err(_) => tracing::error!("periodic log flush panicked"),
        }
        if stopping {
            return;
        }
    }
}
