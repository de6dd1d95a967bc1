//! The WebSocket opening handshake (RFC 6455, section 4.2), answered here rather than by axum's
//! `WebSocketUpgrade`: once the request is upgraded, the connection gets the TCP stream itself
//! (the accept loop's `CountedIo`), not hyper's boxed, type-erased `Upgraded`. Owning it, the
//! connection writes the hub's shared, already-encoded frames straight to the socket, one
//! vectored write per batch, with no copy or encoding per socket (see `connection::wire`), and
//! each socket keeps neither the box nor its rewind buffer.
//!
//! The checks and their answers are axum's, so clients see no difference.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::capacity::CountedIo;

/// A server-side WebSocket: the accepted TCP stream, and what the client sent after its upgrade
/// request before it saw the 101 (rarely anything: its first frames). The connection reads and
/// writes the frames itself (`reprise_api::websocket`, `connection::wire`).
pub struct WsStream {
    pub io: CountedIo,
    pub early: Vec<u8>,
}

/// A valid WebSocket upgrade request, ready to be answered with 101.
pub struct WsUpgrade {
    accept_key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request cannot be upgraded: axum's statuses and messages.
#[derive(Debug)]
pub struct NotUpgradable(StatusCode, &'static str);

impl IntoResponse for NotUpgradable {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotUpgradable;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // HTTP/1.1 only: the accept loop serves nothing else (no WebSockets over HTTP/2).
        if parts.version > Version::HTTP_11 || parts.method != Method::GET {
            return Err(NotUpgradable(StatusCode::METHOD_NOT_ALLOWED, "Request method must be `GET`"));
        }
        if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgradable(StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'"));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(NotUpgradable(StatusCode::BAD_REQUEST, "`Upgrade` header did not include 'websocket'"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(NotUpgradable(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing"));
        };
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotUpgradable(StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` header did not include '13'"));
        }
        let accept_key =
            HeaderValue::try_from(derive_accept_key(key.as_bytes())).expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(NotUpgradable(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(WsUpgrade { accept_key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Answers 101 Switching Protocols; once hyper hands the socket over, runs `serve` on it.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(WsStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(%error, "the WebSocket upgrade failed");
                    return;
                }
            };
            // The accept loop serves every request over `TokioIo<CountedIo>`.
            let Ok(parts) = upgraded.downcast::<TokioIo<CountedIo>>() else {
                tracing::error!("an upgraded connection is not the accept loop's: dropping it");
                return;
            };
            serve(WsStream { io: parts.io.into_inner(), early: parts.read_buf.to_vec() }).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept_key);
        response
    }
}

fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|header| header.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether the header's comma-separated tokens include `token` (e.g. `Connection: keep-alive, Upgrade`).
fn header_contains(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get(name)
        .and_then(|header| header.to_str().ok())
        .is_some_and(|header| header.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}
