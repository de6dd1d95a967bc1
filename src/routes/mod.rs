//! HTTP routes: thin handlers that verify, parse, and hand the work to the hub or the publisher.

pub mod channels;
pub mod events;
pub mod front;
pub mod history;
pub mod signed;
pub mod stream;
pub mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::ServerState;
use crate::capacity;
use crate::routes::front::Front;

/// Every route the server answers, as it answers them on a connection within the cap.
pub fn router(state: Arc<ServerState>) -> Front {
    Front::new(with_other_routes(api_routes(), Arc::clone(&state)), state)
}

/// The same routes as an over-capacity connection is served ([`capacity`]): the HTTP API answers
/// 503, the rest as usual (`/up` 200, WebSocket and event-stream routes with their own refusal).
/// A router of its own, so that calls within the cap pay for no check (a middleware cost ~5,000
/// instructions per publish: callgrind, docs/benchmarks.md, round two, fifth pass).
pub fn over_capacity_router(state: Arc<ServerState>) -> Front {
    let api = api_routes().route_layer(axum::middleware::from_fn(capacity::refuse_over_capacity));
    Front::router_only(capacity::over_capacity_routes(with_other_routes(api, Arc::clone(&state))), &state)
}

/// The signed HTTP API.
fn api_routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/apps/{app_id}/events", post(events::trigger))
        .route("/apps/{app_id}/batch_events", post(events::batch))
        .route("/apps/{app_id}/connections", get(channels::connections))
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(channels::show))
        .route("/apps/{app_id}/channels/{channel}/users", get(channels::users))
        .route("/apps/{app_id}/channels/{channel}/events", get(history::events))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(channels::terminate))
        .route("/apps/{app_id}/compact", post(history::compact))
}

/// `api` with the routes that decide for themselves over the connection cap: `/up` answers 200
/// (a full server is alive), the upgrade closes with 4100, and an event stream streams a
/// "reconnect later" (see `sse`).
fn with_other_routes(api: Router<Arc<ServerState>>, state: Arc<ServerState>) -> Router {
    api.route("/up", get(up))
        .route("/app/{key}", get(ws::upgrade))
        .route("/app/{key}/stream", get(stream::stream).options(stream::preflight))
        .with_state(state)
}

/// `GET /up`: 200 "OK" while healthy; 503 with every current problem otherwise, so a load
/// balancer stops sending clients here.
async fn up(State(state): State<Arc<ServerState>>) -> Response {
    let problems = state.health.problems();
    if problems.is_empty() {
        return "OK".into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unhealthy", "problems": problems }))).into_response()
}
