//! The delivery worker of one target: sends its queued webhooks one at a time, oldest first, and
//! removes each once the target answered 2xx. A timeout, a connection error or any other answer
//! is retried with capped exponential backoff and jitter, until the webhook is older than the
//! target's `retry_for_secs` (then it is given up, logged and counted). A 410 Gone stops the
//! target until the next start. One worker per target: a failing target delays only itself.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reprise_api::webhook::{ID_HEADER, KEY_HEADER, SIGNATURE_HEADER, sign_body};
use tokio_util::sync::CancellationToken;

use super::Target;
use super::queue::{QueueError, QueuedWebhook, WebhookQueue, now_ms};

/// The first retry waits about this long; each further one twice as long as the one before.
pub const RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
/// Retries are never further apart than this, so a receiver back after an outage gets its
/// webhooks within ten minutes (about 150 attempts over a day).
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(600);
/// How long a queue read that failed waits before it is tried again.
const QUEUE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// With a shared queue (cluster mode): how often a worker that does not deliver its target (another
/// node holds the lease) asks again, and how often an idle one looks for webhooks other nodes
/// queued.
const SHARED_POLL: Duration = Duration::from_secs(1);

/// The wait before retry number `failures` (1 for the first): exponential, capped, with "equal
/// jitter" (half fixed, half random) so that targets failing together do not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let exponential = RETRY_FIRST_DELAY.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)));
    let capped = exponential.min(RETRY_MAX_DELAY);
    let half = capped / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// 410 Gone: the receiver says this target no longer exists.
    Gone,
    Failed(String),
}

/// The shared HTTP client: rustls (no OpenSSL), no redirects (a webhook is for the URL
/// configured), connection reuse across a target's requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("reprise/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// Delivers `target`'s queue until shutdown (or a 410), then gives its lease up.
pub async fn run(
    target: Arc<Target>,
    queue: Arc<dyn WebhookQueue>,
    client: reqwest::Client,
    shutdown: CancellationToken,
) {
    deliver(&target, &queue, &client, &shutdown).await;
    if queue.shared() {
        let _ = blocking(&queue, &target.id, |queue, id| {
            queue.release(id);
            Ok(())
        })
        .await;
    }
}

async fn deliver(
    target: &Arc<Target>,
    queue: &Arc<dyn WebhookQueue>,
    client: &reqwest::Client,
    shutdown: &CancellationToken,
) {
    let mut failures: u32 = 0;
    loop {
        // In a cluster, one node at a time delivers a target (renewed before every attempt).
        match blocking(queue, &target.id, |queue, id| queue.hold(id)).await {
            Ok(true) => {}
            Ok(false) => {
                if sleep_or_shutdown(SHARED_POLL, shutdown).await {
                    return;
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, target = %target.url, "cannot take the webhook lease; trying again");
                if sleep_or_shutdown(QUEUE_RETRY_DELAY, shutdown).await {
                    return;
                }
                continue;
            }
        }
        let next = match blocking(queue, &target.id, |queue, id| queue.first(id)).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, target = %target.url, "reading the webhook queue failed; trying again");
                if sleep_or_shutdown(QUEUE_RETRY_DELAY, shutdown).await {
                    return;
                }
                continue;
            }
        };
        let Some((position, webhook)) = next else {
            // Woken when this node queues something; with a shared queue, also every poll.
            let poll = if queue.shared() { SHARED_POLL } else { Duration::MAX };
            tokio::select! {
                () = target.wake.notified() => continue,
                () = tokio::time::sleep(poll) => continue,
                () = shutdown.cancelled() => return,
            }
        };
        if now_ms().saturating_sub(webhook.created_ms) > target.config.retry_for_secs.saturating_mul(1000) {
            tracing::warn!(target = %target.url, id = %webhook.id, retry_for_secs = target.config.retry_for_secs,
                "webhook given up: not delivered within its retry period");
            target.stats.dropped_expired.inc();
            remove(queue, target, position).await;
            continue;
        }
        let attempt = tokio::select! {
            attempt = send(target, client, &webhook) => attempt,
            () = shutdown.cancelled() => return,
        };
        match attempt {
            Attempt::Delivered => {
                if failures > 0 {
                    tracing::info!(target = %target.url, failed_attempts = failures, "webhooks are being delivered again");
                }
                failures = 0;
                // Counted once it has left the queue, so no scrape sees it both sent and pending.
                remove(queue, target, position).await;
                target.stats.sent.inc();
            }
            Attempt::Gone => {
                tracing::error!(target = %target.url, "webhook target answered 410 Gone: no more webhooks are sent to it \
                    until the next start (its pending webhooks stay queued)");
                target.stop();
                return;
            }
            Attempt::Failed(reason) => {
                failures = failures.saturating_add(1);
                target.stats.failed_attempts.inc();
                // Once per outage, not once per attempt.
                if failures == 1 {
                    tracing::warn!(target = %target.url, %reason, "webhook delivery failed; retrying with backoff");
                }
                if sleep_or_shutdown(backoff(failures), shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn send(target: &Target, client: &reqwest::Client, webhook: &QueuedWebhook) -> Attempt {
    let mut request = client
        .post(&target.config.url)
        .timeout(Duration::from_secs(target.config.timeout_secs))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(KEY_HEADER, &target.app_key)
        .header(SIGNATURE_HEADER, sign_body(&target.app_secret, &webhook.body))
        .header(ID_HEADER, webhook.id.to_string());
    for (name, value) in &target.config.headers {
        request = request.header(name, value);
    }
    match request.body(webhook.body.clone()).send().await {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) if response.status() == reqwest::StatusCode::GONE => Attempt::Gone,
        Ok(response) => Attempt::Failed(format!("answered {}", response.status())),
        // Without the URL, which may carry a token.
        Err(error) => Attempt::Failed(error.without_url().to_string()),
    }
}

async fn remove(queue: &Arc<dyn WebhookQueue>, target: &Arc<Target>, position: u64) {
    match blocking(queue, &target.id, move |queue, id| queue.remove(id, position)).await {
        Ok(()) => {
            target.stats.pending.dec();
        }
        // The webhook stays queued and is sent again: at least once.
        Err(error) => tracing::error!(%error, target = %target.url, "removing a delivered webhook failed"),
    }
}

/// Runs a queue call on the blocking pool.
async fn blocking<T: Send + 'static>(
    queue: &Arc<dyn WebhookQueue>,
    target: &str,
    call: impl FnOnce(&dyn WebhookQueue, &str) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let (queue, target) = (Arc::clone(queue), target.to_owned());
    tokio::task::spawn_blocking(move || call(queue.as_ref(), &target))
        .await
        .unwrap_or_else(|_| Err(QueueError::Backend("the queue call was cancelled".into())))
}

/// Sleeps `duration`; true if shutdown came first.
async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = shutdown.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= RETRY_FIRST_DELAY / 2 && first <= RETRY_FIRST_DELAY, "{first:?}");
            let fourth = backoff(4);
            assert!(fourth >= RETRY_FIRST_DELAY * 4 && fourth <= RETRY_FIRST_DELAY * 8, "{fourth:?}");
            let late = backoff(1000);
            assert!(late >= RETRY_MAX_DELAY / 2 && late <= RETRY_MAX_DELAY, "{late:?}");
        }
    }
}
