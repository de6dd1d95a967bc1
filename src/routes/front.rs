//! The service each HTTP connection is served by: a publish (`POST /apps/{app_id}/events` or
//! `/batch_events`, most of what a busy server is asked) goes straight to its handler, every
//! other request through axum's router.
//!
//! Why: for a publish, axum's routing, its path parameters and the two futures it boxes around
//! a handler cost ~3,500 instructions, about what the handler's own work costs besides the
//! signature check and the log (callgrind, docs/benchmarks.md, round two, eighth pass). The
//! handlers are the same functions with the same extractor (`Signed`), so a publish is answered
//! exactly as through the router; anything that is not plainly one of those two routes (another
//! method, another shape of path) goes to the router, which answers it as before (405, 404, ...).
//!
//! With a path prefix (`server.path`, Reverb's `REVERB_SERVER_PATH`), it is taken off here, once
//! for both ways, and a path outside it is 404.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tower_service::Service;

use crate::ServerState;
use crate::routes::events;
use crate::routes::signed::{Signed, split_app_path};

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// axum's router, with the publish routes taken first when `publish` is set (on connections
/// within the cap; over it, the router alone answers them with 503).
#[derive(Clone)]
pub struct Front {
    router: Router,
    publish: Option<Arc<ServerState>>,
    /// `server.path`, taken off every request's path before routing; None at the root.
    prefix: Option<Arc<str>>,
}

/// The path prefix a request came in under, for the signature check: a signed call may have
/// been signed over the path with it or without it (see `signed`).
#[derive(Clone)]
pub struct ServedPrefix(pub Arc<str>);

impl Front {
    /// Publishes skip the router and go to their handlers with `state`.
    pub fn new(router: Router, state: Arc<ServerState>) -> Self {
        let prefix = path_prefix(&state);
        Front { router, publish: Some(state), prefix }
    }

    /// Every request through the router.
    pub fn router_only(router: Router, state: &ServerState) -> Self {
        Front { router, publish: None, prefix: path_prefix(state) }
    }
}

fn path_prefix(state: &ServerState) -> Option<Arc<str>> {
    let path = &state.config.server.path;
    (!path.is_empty()).then(|| Arc::from(path.as_str()))
}

/// `uri` with `prefix` taken off the front of its path (`/reverb/apps/1/events?x` under
/// `/reverb`: `/apps/1/events?x`); None if the path is not `prefix` or below it.
fn below_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    let rest = uri.path().strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let below = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    below.parse().ok()
}

/// The two publish routes.
#[derive(Debug, PartialEq, Eq)]
enum Publish {
    Events,
    BatchEvents,
}

/// Which publish route `method` and `path` name, as the router would match them: `POST`, and
/// `/apps/` then one non-empty segment then `/events` or `/batch_events`, nothing after.
fn publish_route(method: &Method, path: &str) -> Option<Publish> {
    if method != Method::POST {
        return None;
    }
    let (app_id, route) = split_app_path(path)?;
    if app_id.is_empty() {
        return None;
    }
    match route {
        "events" => Some(Publish::Events),
        "batch_events" => Some(Publish::BatchEvents),
        _ => None,
    }
}

impl<B> Service<axum::http::Request<B>> for Front
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Answer {
        if let Some(prefix) = &self.prefix {
            let Some(below) = below_prefix(request.uri(), prefix) else {
                return Box::pin(async { Ok(StatusCode::NOT_FOUND.into_response()) });
            };
            *request.uri_mut() = below;
            request.extensions_mut().insert(ServedPrefix(Arc::clone(prefix)));
        }
        let route = self.publish.as_ref().and_then(|state| {
            publish_route(request.method(), request.uri().path()).map(|route| (route, Arc::clone(state)))
        });
        let Some((route, state)) = route else {
            return Box::pin(self.router.call(request));
        };
        let request: Request = request.map(Body::new);
        Box::pin(async move {
            let signed = match Signed::from_request(request, &state).await {
                Ok(signed) => signed,
                Err(rejection) => return Ok(rejection.into_response()),
            };
            Ok(match route {
                Publish::Events => events::trigger(State(state), signed).await.into_response(),
                Publish::BatchEvents => events::batch(State(state), signed).await.into_response(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, Uri};

    use super::{Publish, below_prefix, publish_route};

    #[test]
    fn below_prefix_takes_the_prefix_off_whole_segments_only() {
        let below = |uri: &str| below_prefix(&uri.parse::<Uri>().unwrap(), "/reverb").map(|uri| uri.to_string());
        assert_eq!(below("/reverb/apps/1/events?auth_key=k").as_deref(), Some("/apps/1/events?auth_key=k"));
        assert_eq!(below("/reverb/app/key").as_deref(), Some("/app/key"));
        assert_eq!(below("/reverb").as_deref(), Some("/"));
        assert_eq!(below("/reverb/").as_deref(), Some("/"));
        for outside in ["/apps/1/events", "/reverbx/app/key", "/", "/rev"] {
            assert_eq!(below(outside), None, "{outside}");
        }
    }

    /// Only what the router would hand to the two publish handlers is taken.
    #[test]
    fn only_the_publish_routes_are_taken() {
        let post = Method::POST;
        assert_eq!(publish_route(&post, "/apps/1/events"), Some(Publish::Events));
        assert_eq!(publish_route(&post, "/apps/my-app/batch_events"), Some(Publish::BatchEvents));
        assert_eq!(publish_route(&post, "/apps/a%20b/events"), Some(Publish::Events));
        for path in [
            "/apps//events",
            "/apps/1/events/",
            "/apps/1/events/x",
            "/apps/1/channels",
            "/apps/1/eventsx",
            "/apps/1",
            "/apps/events",
            "/app/1/events",
            "/apps/1/2/events",
            "",
        ] {
            assert_eq!(publish_route(&post, path), None, "{path}");
        }
        for method in [Method::GET, Method::PUT, Method::HEAD, Method::OPTIONS] {
            assert_eq!(publish_route(&method, "/apps/1/events"), None, "{method}");
        }
    }
}
