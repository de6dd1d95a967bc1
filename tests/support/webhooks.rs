//! A real webhook receiver for tests: a tiny axum server on 127.0.0.1:<ephemeral> that records
//! every request and answers as the test says (a status for the first N requests, 410, a delay).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use reprise_api::webhook::{WebhookBody, WebhookEvent, verify_body};
use tokio::sync::Notify;

use super::{APP_KEY, APP_SECRET, READ_TIMEOUT};

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn id(&self) -> String {
        self.header("x-reprise-webhook-id").to_owned()
    }

    /// The body, after checking what a receiver checks: key, content type and signature.
    pub fn verified(&self) -> WebhookBody {
        assert_eq!(self.header("x-pusher-key"), APP_KEY);
        assert_eq!(self.header("content-type"), "application/json");
        assert!(verify_body(APP_SECRET, &self.body, self.header("x-pusher-signature")), "bad signature: {self:?}");
        serde_json::from_str(&self.body).expect("a webhook body")
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Answer `failing_status` to this many requests before answering 200.
    fail_first: AtomicUsize,
    failing_status: AtomicU16,
    /// Answer this status to every request (0: none).
    always: AtomicU16,
    /// Hold every request this long before answering.
    delay_ms: AtomicUsize,
    /// Requests being held right now, and requests answered.
    in_flight: AtomicUsize,
    answered: AtomicUsize,
    arrived: Notify,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _server: tokio::task::JoinHandle<()>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
    shared.received.lock().unwrap().push(Received { headers, body });
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    shared.arrived.notify_waiters();
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let status = match shared.always.load(Ordering::SeqCst) {
        0 => {
            let failing = shared.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() { shared.failing_status.load(Ordering::SeqCst) } else { 200 }
        }
        status => status,
    };
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    shared.answered.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hooks", post(receive)).with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, shared, _server: server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answers `status` to the next `count` requests, then 200.
    pub fn fail_first(&self, count: usize, status: u16) {
        self.shared.failing_status.store(status, Ordering::SeqCst);
        self.shared.fail_first.store(count, Ordering::SeqCst);
    }

    /// Answers `status` to every request from now on (0 to stop).
    pub fn always(&self, status: u16) {
        self.shared.always.store(status, Ordering::SeqCst);
    }

    pub fn delay(&self, delay: Duration) {
        self.shared.delay_ms.store(usize::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The events of every distinct webhook (a retry repeats its id), in the order they came.
    pub fn unique_events(&self) -> Vec<WebhookEvent> {
        let mut seen = Vec::new();
        let mut events = Vec::new();
        for request in self.requests() {
            if !seen.contains(&request.id()) {
                seen.push(request.id());
                events.extend(request.verified().events);
            }
        }
        events
    }

    /// Waits until `done` holds for the requests received so far (or fails after `within`).
    pub async fn wait_for(&self, within: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let waited = tokio::time::timeout(within, async {
            loop {
                let arrived = self.shared.arrived.notified();
                if done(&self.requests()) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        if waited.is_err() {
            panic!("the receiver did not get {what} within {within:?}; it got: {:#?}", self.requests());
        }
    }

    /// Waits until the events received (each request's, verified) include every one of `expected`.
    pub async fn wait_for_events(&self, expected: &[WebhookEvent]) {
        self.wait_for_events_within(expected, READ_TIMEOUT).await;
    }

    pub async fn wait_for_events_within(&self, expected: &[WebhookEvent], within: Duration) {
        self.wait_for(within, "every expected event", |requests| {
            let events: Vec<WebhookEvent> = requests.iter().flat_map(|r| r.verified().events).collect();
            expected.iter().all(|e| events.contains(e))
        })
        .await;
    }
}
