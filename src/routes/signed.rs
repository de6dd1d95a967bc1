//! The `Signed` extractor: a signed Pusher HTTP API call, verified before its handler runs
//! (find the app, bound the body, check the signature and its timestamp window).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use reprise_api::signature::SignedRequest;

use crate::ServerState;
use crate::apps::App;
use crate::error::ApiError;
use crate::routes::front::ServedPrefix;

/// Hard ceiling on any request body, whatever an app allows (`max_request_size_bytes`): a body
/// is read up to the smaller of the two, and a larger one is refused (413) without being read
/// to its end.
pub const MAX_ANY_REQUEST_BYTES: usize = 1024 * 1024;

/// A call whose signature checked out: the app (from the `{app_id}` in its path), the decoded
/// query, and the body. As a handler argument it answers 404 for an unknown app, 413 over the
/// app's size limit, 400 for an unreadable body and 401 for any signature problem.
pub struct Signed {
    pub app: Arc<App>,
    pub params: QueryParams,
    pub body: Bytes,
}

impl Signed {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name)
    }

    /// Parses the JSON body, answering 400 with the reason when it is malformed.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

impl FromRequest<Arc<ServerState>> for Signed {
    type Rejection = ApiError;

    // A plain function returning the future, rather than an `async fn`: an async fn's future
    // keeps its arguments for its whole life, so the request (240 bytes) would sit beside its own
    // parts. This future is boxed with the handler's for every call (by `front` or by axum), and
    // the smaller the box, the cheaper its allocation (docs/benchmarks.md, round two, eighth pass).
    fn from_request(request: Request, state: &Arc<ServerState>) -> impl Future<Output = Result<Self, ApiError>> + Send {
        let (parts, body) = request.into_parts();
        let app = app_in_path(state, parts.uri.path());
        async move {
            let app = app?;
            // Read up to the app's limit and no further, never past the hard ceiling. (Read here
            // rather than through axum's `DefaultBodyLimit` layer, which cost ~3,500 instructions
            // per publish: callgrind, docs/benchmarks.md, round two, fifth pass.)
            let limit = app.config.max_request_size_bytes.min(MAX_ANY_REQUEST_BYTES);
            let params = QueryParams::decode(parts.uri.query().unwrap_or_default());
            let body = axum::body::to_bytes(body, limit).await.map_err(|error| {
                if is_over_limit(&error) {
                    ApiError::PayloadTooLarge(limit)
                } else {
                    ApiError::BadRequest(format!("cannot read the request body: {error}"))
                }
            })?;
            let pairs: Vec<(&str, &str)> = params.pairs().collect();
            let now = unix_now_secs();
            let verify = |path: &str| {
                let signed = SignedRequest { method: parts.method.as_str(), path, params: &pairs, body: &body };
                signed.verify(&app.config.key, &app.signing_key, now)
            };
            let mut verified = verify(parts.uri.path());
            // Under a path prefix, the Pusher PHP SDK (its `path` option) signs the path without
            // it, a client signing what it sends signs it with: either is the same call.
            if verified.is_err()
                && let Some(ServedPrefix(prefix)) = parts.extensions.get::<ServedPrefix>()
                && verify(&format!("{prefix}{}", parts.uri.path())).is_ok()
            {
                verified = Ok(());
            }
            verified.map_err(|e| ApiError::Unauthorized(format!("authentication failed: {e}")))?;
            Ok(Signed { app, params, body })
        }
    }
}

/// The app a signed call names in its path, `/apps/{app_id}/...`: 404 for an unknown one.
///
/// Read from the path itself rather than from axum's path parameters, so that a call that
/// skips axum's router (`front`) is checked exactly as the others. Percent-decoded as axum
/// decodes a parameter; an id that is not UTF-8 once decoded is refused (400).
fn app_in_path(state: &ServerState, path: &str) -> Result<Arc<App>, ApiError> {
    let segment = split_app_path(path).map_or("", |(app_id, _)| app_id);
    let app_id = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest(format!("the app id {segment:?} in the path is not UTF-8 once decoded")))?;
    state.apps.by_id(&app_id).cloned().ok_or_else(|| ApiError::NotFound(format!("unknown app {app_id:?}")))
}

/// A signed route's path, `/apps/{app_id}/{rest}`, split into the app id as sent (not yet
/// percent-decoded) and what follows its `/` (empty if nothing does); None if it is not under
/// `/apps/`.
pub fn split_app_path(path: &str) -> Option<(&str, &str)> {
    let under = path.strip_prefix("/apps/")?;
    Some(under.split_once('/').unwrap_or((under, "")))
}

/// A query's parameters, decoded as `application/x-www-form-urlencoded` (what
/// `form_urlencoded::parse` gives): every name and value in one string, and where each lies in
/// it. Two allocations whatever the number of parameters; a `(String, String)` per parameter
/// made eleven for a signed call's five (callgrind, docs/benchmarks.md, round two, fifth pass).
pub struct QueryParams {
    text: String,
    /// Per parameter: its name's and its value's start and end in `text`.
    spans: Vec<[usize; 4]>,
}

impl QueryParams {
    /// A query with no `%` or `+` is itself decoded, and a signed call's usually is (keys, a
    /// timestamp, hex digests), so it is copied as it is; the general decoder cost ~7,000
    /// instructions per publish for five parameters (round two, fourth pass). The separators are
    /// found with `memchr` (already in the tree through axum and serde_json), whose word-wide
    /// search took a third of the instructions of a scan by byte (round two, seventh pass).
    pub fn decode(query: &str) -> Self {
        // Sized for a signed call's five parameters and a few of its own, so it never regrows.
        let mut spans = Vec::with_capacity(8);
        let bytes = query.as_bytes();
        if memchr::memchr2(b'%', b'+', bytes).is_some() {
            let mut text = String::with_capacity(query.len());
            for (name, value) in form_urlencoded::parse(bytes) {
                let name_at = text.len();
                text.push_str(&name);
                let value_at = text.len();
                text.push_str(&value);
                spans.push([name_at, value_at, value_at, text.len()]);
            }
            return QueryParams { text, spans };
        }
        let mut at = 0;
        for end in memchr::memchr_iter(b'&', bytes).chain([bytes.len()]) {
            if end > at {
                spans.push(match memchr::memchr(b'=', &bytes[at..end]) {
                    Some(equals) => [at, at + equals, at + equals + 1, end],
                    None => [at, end, end, end],
                });
            }
            at = end + 1;
        }
        QueryParams { text: query.to_owned(), spans }
    }

    /// Every parameter, in the query's order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans
            .iter()
            .map(|&[name, name_end, value, value_end]| (&self.text[name..name_end], &self.text[value..value_end]))
    }

    /// The first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs().find(|(key, _)| *key == name).map(|(_, value)| value)
    }
}

/// Whether reading a body failed on its length limit (rather than on the connection).
fn is_over_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

fn unix_now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::QueryParams;

    /// Decodes exactly as `form_urlencoded::parse` does, on the fast path and off it.
    #[test]
    fn the_query_decodes_as_form_urlencoded_does() {
        let queries = [
            "",
            "auth_key=k&auth_timestamp=1700000000&auth_version=1.0&body_md5=0123abcd&auth_signature=ff00",
            "a=1&&b=2&",
            "flag&empty=&=nameless",
            "eq=a=b",
            "info=user_count,subscription_count&filter_by_prefix=presence-",
            "space=a+b&pct=%2C%20x&bad=%zz&utf8=%C3%A9&lossy=%FF",
            "mixed=plain&enc%3Dname=v%26w",
            "&&&",
        ];
        for query in queries {
            let expected: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let decoded = QueryParams::decode(query);
            let pairs: Vec<(String, String)> = decoded.pairs().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            assert_eq!(pairs, expected, "{query:?}");
            for (name, value) in &expected {
                let first = expected.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
                assert_eq!(decoded.get(name), first, "{query:?}: {name}={value}");
            }
        }
    }
}
