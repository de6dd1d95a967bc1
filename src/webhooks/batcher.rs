//! Turns one app's stream of events into webhook requests, with Pusher's timing:
//!
//! - events are batched for at most [`BATCH_WINDOW`] or [`MAX_BATCH_EVENTS`] events;
//! - `channel_vacated` and `member_removed` are held back [`LEAVE_DELAY`]: if the channel is
//!   occupied again (the user added again) meanwhile, neither is sent, so a page reload sends
//!   nothing;
//! - `subscription_count` events of one channel in one batch keep only the latest count.
//!
//! Each batch is split per target (event types and channel filters), queued durably, and the
//! target's delivery worker is woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reprise_api::webhook::{WebhookBody, WebhookEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Target;
use super::queue::{QueuedWebhook, WebhookQueue, now_ms};

/// Pusher's batch window: a batch is sent at most this long after its first event.
pub const BATCH_WINDOW: Duration = Duration::from_millis(250);
/// Pusher's batch size: a batch with this many events is sent at once.
pub const MAX_BATCH_EVENTS: usize = 20;
/// Pusher holds presence departures back this long, so that a reconnect within it sends nothing.
pub const LEAVE_DELAY: Duration = Duration::from_secs(3);

/// Confirms a held departure when its hold ends. In cluster mode the user (or the channel's
/// subscribers) may have come back on another node, whose arrival this node's batcher never saw.
pub trait Departures: Send + Sync {
    fn still_gone<'a>(&'a self, event: &'a WebhookEvent) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// The events waiting to be batched: pure bookkeeping, no IO, no clock of its own.
#[derive(Default)]
pub struct Pending {
    /// Events ready to go, in the order they happened, and when the first of them came.
    ready: Vec<WebhookEvent>,
    ready_since: Option<Instant>,
    /// `channel_vacated` / `member_removed` held back until their time.
    held: Vec<(Instant, WebhookEvent)>,
}

impl Pending {
    pub fn add(&mut self, event: WebhookEvent, now: Instant) {
        match &event {
            WebhookEvent::ChannelVacated { .. } | WebhookEvent::MemberRemoved { .. } => {
                self.held.push((now + LEAVE_DELAY, event));
                return;
            }
            WebhookEvent::ChannelOccupied { channel } => {
                let flap =
                    |held: &WebhookEvent| matches!(held, WebhookEvent::ChannelVacated { channel: c } if c == channel);
                if self.cancel_held(flap) {
                    return;
                }
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                let flap = |held: &WebhookEvent| matches!(held, WebhookEvent::MemberRemoved { channel: c, user_id: u } if c == channel && u == user_id);
                if self.cancel_held(flap) {
                    return;
                }
            }
            WebhookEvent::SubscriptionCount { channel, subscription_count } => {
                let earlier = self.ready.iter_mut().find_map(|ready| match ready {
                    WebhookEvent::SubscriptionCount { channel: c, subscription_count } if c == channel => {
                        Some(subscription_count)
                    }
                    _ => None,
                });
                if let Some(earlier) = earlier {
                    *earlier = *subscription_count;
                    return;
                }
            }
            WebhookEvent::ClientEvent { .. } | WebhookEvent::CacheMiss { .. } => {}
        }
        self.push_ready(event, now);
    }

    /// Removes the first held event `matches` accepts; true if there was one.
    fn cancel_held(&mut self, matches: impl Fn(&WebhookEvent) -> bool) -> bool {
        match self.held.iter().position(|(_, held)| matches(held)) {
            Some(index) => {
                self.held.remove(index);
                true
            }
            None => false,
        }
    }

    /// Adds an event to the ready ones (after [`Pending::take_released`]).
    pub fn push_ready(&mut self, event: WebhookEvent, now: Instant) {
        self.ready_since.get_or_insert(now);
        self.ready.push(event);
    }

    /// Takes the held events whose time has come (all of them if `all`), in order.
    pub fn take_released(&mut self, now: Instant, all: bool) -> Vec<WebhookEvent> {
        let mut released = Vec::new();
        let mut index = 0;
        while index < self.held.len() {
            if all || self.held[index].0 <= now {
                released.push(self.held.remove(index).1);
            } else {
                index += 1;
            }
        }
        released
    }

    /// The ready events if a batch is due (full, or its window is over, or `force`).
    pub fn take_due(&mut self, now: Instant, force: bool) -> Option<Vec<WebhookEvent>> {
        let since = self.ready_since?;
        if force || self.ready.len() >= MAX_BATCH_EVENTS || now >= since + BATCH_WINDOW {
            self.ready_since = None;
            return Some(std::mem::take(&mut self.ready));
        }
        None
    }

    /// When something next becomes due, if anything is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        let batch = self.ready_since.map(|since| since + BATCH_WINDOW);
        let held = self.held.iter().map(|(due, _)| *due).min();
        batch.into_iter().chain(held).min()
    }
}

/// Batches the app's events until every sender is gone (the server is stopping); then whatever
/// is waiting, held departures included, is queued at once. `departures` confirms held
/// departures when their hold ends (cluster mode).
pub async fn run(
    mut events_rx: mpsc::Receiver<WebhookEvent>,
    targets: Vec<Arc<Target>>,
    queue: Arc<dyn WebhookQueue>,
    departures: Option<Arc<dyn Departures>>,
) {
    let mut pending = Pending::default();
    loop {
        let due = pending.next_due();
        let closed = tokio::select! {
            event = events_rx.recv() => match event {
                Some(event) => {
                    pending.add(event, Instant::now());
                    false
                }
                None => true,
            },
            () = sleep_until(due) => false,
        };
        let now = Instant::now();
        for event in pending.take_released(now, closed) {
            let confirmed = match &departures {
                Some(departures) if !closed => departures.still_gone(&event).await,
                _ => true,
            };
            if confirmed {
                pending.push_ready(event, now);
            }
        }
        if let Some(events) = pending.take_due(now, closed) {
            queue_batch(events, &targets, &queue).await;
        }
        if closed {
            return;
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Splits `events` per target, in bodies of at most [`MAX_BATCH_EVENTS`], and queues them.
async fn queue_batch(events: Vec<WebhookEvent>, targets: &[Arc<Target>], queue: &Arc<dyn WebhookQueue>) {
    let time_ms = now_ms();
    for target in targets {
        if target.is_stopped() {
            continue;
        }
        let wanted: Vec<WebhookEvent> = events.iter().filter(|event| target.config.wants(event)).cloned().collect();
        if wanted.is_empty() {
            continue;
        }
        let webhooks: Vec<QueuedWebhook> = wanted
            .chunks(MAX_BATCH_EVENTS)
            .map(|chunk| QueuedWebhook::new(WebhookBody { time_ms, events: chunk.to_vec() }.to_json()))
            .collect();
        let (queue, id, max_pending) = (Arc::clone(queue), target.id.clone(), target.config.max_pending);
        let count = webhooks.len();
        let pushed = tokio::task::spawn_blocking(move || queue.push(&id, &webhooks, max_pending)).await;
        match pushed {
            Ok(Ok(queued)) => target.queued(queued, count - queued),
            Ok(Err(error)) => target.queue_failed(&error.to_string(), count),
            Err(_) => target.queue_failed("the write was cancelled", count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied { channel: channel.into() }
    }
    fn vacated(channel: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated { channel: channel.into() }
    }
    fn added(user: &str) -> WebhookEvent {
        WebhookEvent::MemberAdded { channel: "presence-r".into(), user_id: user.into() }
    }
    fn removed(user: &str) -> WebhookEvent {
        WebhookEvent::MemberRemoved { channel: "presence-r".into(), user_id: user.into() }
    }

    /// A page reload (leave, then join again within the delay) sends nothing.
    #[test]
    fn a_flap_within_the_delay_sends_nothing() {
        let start = Instant::now();
        let mut pending = Pending::default();
        pending.add(vacated("c"), start);
        pending.add(removed("u"), start);
        pending.add(added("u"), start + Duration::from_secs(1));
        pending.add(occupied("c"), start + Duration::from_secs(1));
        assert_eq!(pending.take_released(start + Duration::from_secs(10), false), vec![]);
        assert_eq!(pending.take_due(start + Duration::from_secs(10), false), None);
        assert_eq!(pending.next_due(), None);
    }

    /// Departures go out once their delay is over, in a batch of their own.
    #[test]
    fn departures_wait_for_the_delay() {
        let start = Instant::now();
        let mut pending = Pending::default();
        pending.add(removed("u"), start);
        pending.add(added("v"), start);
        assert_eq!(pending.take_due(start + BATCH_WINDOW, false), Some(vec![added("v")]));
        assert_eq!(pending.next_due(), Some(start + LEAVE_DELAY));
        assert_eq!(pending.take_released(start + LEAVE_DELAY - Duration::from_millis(1), false), vec![], "held");
        assert_eq!(pending.take_due(start + LEAVE_DELAY, true), None);
        let released = pending.take_released(start + LEAVE_DELAY, false);
        assert_eq!(released, vec![removed("u")]);
        assert_eq!(pending.next_due(), None);
    }

    /// A batch goes when its window is over or it is full, whichever comes first.
    #[test]
    fn batches_close_on_time_or_size() {
        let start = Instant::now();
        let mut pending = Pending::default();
        pending.add(occupied("a"), start);
        assert_eq!(pending.take_due(start + BATCH_WINDOW / 2, false), None);
        for n in 1..MAX_BATCH_EVENTS {
            pending.add(occupied(&format!("c{n}")), start);
        }
        assert_eq!(pending.take_due(start, false).map(|batch| batch.len()), Some(MAX_BATCH_EVENTS));
    }

    #[test]
    fn subscription_counts_of_a_channel_keep_the_latest() {
        let start = Instant::now();
        let mut pending = Pending::default();
        let count = |n| WebhookEvent::SubscriptionCount { channel: "c".into(), subscription_count: n };
        pending.add(count(1), start);
        pending.add(count(2), start);
        pending.add(count(1), start);
        assert_eq!(pending.take_due(start, true), Some(vec![count(1)]));
    }
}
