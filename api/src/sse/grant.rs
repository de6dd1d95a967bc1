//! The grant that opens private, encrypted and presence channels (and a user's
//! `#server-to-user-` channel) to a stream: an HMAC-SHA256 under the app secret, made by the app's
//! backend, bound to the stream's channel list, an expiry and, optionally, a user id. Pusher's
//! channel auth binds a signature to a socket id; a stream has none to bind to, so the grant
//! binds to what the stream is instead, and expires.
//!
//! The string signed (lines joined by `\n`):
//!
//! ```text
//! reprise-stream          (so that no other Pusher or Reprise signature can pass for a grant)
//! {app key}
//! {expires: Unix seconds}
//! {number of channels}
//! {channel 1}             (the `channel` parameters, in the order of the URL)
//! ...
//! {channel n}
//! {user id, or nothing}
//! ```
//!
//! The grant itself is `{expires}:{hex signature}`, or `{expires}:{hex signature}:{user id}`,
//! passed as the `grant` query parameter or as `Authorization: Bearer {grant}`. Channel names
//! hold no line break, and the count says where the user id starts, so no two inputs sign the same
//! string.

use crate::signature;

/// Why a grant is refused. Each is answered 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the grant is malformed (expected {{expires}}:{{signature}}[:{{user id}}])")]
    Malformed,
    #[error("the grant's signature does not match this app and these channels")]
    Forged,
    #[error("the grant has expired")]
    Expired,
}

/// What a verified grant says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub expires_unix_secs: u64,
    pub user_id: Option<String>,
}

/// The string a grant signs.
pub fn message(key: &str, expires_unix_secs: u64, channels: &[&str], user_id: Option<&str>) -> String {
    let mut text = format!("reprise-stream\n{key}\n{expires_unix_secs}\n{}\n", channels.len());
    for channel in channels {
        text.push_str(channel);
        text.push('\n');
    }
    text.push_str(user_id.unwrap_or_default());
    text
}

/// The grant an app's backend hands out for a stream of `channels` (in URL order).
pub fn sign(key: &str, secret: &str, expires_unix_secs: u64, channels: &[&str], user_id: Option<&str>) -> String {
    let signature = signature::sign(secret, &message(key, expires_unix_secs, channels, user_id));
    match user_id {
        Some(user_id) => format!("{expires_unix_secs}:{signature}:{user_id}"),
        None => format!("{expires_unix_secs}:{signature}"),
    }
}

/// Checks `grant` for a stream of `channels` (in URL order) of the app `key`, at `now_unix_secs`.
/// The signature is compared in constant time, and checked before the expiry, so an expired
/// grant is told apart from a forged one only for a genuine grant.
pub fn verify(
    key: &str,
    secret: &str,
    grant: &str,
    channels: &[&str],
    now_unix_secs: u64,
) -> Result<Grant, GrantError> {
    let (expires, rest) = grant.split_once(':').ok_or(GrantError::Malformed)?;
    let expires_unix_secs: u64 = expires.parse().map_err(|_| GrantError::Malformed)?;
    let (signature_hex, user_id) = match rest.split_once(':') {
        Some((signature_hex, user_id)) => (signature_hex, Some(user_id)),
        None => (rest, None),
    };
    if signature_hex.is_empty() {
        return Err(GrantError::Malformed);
    }
    if !signature::verify(secret, &message(key, expires_unix_secs, channels, user_id), signature_hex) {
        return Err(GrantError::Forged);
    }
    if expires_unix_secs < now_unix_secs {
        return Err(GrantError::Expired);
    }
    Ok(Grant { expires_unix_secs, user_id: user_id.map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000;

    #[test]
    fn a_grant_verifies_for_its_channels_until_it_expires() {
        let grant = sign("key", "secret", NOW + 60, &["private-a", "b"], None);
        assert_eq!(
            verify("key", "secret", &grant, &["private-a", "b"], NOW),
            Ok(Grant { expires_unix_secs: NOW + 60, user_id: None })
        );
        assert_eq!(verify("key", "secret", &grant, &["private-a", "b"], NOW + 60).map(|g| g.user_id), Ok(None));
        assert_eq!(verify("key", "secret", &grant, &["private-a", "b"], NOW + 61), Err(GrantError::Expired));
    }

    /// The signed string is fixed (a backend in another language must produce the same bytes).
    #[test]
    fn the_signed_string_is_stable() {
        assert_eq!(message("k", 7, &["a", "b"], Some("42")), "reprise-stream\nk\n7\n2\na\nb\n42");
        assert_eq!(message("k", 7, &[], None), "reprise-stream\nk\n7\n0\n");
        let grant = sign("k", "s", 7, &["a"], Some("u:1"));
        assert_eq!(grant, format!("7:{}:u:1", signature::sign("s", "reprise-stream\nk\n7\n1\na\nu:1")));
    }

    /// A grant opens exactly what it was signed for: not other channels, another order, another
    /// app, another user, a later expiry, or a signature made with another secret.
    #[test]
    fn anything_else_is_forged() {
        let grant = sign("key", "secret", NOW + 60, &["private-a", "b"], Some("7"));
        let forged = |grant: &str, key: &str, channels: &[&str]| verify(key, "secret", grant, channels, NOW);
        assert_eq!(forged(&grant, "key", &["private-a"]), Err(GrantError::Forged));
        assert_eq!(forged(&grant, "key", &["b", "private-a"]), Err(GrantError::Forged));
        assert_eq!(forged(&grant, "other", &["private-a", "b"]), Err(GrantError::Forged));
        let other_user = grant.replace(":7", ":8");
        assert_eq!(forged(&other_user, "key", &["private-a", "b"]), Err(GrantError::Forged));
        let no_user = grant.trim_end_matches(":7");
        assert_eq!(forged(no_user, "key", &["private-a", "b"]), Err(GrantError::Forged));
        let later = grant.replacen(&(NOW + 60).to_string(), &(NOW + 6000).to_string(), 1);
        assert_eq!(forged(&later, "key", &["private-a", "b"]), Err(GrantError::Forged));
        let other_secret = sign("key", "not-the-secret", NOW + 60, &["private-a", "b"], Some("7"));
        assert_eq!(forged(&other_secret, "key", &["private-a", "b"]), Err(GrantError::Forged));
        // An expired forgery is reported as forged: only a genuine grant learns it expired.
        let expired_forgery = sign("key", "nope", NOW - 1, &["b"], None);
        assert_eq!(verify("key", "secret", &expired_forgery, &["b"], NOW), Err(GrantError::Forged));
    }

    #[test]
    fn malformed_grants_are_refused() {
        for bad in ["", "abc", "12", "x:ab", "12:", "-1:ab"] {
            assert_eq!(verify("key", "secret", bad, &["a"], NOW), Err(GrantError::Malformed), "{bad:?}");
        }
        assert_eq!(verify("key", "secret", "12:zz", &["a"], NOW), Err(GrantError::Forged), "not hex");
    }
}
