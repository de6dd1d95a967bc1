//! A subscriber: one task per socket that connects, subscribes (optionally resuming with `since`),
//! then reads frames in place, checks the order of what it receives and records latency.
//!
//! Per frame the receive path does one substring search (two with Reprise's id), a comparison
//! with the expected sequence number and a histogram update: no allocation, no JSON.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::pusher::{self, ID_LEN, Incoming, ReplayBlock};
use crate::rest::{IdBytes, Target};
use crate::stats;
use crate::ws::{Frame, WsConn};

/// How long a connect + subscribe may take before it counts as failed.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// State every subscriber of a run shares.
pub struct Shared {
    /// Subscriptions confirmed (`subscription_succeeded`), counted once per subscribe.
    pub subscribed: AtomicUsize,
    /// Sockets that failed to connect or subscribe.
    pub failed: AtomicUsize,
    /// Bounds connects in flight: a burst of thousands of SYNs overflows the server's accept
    /// backlog, and the kernel then retries after a full second, which would measure the TCP
    /// retry timer instead of the server.
    pub connect_gate: Semaphore,
}

impl Shared {
    pub fn new(connect_concurrency: usize) -> Shared {
        Shared {
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            connect_gate: Semaphore::new(connect_concurrency.max(1)),
        }
    }

    /// Waits until `expected` subscriptions succeeded or failed, or `timeout`; returns
    /// (succeeded, failed).
    pub async fn wait_subscribed(&self, expected: usize, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let (ok, failed) = (self.subscribed.load(Ordering::Acquire), self.failed.load(Ordering::Acquire));
            if ok + failed >= expected || Instant::now() >= deadline {
                return (ok, failed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What a subscriber saw on its channel: checks order and contiguity as frames arrive.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    /// The publisher's sequence numbers: first and last received, and how many.
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub received: u64,
    /// Reprise's id of the last event, to resume from; and its channel sequence.
    pub last_id: Option<IdBytes>,
    last_id_seq: Option<u64>,
    /// Order problems seen (gap, duplicate, out of order) and the first one described.
    pub problems: u64,
    pub first_problem: Option<String>,
}

impl Tracker {
    fn problem(&mut self, message: impl FnOnce() -> String) {
        self.problems += 1;
        if self.first_problem.is_none() {
            self.first_problem = Some(message());
        }
    }

    /// Accounts for one benchmark event.
    pub fn on_event(&mut self, seq: u64, id: Option<&[u8]>) {
        match self.last {
            Some(last) if seq != last + 1 => {
                let kind = if seq <= last { "duplicate or out of order" } else { "gap" };
                self.problem(|| format!("{kind}: sequence {seq} after {last}"));
            }
            Some(_) => {}
            None => self.first = Some(seq),
        }
        self.last = Some(self.last.map_or(seq, |last| last.max(seq)));
        self.received += 1;
        if let Some(id) = id.and_then(|id| <IdBytes>::try_from(id).ok()) {
            let id_seq = pusher::id_seq(&id);
            match (self.last_id_seq, id_seq) {
                (Some(previous), Some(now)) if now != previous + 1 => {
                    self.problem(|| format!("server id sequence {now} after {previous}"));
                }
                (_, None) => self.problem(|| format!("unparsable event id {:?}", String::from_utf8_lossy(&id))),
                _ => {}
            }
            self.last_id_seq = id_seq;
            self.last_id = Some(id);
        }
    }

    pub fn last_id_str(&self) -> Option<String> {
        self.last_id.map(|id| String::from_utf8_lossy(&id).into_owned())
    }
}

/// Connects to the server and waits for `pusher:connection_established`.
pub async fn connect(target: &Target) -> io::Result<WsConn> {
    let mut conn = WsConn::connect(target.addr, &target.key).await?;
    loop {
        match conn.next_frame().await? {
            Frame::Text(text) => match pusher::classify(text) {
                Incoming::ConnectionEstablished => return Ok(conn),
                Incoming::Error(error) => return Err(io::Error::other(error)),
                _ => {}
            },
            Frame::Close(code) => return Err(io::Error::other(format!("closed before established: {code:?}"))),
            _ => {}
        }
    }
}

/// Subscribes to `channel` (resuming after `since`) and waits for `subscription_succeeded`.
/// Events that follow it stay buffered for [`pump`].
pub async fn subscribe(conn: &mut WsConn, channel: &str, since: Option<&str>) -> io::Result<ReplayBlock> {
    conn.send_text(pusher::subscribe(channel, since).as_bytes()).await?;
    loop {
        let reply = match conn.next_frame().await? {
            Frame::Text(text) => match pusher::classify(text) {
                Incoming::SubscriptionSucceeded(block) => return Ok(block),
                Incoming::Error(error) => return Err(io::Error::other(error)),
                Incoming::Ping => Some(pusher::PONG.as_bytes()),
                _ => None,
            },
            Frame::Close(code) => return Err(io::Error::other(format!("closed while subscribing: {code:?}"))),
            _ => None,
        };
        if let Some(reply) = reply {
            conn.send_text(reply).await?;
        }
    }
}

/// Connect + subscribe under the connect gate, with a timeout.
pub async fn open(
    shared: &Shared,
    target: &Target,
    channel: &str,
    since: Option<&str>,
) -> io::Result<(WsConn, ReplayBlock)> {
    let _permit = shared.connect_gate.acquire().await.expect("the connect gate is never closed");
    let attempt = async {
        let mut conn = connect(target).await?;
        let block = subscribe(&mut conn, channel, since).await?;
        Ok((conn, block))
    };
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect + subscribe timed out")),
    }
}

/// Counts a subscriber that reached `target` (the storm's catch-up point).
pub struct CatchUp {
    /// The sequence a client must reach; set before the clients reconnect.
    pub target: AtomicU64,
    pub started: std::sync::OnceLock<Instant>,
    pub caught_up: AtomicUsize,
    /// The slowest client's catch-up time so far, in ns since `started`.
    pub slowest_ns: AtomicU64,
}

impl CatchUp {
    pub fn new() -> CatchUp {
        CatchUp {
            target: AtomicU64::new(u64::MAX),
            started: std::sync::OnceLock::new(),
            caught_up: AtomicUsize::new(0),
            slowest_ns: AtomicU64::new(0),
        }
    }

    fn arrived(&self) {
        if let Some(started) = self.started.get() {
            let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.slowest_ns.fetch_max(took, Ordering::AcqRel);
        }
        self.caught_up.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why [`pump`] returned.
#[derive(Debug)]
pub enum Ended {
    Stopped,
    Closed(Option<u16>),
    Failed(io::Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Stopped => f.write_str("stopped by the load generator"),
            Ended::Closed(Some(code)) => write!(f, "closed by the server with code {code}"),
            Ended::Closed(None) => f.write_str("closed by the server without a code"),
            Ended::Failed(error) => write!(f, "socket failed: {error}"),
        }
    }
}

/// What to do after a frame, once its borrow of the read buffer has ended.
enum Reply {
    None,
    PusherPong,
    WsPong([u8; 125], usize),
}

/// Reads frames until `stop` fires, the server closes, or the socket fails.
///
/// `catch_up`: count this socket once when its last sequence reaches the target.
pub async fn pump(
    conn: &mut WsConn,
    tracker: &mut Tracker,
    record_latency: bool,
    stop: &CancellationToken,
    catch_up: Option<&CatchUp>,
) -> Ended {
    let mut counted = false;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        loop {
            let reply = match conn.next_buffered() {
                Ok(Some(Frame::Text(text))) => match pusher::classify(text) {
                    Incoming::Event { seq, sent_ns, id } => {
                        tracker.on_event(seq, id.filter(|id| id.len() == ID_LEN));
                        stats::record_frame(record_latency.then_some(sent_ns));
                        Reply::None
                    }
                    Incoming::Ping => Reply::PusherPong,
                    Incoming::Error(error) => {
                        tracker.problem(|| format!("server error frame: {error}"));
                        Reply::None
                    }
                    _ => Reply::None,
                },
                Ok(Some(Frame::Ping(payload))) => {
                    let mut copy = [0u8; 125];
                    let len = payload.len().min(125);
                    copy[..len].copy_from_slice(&payload[..len]);
                    Reply::WsPong(copy, len)
                }
                Ok(Some(Frame::Close(code))) => return Ended::Closed(code),
                Ok(Some(Frame::Other)) => Reply::None,
                Ok(None) => break,
                Err(error) => return Ended::Failed(error),
            };
            let sent = match reply {
                Reply::None => Ok(()),
                Reply::PusherPong => conn.send_text(pusher::PONG.as_bytes()).await,
                Reply::WsPong(payload, len) => conn.send_pong(&payload[..len]).await,
            };
            if let Err(error) = sent {
                return Ended::Failed(error);
            }
        }
        if let Some(catch_up) = catch_up
            && !counted
            && tracker.last.is_some_and(|last| last >= catch_up.target.load(Ordering::Acquire))
        {
            counted = true;
            catch_up.arrived();
        }
        tokio::select! {
            biased;
            () = &mut stopped => return Ended::Stopped,
            filled = conn.fill() => if let Err(error) = filled { return Ended::Failed(error) },
        }
    }
}

/// What one subscriber task reports at the end.
#[derive(Debug)]
pub struct Outcome {
    pub channel: usize,
    pub tracker: Tracker,
    /// The replay block of the last subscribe (the resume, in the storm).
    pub replay: Option<ReplayBlock>,
    pub ended: Option<Ended>,
    pub error: Option<String>,
}

impl Outcome {
    /// Checks that this subscriber received exactly `1..=published` in order, and was not
    /// disconnected or refused along the way.
    pub fn check_complete(&self, published: u64, check: &mut crate::report::Check) {
        let who = format!("subscriber of channel #{}", self.channel);
        if let Some(error) = &self.error {
            check.fail(format!("{who}: {error}"));
            return;
        }
        match &self.ended {
            Some(Ended::Stopped) => {}
            Some(other) => check.fail(format!("{who}: ended early: {other}")),
            None => check.fail(format!("{who}: never subscribed")),
        }
        let t = &self.tracker;
        if let Some(problem) = &t.first_problem {
            check.fail(format!("{who}: {} order problems, first: {problem}", t.problems));
        }
        let expected_first = (published > 0).then_some(1);
        check.expect(t.first == expected_first && t.last == expected_first.map(|_| published), || {
            format!("{who}: received sequences {:?}..={:?}, expected 1..={published}", t.first, t.last)
        });
        check
            .expect(t.received == published, || format!("{who}: received {} events, expected {published}", t.received));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Check;

    fn id(seq: u64) -> Vec<u8> {
        reprise_api::EventId::new(1_700_000_000_000, seq).to_string().into_bytes()
    }

    fn received(seqs: &[u64]) -> Outcome {
        let mut tracker = Tracker::default();
        for &seq in seqs {
            tracker.on_event(seq, Some(&id(seq)));
        }
        Outcome { channel: 0, tracker, replay: None, ended: Some(Ended::Stopped), error: None }
    }

    fn problems(outcome: &Outcome, published: u64) -> bool {
        let mut check = Check::default();
        outcome.check_complete(published, &mut check);
        !check.passed()
    }

    #[test]
    fn a_complete_ordered_stream_passes() {
        assert!(!problems(&received(&[1, 2, 3]), 3));
        assert!(!problems(&received(&[]), 0));
    }

    /// A fast wrong answer must fail: gaps, duplicates, reordering, a short tail, a server close.
    #[test]
    fn gaps_duplicates_reordering_and_losses_fail() {
        assert!(problems(&received(&[1, 3]), 3), "gap");
        assert!(problems(&received(&[1, 2, 2, 3]), 3), "duplicate");
        assert!(problems(&received(&[2, 1, 3]), 3), "out of order");
        assert!(problems(&received(&[1, 2]), 3), "missing the last");
        assert!(problems(&received(&[2, 3]), 3), "missing the first");
        let mut closed = received(&[1, 2, 3]);
        closed.ended = Some(Ended::Closed(Some(4100)));
        assert!(problems(&closed, 3), "closed by the server");
    }

    #[test]
    fn server_ids_must_be_contiguous_too() {
        let mut tracker = Tracker::default();
        tracker.on_event(1, Some(&id(10)));
        tracker.on_event(2, Some(&id(12)));
        assert_eq!(tracker.problems, 1);
        assert_eq!(tracker.last_id_str().unwrap(), String::from_utf8(id(12)).unwrap());
    }
}
