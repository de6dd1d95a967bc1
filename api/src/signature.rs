//! HMAC-SHA256 signatures, exactly as the Pusher client and server SDKs compute them.
//!
//! - Socket auth (private/presence subscribe): `auth = "{key}:{hex(hmac(secret, socket_id:channel[:channel_data]))}"`.
//! - REST requests: `auth_signature = hex(hmac(secret, "METHOD\nPATH\nQUERY"))` where QUERY is every
//!   parameter but `auth_signature`, keys lowercased and sorted, joined as `k=v&...` with the values
//!   *not* URL-encoded (the SDKs sign the raw values).
//!
//! Every comparison is constant-time: a forged signature learns nothing from the response time.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// How far a REST request's `auth_timestamp` may be from the server's clock, in seconds (Pusher's rule).
pub const REQUEST_TIMESTAMP_WINDOW_SECS: u64 = 600;

/// A secret made ready to sign and verify with. HMAC hashes its key, padded to a block, twice
/// (for the inner and the outer hash) before any message: done once here, for an app's whole
/// life, rather than for every signature, that is two of the six SHA-256 blocks a signed API
/// call hashes (callgrind, docs/benchmarks.md, round two, sixth pass).
#[derive(Clone)]
pub struct SigningKey(HmacSha256);

impl SigningKey {
    pub fn new(secret: &str) -> SigningKey {
        SigningKey(HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length"))
    }

    /// Hex HMAC-SHA256 of `message`.
    pub fn sign(&self, message: &str) -> String {
        hex::encode(self.mac(message).finalize().into_bytes())
    }

    /// Checks `signature_hex` against `message` in constant time.
    pub fn verify(&self, message: &str, signature_hex: &str) -> bool {
        // Decoded on the stack: an HMAC-SHA256 is 32 bytes, and any other length cannot match.
        let mut given = [0_u8; 32];
        match hex::decode_to_slice(signature_hex, &mut given) {
            Ok(()) => self.mac(message).verify_slice(&given).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(message.as_bytes());
        mac
    }
}

/// Never the secret, nor anything derived from it.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    SigningKey::new(secret).sign(message)
}

/// Checks `signature_hex` against `message` under `secret` in constant time.
pub fn verify(secret: &str, message: &str, signature_hex: &str) -> bool {
    SigningKey::new(secret).verify(message, signature_hex)
}

/// What a socket signs to join a private or presence channel.
pub fn socket_auth_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The `auth` value a backend's `/broadcasting/auth` returns for this socket and channel.
pub fn socket_auth(key: &str, secret: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    format!("{key}:{}", sign(secret, &socket_auth_message(socket_id, channel, channel_data)))
}

/// Verifies a subscribe's `auth` (`key:signature`) for this app (`key`, `secret`), socket and
/// channel.
pub fn verify_socket_auth(
    key: &str,
    secret: &SigningKey,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some((auth_key, signature)) = auth.split_once(':') else {
        return false;
    };
    let key_matches: bool = auth_key.as_bytes().ct_eq(key.as_bytes()).into();
    let signature_matches = secret.verify(&socket_auth_message(socket_id, channel, channel_data), signature);
    key_matches & signature_matches
}

/// What a socket signs to authenticate as a user (`pusher:signin`).
pub fn user_auth_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The `auth` a backend's user-authentication endpoint returns for this socket and user.
pub fn user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    format!("{key}:{}", sign(secret, &user_auth_message(socket_id, user_data)))
}

/// Verifies a signin's `auth` (`key:signature`) for this app (`key`, `secret`), socket and user
/// data.
pub fn verify_user_auth(key: &str, secret: &SigningKey, socket_id: &str, user_data: &str, auth: &str) -> bool {
    let Some((auth_key, signature)) = auth.split_once(':') else {
        return false;
    };
    let key_matches: bool = auth_key.as_bytes().ct_eq(key.as_bytes()).into();
    key_matches & secret.verify(&user_auth_message(socket_id, user_data), signature)
}

/// Hex MD5 of a request body (`body_md5`).
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string a REST request signs. `params` are the decoded query parameters.
///
/// Written into one string sized up front: every signed API call builds it, and the version
/// with a `format!` per parameter and a `join` cost a publish about as much as the HMAC itself.
pub fn request_string_to_sign<'a>(
    method: &str,
    path: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(Cow<'a, str>, &'a str)> = params
        .into_iter()
        .filter(|(key, _)| *key != "auth_signature")
        .map(|(key, value)| {
            // SDKs send lowercase keys: copy only a key that needs lowering.
            let key = if key.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(key.to_ascii_lowercase())
            } else {
                Cow::Borrowed(key)
            };
            (key, value)
        })
        .collect();
    pairs.sort_unstable();
    let length =
        method.len() + path.len() + 2 + pairs.iter().map(|(key, value)| key.len() + value.len() + 2).sum::<usize>();
    let mut message = String::with_capacity(length);
    message.extend(method.chars().map(|c| c.to_ascii_uppercase()));
    message.push('\n');
    message.push_str(path);
    message.push('\n');
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            message.push('&');
        }
        message.push_str(key);
        message.push('=');
        message.push_str(value);
    }
    message
}

/// Why a REST request's signature is refused. All of them are answered with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("auth_key does not match this app")]
    WrongKey,
    #[error("auth_version must be 1.0")]
    WrongVersion,
    #[error("auth_timestamp is not within {REQUEST_TIMESTAMP_WINDOW_SECS} seconds of the server time")]
    Expired,
    #[error("body_md5 does not match the body")]
    BodyMismatch,
    #[error("invalid signature")]
    BadSignature,
}

/// A REST request as far as its signature is concerned.
pub struct SignedRequest<'a, P = String> {
    pub method: &'a str,
    pub path: &'a str,
    /// Decoded query parameters, in any order: owned strings, or slices of a decoded query.
    pub params: &'a [(P, P)],
    pub body: &'a [u8],
}

impl<P: AsRef<str>> SignedRequest<'_, P> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(key, _)| key.as_ref() == name).map(|(_, value)| value.as_ref())
    }

    /// Checks key, version, timestamp window, body digest and signature for the app `key`/`secret`.
    pub fn verify(&self, key: &str, secret: &SigningKey, now_unix_secs: u64) -> Result<(), RequestAuthError> {
        let auth_key = self.param("auth_key").ok_or(RequestAuthError::Missing("auth_key"))?;
        let timestamp = self.param("auth_timestamp").ok_or(RequestAuthError::Missing("auth_timestamp"))?;
        let version = self.param("auth_version").ok_or(RequestAuthError::Missing("auth_version"))?;
        let signature = self.param("auth_signature").ok_or(RequestAuthError::Missing("auth_signature"))?;
        if !bool::from(auth_key.as_bytes().ct_eq(key.as_bytes())) {
            return Err(RequestAuthError::WrongKey);
        }
        if version != "1.0" {
            return Err(RequestAuthError::WrongVersion);
        }
        let timestamp: u64 = timestamp.parse().map_err(|_| RequestAuthError::Expired)?;
        if timestamp.abs_diff(now_unix_secs) > REQUEST_TIMESTAMP_WINDOW_SECS {
            return Err(RequestAuthError::Expired);
        }
        if !self.body.is_empty() {
            // Lowercase hex, as `body_md5` writes it, on the stack.
            let mut expected = [0_u8; 32];
            hex::encode_to_slice(Md5::digest(self.body), &mut expected).expect("16 bytes are 32 hex digits");
            let given = self.param("body_md5").ok_or(RequestAuthError::Missing("body_md5"))?;
            if !bool::from(given.as_bytes().ct_eq(&expected)) {
                return Err(RequestAuthError::BodyMismatch);
            }
        }
        let params = self.params.iter().map(|(k, v)| (k.as_ref(), v.as_ref()));
        let message = request_string_to_sign(self.method, self.path, params);
        if secret.verify(&message, signature) { Ok(()) } else { Err(RequestAuthError::BadSignature) }
    }
}

/// Builds the signed query string for a REST call, as the Pusher SDKs do (for clients and tests).
/// `params` are the call's own query parameters (e.g. `info`), unencoded.
pub fn sign_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let timestamp = timestamp.to_string();
    let md5 = body_md5(body);
    let mut all: Vec<(&str, &str)> = vec![("auth_key", key), ("auth_timestamp", &timestamp), ("auth_version", "1.0")];
    if !body.is_empty() {
        all.push(("body_md5", &md5));
    }
    all.extend_from_slice(params);
    let signature = sign(secret, &request_string_to_sign(method, path, all.iter().copied()));
    let mut query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={}", encode_query_value(v))).collect();
    query.push(format!("auth_signature={signature}"));
    query.join("&")
}

/// Percent-encodes a query value (everything but unreserved characters and `,`).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~,".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pusher's documented example (pusher.com/docs/channels/library_auth_reference/auth-signatures).
    #[test]
    fn matches_pushers_documented_socket_auth() {
        let auth = socket_auth("278d425bdf160c739803", "7ad3773142a6692b25b8", "1234.1234", "private-foobar", None);
        assert_eq!(auth, "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert!(verify_socket_auth(
            "278d425bdf160c739803",
            &SigningKey::new("7ad3773142a6692b25b8"),
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
    }

    /// A key signs each message as a key made afresh for it does: signing leaves no state behind,
    /// whatever was signed before. Its `Debug` shows nothing of the secret.
    #[test]
    fn a_signing_key_is_reused_without_carrying_state() {
        let key = SigningKey::new("7ad3773142a6692b25b8");
        let messages = ["1234.1234:private-foobar", "", "POST\n/apps/1/events\nauth_key=k", "1234.1234:private-foobar"];
        for message in messages {
            let fresh = sign("7ad3773142a6692b25b8", message);
            assert_eq!(key.sign(message), fresh, "{message:?}");
            assert!(key.verify(message, &fresh));
            assert!(!key.verify(message, &sign("another secret", message)));
        }
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }

    #[test]
    fn forged_socket_auth_is_refused() {
        let (secret, other) = (SigningKey::new("secret"), SigningKey::new("other"));
        let auth = socket_auth("key", "secret", "1.1", "private-a", None);
        assert!(!verify_socket_auth("key", &secret, "1.2", "private-a", None, &auth));
        assert!(!verify_socket_auth("key", &secret, "1.1", "private-b", None, &auth));
        assert!(!verify_socket_auth("key", &other, "1.1", "private-a", None, &auth));
        assert!(!verify_socket_auth("key2", &secret, "1.1", "private-a", None, &auth));
        assert!(!verify_socket_auth("key", &secret, "1.1", "private-a", None, "key:zz"));
        assert!(!verify_socket_auth("key", &secret, "1.1", "private-a", None, "nocolon"));
        let presence = socket_auth("key", "secret", "1.1", "presence-a", Some(r#"{"user_id":1}"#));
        assert!(verify_socket_auth("key", &secret, "1.1", "presence-a", Some(r#"{"user_id":1}"#), &presence));
        assert!(!verify_socket_auth("key", &secret, "1.1", "presence-a", Some(r#"{"user_id":2}"#), &presence));
    }

    #[test]
    fn user_auth_signs_socket_and_user_data() {
        let secret = SigningKey::new("secret");
        let auth = user_auth("key", "secret", "1.1", r#"{"id":"7"}"#);
        assert!(verify_user_auth("key", &secret, "1.1", r#"{"id":"7"}"#, &auth));
        assert!(!verify_user_auth("key", &secret, "1.2", r#"{"id":"7"}"#, &auth));
        assert!(!verify_user_auth("key", &secret, "1.1", r#"{"id":"8"}"#, &auth));
        assert!(!verify_user_auth("other", &secret, "1.1", r#"{"id":"7"}"#, &auth));
    }

    /// Pusher's documented REST example: POST /apps/3/events with a known body and timestamp.
    #[test]
    fn matches_pushers_documented_request_signature() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(body_md5(body), "ec365a775a4cd0599faeb73354201b6f");
        let params = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
        ];
        let message = request_string_to_sign("POST", "/apps/3/events", params);
        assert_eq!(
            sign("7ad3773142a6692b25b8", &message),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    /// The string to sign: method upper-cased, keys lower-cased and sorted (then by value), values
    /// raw, `auth_signature` left out.
    #[test]
    fn string_to_sign_lowers_and_sorts_keys() {
        let params = [("B", "2"), ("a", "z"), ("auth_signature", "x"), ("a", "1"), ("c", "%2C")];
        assert_eq!(request_string_to_sign("post", "/apps/1/events", params), "POST\n/apps/1/events\na=1&a=z&b=2&c=%2C");
        assert_eq!(request_string_to_sign("GET", "/p", []), "GET\n/p\n");
    }

    fn parse_query(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.replace("%2C", ",").replace("%2D", "-"))
            })
            .collect()
    }

    #[test]
    fn signed_requests_verify_and_tampering_is_caught() {
        let body = br#"{"name":"e"}"#;
        let query = sign_request("key", "secret", "POST", "/apps/1/events", &[], body, 1000);
        let params = parse_query(&query);
        let request = SignedRequest { method: "POST", path: "/apps/1/events", params: &params, body };
        let secret = SigningKey::new("secret");
        assert_eq!(request.verify("key", &secret, 1000), Ok(()));
        assert_eq!(request.verify("key", &secret, 1600), Ok(()));
        assert_eq!(request.verify("key", &secret, 1601), Err(RequestAuthError::Expired));
        assert_eq!(request.verify("key", &SigningKey::new("wrong"), 1000), Err(RequestAuthError::BadSignature));
        assert_eq!(request.verify("other", &secret, 1000), Err(RequestAuthError::WrongKey));
        let tampered = SignedRequest { body: br#"{"name":"f"}"#, ..request };
        assert_eq!(tampered.verify("key", &secret, 1000), Err(RequestAuthError::BodyMismatch));
        let moved = SignedRequest { path: "/apps/2/events", body, ..tampered };
        assert_eq!(moved.verify("key", &secret, 1000), Err(RequestAuthError::BadSignature));
    }

    #[test]
    fn query_parameters_are_signed_sorted_and_raw() {
        let query = sign_request(
            "k",
            "s",
            "GET",
            "/apps/1/channels",
            &[("info", "user_count"), ("filter_by_prefix", "presence-")],
            b"",
            5,
        );
        let params = parse_query(&query);
        let request = SignedRequest { method: "GET", path: "/apps/1/channels", params: &params, body: b"" };
        assert_eq!(request.verify("k", &SigningKey::new("s"), 5), Ok(()));
        let mut changed = params.clone();
        changed.iter_mut().find(|(k, _)| k == "info").unwrap().1 = "subscription_count".into();
        let request = SignedRequest { params: &changed, ..request };
        assert_eq!(request.verify("k", &SigningKey::new("s"), 5), Err(RequestAuthError::BadSignature));
    }
}
