//! Verification of signed HTTP API calls: find the app, check its signature, bound the body.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::Method;
use reprise_api::signature::SignedRequest;

use crate::ServerState;
use crate::apps::App;
use crate::error::ApiError;

/// Hard ceiling on any request body read, whatever an app allows: the body is read before the
/// app's own limit can be checked, so this stops a huge upload early.
pub const MAX_ANY_REQUEST_BYTES: usize = 1024 * 1024;

/// A call whose signature checked out: the app, the decoded query, and the body.
pub struct Signed {
    pub app: Arc<App>,
    pub params: Vec<(String, String)>,
    pub body: Bytes,
}

impl Signed {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Parses the JSON body, answering 400 with the reason when it is malformed.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Verifies the request for `app_id`: 404 for an unknown app, 413 over the app's size limit,
/// 401 for any signature problem.
pub async fn verify(state: &ServerState, app_id: &str, request: Request) -> Result<Signed, ApiError> {
    let app = state.apps.by_id(app_id).ok_or_else(|| ApiError::NotFound(format!("unknown app {app_id:?}")))?;
    let app = Arc::clone(app);
    let method: Method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let limit = app.config.max_request_size_bytes;
    let body = Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit.min(MAX_ANY_REQUEST_BYTES))
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })?;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let params: Vec<(String, String)> = form_urlencoded_pairs(&query);
    let signed = SignedRequest { method: method.as_str(), path: &path, params: &params, body: &body };
    signed
        .verify(&app.config.key, &app.config.secret, unix_now_secs())
        .map_err(|e| ApiError::Unauthorized(format!("authentication failed: {e}")))?;
    Ok(Signed { app, params, body })
}

fn unix_now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Decodes `a=b&c=d` (with `+` and percent escapes).
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            form_urlencoded_pairs("a=1&info=user_count%2Csubscription_count&p=x+y&q=%zz&%C3%A9=%&e"),
            vec![
                ("a".into(), "1".into()),
                ("info".into(), "user_count,subscription_count".into()),
                ("p".into(), "x y".into()),
                ("q".into(), "%zz".into()),
                ("é".into(), "%".into()),
                ("e".into(), "".into()),
            ]
        );
    }
}
