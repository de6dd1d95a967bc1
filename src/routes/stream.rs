//! `GET /app/{key}/stream?channel=a&channel=b`: a Server-Sent Events stream of channels' logged
//! events (see `crate::sse` and docs/replay.md, "Event streams"). This handler checks the request
//! (app, origin, channels, cursor, grant, quota) and hands over to `sse::open`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reprise_api::sse::{cursor, grant};
use reprise_api::{ChannelKind, ChannelName};

use crate::ServerState;
use crate::accept::AbortConnection;
use crate::apps::App;
use crate::capacity::OverCapacity;
use crate::connection::reserve_slot;
use crate::routes::ws::origin_allowed;
use crate::sse::{self, Resume, StreamRefusal};

/// Most channels one stream may name. Each costs a subscription and a log read at every
/// (re)connect, and its place in every cursor (3 to 5 bytes); 100 is Pusher's limit of channels
/// per publish.
pub const MAX_STREAM_CHANNELS: usize = 100;

/// What the query string says.
struct StreamQuery {
    /// The `channel` parameters in URL order (what a grant signs).
    channels: Vec<String>,
    since: Option<String>,
    grant: Option<String>,
}

impl StreamQuery {
    fn parse(query: Option<&str>) -> StreamQuery {
        let mut parsed = StreamQuery { channels: Vec::new(), since: None, grant: None };
        // Other parameters (a cache buster, say) are ignored.
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*name {
                "channel" => parsed.channels.push(value.into_owned()),
                "since" => parsed.since = Some(value.into_owned()),
                "grant" => parsed.grant = Some(value.into_owned()),
                _ => {}
            }
        }
        parsed
    }
}

pub async fn stream(
    State(state): State<Arc<ServerState>>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    over_capacity: Option<Extension<OverCapacity>>,
) -> Response {
    if over_capacity.is_some() {
        return sse::over_capacity();
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match serve(state, &key, query.as_deref(), &headers, AbortConnection::current()).await {
        Ok(mut response) => {
            allow_origin(&mut response, origin.as_deref());
            response
        }
        Err(refusal) => {
            let mut response = refusal.into_response();
            allow_origin(&mut response, origin.as_deref()); // so a page can read why
            response
        }
    }
}

async fn serve(
    state: Arc<ServerState>,
    key: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    abort: Option<AbortConnection>,
) -> Result<Response, StreamRefusal> {
    let app = state.apps.by_key(key).cloned().ok_or_else(|| StreamRefusal::NotFound("unknown app key".into()))?;
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !origin_allowed(&app, origin) {
        return Err(StreamRefusal::Forbidden("Origin not allowed".into()));
    }
    let query = StreamQuery::parse(query);
    let channels = stream_channels(&query.channels)?;
    authorize(&app, &query, headers, &channels)?;
    let resume = resume(&query, headers, &channels)?;
    let slot = reserve_slot(&app).ok_or(StreamRefusal::OverQuota)?;
    let (stream, first) = sse::open(&state, app, channels, resume, slot).await?;
    Ok(sse::respond(state, stream, first, abort))
}

/// The stream's channels: validated, sorted, each once (the order of the cursor).
fn stream_channels(given: &[String]) -> Result<Vec<ChannelName>, StreamRefusal> {
    if given.is_empty() {
        return Err(StreamRefusal::BadRequest("name at least one channel: ?channel=name".into()));
    }
    if given.len() > MAX_STREAM_CHANNELS {
        return Err(StreamRefusal::BadRequest(format!("a stream may name at most {MAX_STREAM_CHANNELS} channels")));
    }
    let mut channels = given
        .iter()
        .map(|name| ChannelName::parse(name).map_err(|e| StreamRefusal::BadRequest(format!("channel {name:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    channels.sort();
    channels.dedup();
    Ok(channels)
}

/// Public and cache channels need only the app key; private, encrypted, presence and per-user
/// channels need a grant signed with the app secret for exactly this channel list (401 without
/// a valid one); a per-user channel also needs the grant to name its user (403 otherwise).
fn authorize(
    app: &App,
    query: &StreamQuery,
    headers: &HeaderMap,
    channels: &[ChannelName],
) -> Result<(), StreamRefusal> {
    let needs_grant =
        channels.iter().any(|channel| channel.requires_auth() || channel.kind() == ChannelKind::ServerToUser);
    if !needs_grant {
        return Ok(());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = query.grant.as_deref().or(bearer) else {
        return Err(StreamRefusal::Unauthorized(
            "private, presence and per-user channels need a grant (grant=... or Authorization: Bearer ...)".into(),
        ));
    };
    let signed: Vec<&str> = query.channels.iter().map(String::as_str).collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let granted = grant::verify(&app.config.key, &app.config.secret, token, &signed, now)
        .map_err(|error| StreamRefusal::Unauthorized(error.to_string()))?;
    for channel in channels {
        if let Some(owner) = channel.server_to_user_id()
            && granted.user_id.as_deref() != Some(owner)
        {
            return Err(StreamRefusal::Forbidden(format!("the grant is not for user {owner:?}")));
        }
    }
    Ok(())
}

/// Where the stream starts. `Last-Event-ID` (sent by the browser on every reconnect, to the URL
/// that may still carry the first connection's `since`) wins over `since`. A `since` that cannot
/// be read is the caller's mistake: 400. A `Last-Event-ID` that cannot be read (a cursor of
/// another server version, a proxy's) resumes nothing and says so on every channel.
fn resume(query: &StreamQuery, headers: &HeaderMap, channels: &[ChannelName]) -> Result<Resume, StreamRefusal> {
    if let Some(last) = headers.get("last-event-id") {
        let parsed = last.to_str().ok().map(|text| cursor::parse_since(text.trim(), channels));
        return Ok(match parsed {
            Some(Ok(positions)) => Resume::From(positions),
            Some(Err(error)) => {
                tracing::info!(%error, "unreadable Last-Event-ID: the stream starts not recovered");
                Resume::Unreadable
            }
            None => Resume::Unreadable,
        });
    }
    match &query.since {
        None => Ok(Resume::Fresh),
        Some(since) => cursor::parse_since(since, channels)
            .map(Resume::From)
            .map_err(|error| StreamRefusal::BadRequest(format!("since: {error}"))),
    }
}

/// `OPTIONS /app/{key}/stream`: the CORS preflight of a `fetch`-based client that sends
/// `Authorization` or `Last-Event-ID` itself (`EventSource` needs none).
pub async fn preflight(State(state): State<Arc<ServerState>>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = state.apps.by_key(&key).is_some_and(|app| origin.is_some() && origin_allowed(app, origin));
    if !allowed {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    allow_origin(&mut response, origin);
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, last-event-id, cache-control"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// Lets a page on `origin` read the response (the origin was checked against the app's
/// `allowed_origins` before anything was streamed).
fn allow_origin(response: &mut Response, origin: Option<&str>) {
    if let Some(value) = origin.and_then(|origin| HeaderValue::from_str(origin).ok()) {
        response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        response.headers_mut().insert(header::VARY, HeaderValue::from_static("origin"));
    }
}
