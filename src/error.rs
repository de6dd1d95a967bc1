//! `ApiError`: every way an HTTP API call fails, with the status a client can act on and a JSON
//! body `{"error": "..."}` that never leaks internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use reprise_api::http::ErrorBody;
use tokio::time::Instant;

use crate::throttle::ThrottledByKey;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("payload too large: the limit is {0} bytes")]
    PayloadTooLarge(usize),
    /// The log failed; the detail is logged, not returned.
    #[error("the event log is unavailable")]
    Unavailable,
    /// Published, but the flush failed: a retry would publish it twice.
    #[error("the event was published but could not be made durable; do not retry")]
    NotDurable,
    /// The server failed while publishing: the event may or may not have been published.
    #[error("the server failed while publishing; the event may or may not have been published")]
    OutcomeUnknown,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotDurable | ApiError::OutcomeUnknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed log call: logged here with its cause, answered as 503 without it.
impl From<reprise_storage::StorageError> for ApiError {
    fn from(error: reprise_storage::StorageError) -> Self {
        tracing::error!(%error, "event log call failed");
        ApiError::Unavailable
    }
}

/// A failed cluster call: logged here with its cause, answered as 503 without it.
impl From<crate::cluster::ClusterError> for ApiError {
    fn from(error: crate::cluster::ClusterError) -> Self {
        tracing::error!(%error, "cluster call failed");
        ApiError::Unavailable
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        log_refusal(status, &self);
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

/// Refused requests by status, for their log lines.
static REFUSALS: ThrottledByKey<StatusCode> = ThrottledByKey::new();

/// Logs a refused request: every one at debug; at info, the first of each status, then at most
/// one line per interval (`throttle`) with `count`, the refusals with that status since the last
/// line, and the latest one's error. A backend signing with a wrong secret, or a flood of
/// forged requests, must not become a flood of log lines (a line per request was ~10 % of the
/// CPU a refused request costs, and ~40,000 lines a second at full rate).
fn log_refusal(status: StatusCode, error: &ApiError) {
    tracing::debug!(status = status.as_u16(), %error, "api request refused");
    if let Some(count) = REFUSALS.count(status, Instant::now()) {
        tracing::info!(status = status.as_u16(), error = %error, count, "api request refused");
    }
}
