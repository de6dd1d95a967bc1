//! The Pusher HTTP API as a publisher uses it: signed `POST /apps/{id}/events` and
//! `/batch_events`, and Reprise's signed `GET /apps/{id}/channels/{name}/events` (history).
//!
//! Each [`Rest`] is one keep-alive HTTP/1.1 connection used by one task, one request at a time:
//! a publisher that awaits each acknowledgement keeps its channel's events in order, and no
//! connection pool sits between the load generator and the server. A server that answers
//! `Connection: close` (Sockudo does, on every HTTP API call) gets a new connection for the next
//! request, as any HTTP/1.1 client must do; a request already sent is never sent again.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use memchr::memmem::Finder;
use reprise_api::signature::sign_request;
use tokio::net::TcpStream;

use crate::pusher::{EVENT_NAME, ID_LEN};

/// Where the server is and which app to use.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

/// An event id as the server returned it (26 ASCII bytes).
pub type IdBytes = [u8; ID_LEN];

static IDS_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ids\":{\""));

/// How many times an HTTP API connection was reopened because the server closed it: the figures
/// of such a server include a TCP connect per request.
pub static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// One keep-alive connection to the HTTP API.
pub struct Rest {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
    host: String,
    /// The last answer said `Connection: close`.
    closing: bool,
}

impl Rest {
    pub async fn connect(target: &Target) -> anyhow::Result<Rest> {
        let sender = Self::open(target).await?;
        Ok(Rest { sender, host: target.addr.to_string(), target: target.clone(), closing: false })
    }

    async fn open(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(target.addr).await.with_context(|| format!("connect {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection future drives the socket; it ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Publishes one benchmark event; returns Reprise's event id when the server gives one.
    pub async fn trigger(&mut self, channel: &str, data: &str) -> anyhow::Result<Option<IdBytes>> {
        let body = event_json(channel, data);
        let path = format!("/apps/{}/events", self.target.app_id);
        let response = self.call(Method::POST, &path, &[], body.into_bytes()).await?;
        Ok(ids_in(&response).next())
    }

    /// Publishes several events to one channel in one `batch_events` call; returns the ids given.
    pub async fn batch(&mut self, channel: &str, datas: &[String]) -> anyhow::Result<Vec<IdBytes>> {
        let items: Vec<String> = datas.iter().map(|data| event_json(channel, data)).collect();
        let body = format!(r#"{{"batch":[{}]}}"#, items.join(","));
        let path = format!("/apps/{}/batch_events", self.target.app_id);
        let response = self.call(Method::POST, &path, &[], body.into_bytes()).await?;
        Ok(ids_in(&response).collect())
    }

    /// One page of a channel's history after `since` (the whole channel when `None`).
    pub async fn history(&mut self, channel: &str, since: Option<&str>, limit: usize) -> anyhow::Result<Bytes> {
        let path = format!("/apps/{}/channels/{channel}/events", self.target.app_id);
        let limit = limit.to_string();
        let mut params = vec![("limit", limit.as_str())];
        if let Some(since) = since {
            params.push(("since", since));
        }
        self.call(Method::GET, &path, &params, Vec::new()).await
    }

    /// The publish `trigger` sends, signed with a wrong secret: the server reads and checks it
    /// all (query, body, MD5, HMAC), then must answer 401. Nothing is published.
    pub async fn rejected_trigger(&mut self, channel: &str, data: &str) -> anyhow::Result<()> {
        let body = event_json(channel, data);
        let path = format!("/apps/{}/events", self.target.app_id);
        let (status, answer) = self.send(Method::POST, &path, &[], body.into_bytes(), Signing::WrongSecret).await?;
        if status != StatusCode::UNAUTHORIZED {
            bail!("a wrongly signed publish answered {status}, not 401: {}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    }

    /// `GET /up`, unsigned: the server's HTTP stack and nothing else.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let (status, _) = self.send(Method::GET, "/up", &[], Vec::new(), Signing::Unsigned).await?;
        if status != StatusCode::OK {
            bail!("/up answered {status}");
        }
        Ok(())
    }

    /// A signed request that must be answered 200; returns the body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let (status, body) = self.send(method, path, params, body, Signing::AppSecret).await?;
        if status != StatusCode::OK {
            bail!("{path} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// Sends one request, signed as `signing` says; returns the status and the body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
        body: Vec<u8>,
        signing: Signing,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let wrong;
        let secret = match signing {
            Signing::AppSecret => Some(self.target.secret.as_str()),
            Signing::WrongSecret => {
                wrong = format!("not-{}", self.target.secret);
                Some(wrong.as_str())
            }
            Signing::Unsigned => None,
        };
        let uri = match secret {
            Some(secret) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let query = sign_request(&self.target.key, secret, method.as_str(), path, params, &body, now);
                format!("{path}?{query}")
            }
            None => path.to_owned(),
        };
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        if self.closing || self.sender.is_closed() {
            self.sender = Self::open(&self.target).await?;
            self.closing = false;
            RECONNECTS.fetch_add(1, Ordering::Relaxed);
        }
        self.sender.ready().await.context("the HTTP connection closed")?;
        let response = self.sender.send_request(request).await.context("HTTP request failed")?;
        self.closing = response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the HTTP response")?.to_bytes();
        Ok((status, body))
    }
}

/// How a request is signed.
#[derive(Clone, Copy)]
enum Signing {
    AppSecret,
    /// With a secret that is not the app's: the server must answer 401.
    WrongSecret,
    Unsigned,
}

/// One benchmark event as `events` and `batch_events` take it.
fn event_json(channel: &str, data: &str) -> String {
    format!(r#"{{"name":"{EVENT_NAME}","channel":"{channel}","data":"{data}"}}"#)
}

/// Every event id in a trigger or batch response: `"ids":{"<channel>":"<id>"}` (Reprise only).
pub fn ids_in(body: &[u8]) -> impl Iterator<Item = IdBytes> + '_ {
    IDS_MARK.find_iter(body).filter_map(move |at| {
        let rest = &body[at + 8..];
        let value_at = memchr::memmem::find(rest, b"\":\"")? + 3;
        rest.get(value_at..value_at + ID_LEN)?.try_into().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_in_trigger_and_batch_responses() {
        let id = "01KCZ0000000000000000000A1";
        let trigger = format!(r#"{{"ids":{{"news":"{id}"}}}}"#);
        assert_eq!(ids_in(trigger.as_bytes()).map(|i| i.to_vec()).collect::<Vec<_>>(), vec![id.as_bytes().to_vec()]);
        let batch = format!(r#"{{"batch":[{{"ids":{{"a":"{id}"}}}},{{"ids":{{"a":"{id}"}}}}]}}"#);
        assert_eq!(ids_in(batch.as_bytes()).count(), 2);
        assert_eq!(ids_in(b"{}").count(), 0);
    }
}
