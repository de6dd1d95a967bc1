//! `GET /app/{key}`: the WebSocket upgrade. Refusals (unknown key, origin, quota) still upgrade so
//! the client receives Pusher's error code, as Pusher and Reverb do.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::ServerState;
use crate::apps::App;
use crate::capacity::OverCapacity;
use crate::connection::{self, Refusal, WsUpgrade};

pub async fn upgrade(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    over_capacity: Option<Extension<OverCapacity>>,
    ws: WsUpgrade,
) -> Response {
    if over_capacity.is_some() {
        return ws.on_upgrade(|socket| connection::refuse(socket, Refusal::OverCapacity));
    }
    let Some(app) = state.apps.by_key(&key).cloned() else {
        return ws.on_upgrade(|socket| connection::refuse(socket, Refusal::UnknownApp));
    };
    let origin = headers.get("origin").and_then(|v| v.to_str().ok());
    if !origin_allowed(&app, origin) {
        return ws.on_upgrade(|socket| connection::refuse(socket, Refusal::OriginNotAllowed));
    }
    let Some(slot) = connection::reserve_slot(&app) else {
        return ws.on_upgrade(|socket| connection::refuse(socket, Refusal::OverQuota));
    };
    // The connection gets a task of its own rather than running inside the upgrade's task,
    // which would keep the upgrade's arguments beside it for the socket's whole life. Shutdown
    // waits for it through the socket registry (`connection::registry`).
    ws.on_upgrade(move |socket| {
        tokio::spawn(connection::run(socket, app, state, slot));
        std::future::ready(())
    })
}

/// Reverb's rule: `*` allows all; otherwise the Origin's host must match one pattern (`*` wildcards).
pub(crate) fn origin_allowed(app: &App, origin: Option<&str>) -> bool {
    let patterns = &app.config.allowed_origins;
    if patterns.iter().any(|p| p == "*") {
        return true;
    }
    let Some(origin) = origin else { return false };
    let host = origin.split("://").nth(1).unwrap_or(origin);
    let host = host.split(['/', ':']).next().unwrap_or(host);
    patterns.iter().any(|pattern| wildcard_match(pattern, host))
}

fn wildcard_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(text),
        Some((prefix, rest)) => {
            let lower = text.to_ascii_lowercase();
            let prefix = prefix.to_ascii_lowercase();
            if !lower.starts_with(&prefix) {
                return false;
            }
            let tail = &text[prefix.len()..];
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| wildcard_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn origin_patterns_match_hosts() {
        assert!(wildcard_match("example.com", "Example.com"));
        assert!(wildcard_match("*.example.com", "app.example.com"));
        assert!(!wildcard_match("*.example.com", "example.org"));
        assert!(!wildcard_match("example.com", "evil-example.com"));
        assert!(wildcard_match("*", "anything"));
    }
}
