//! Signatures (`signature.rs`): what the signer computes verifies, and a one-byte change to it,
//! to the signed request or to its clock does not; a request with arbitrary parameters is
//! refused with a `RequestAuthError`, never a panic.
//!
//! The input is text, one field per line (readable seeds):
//!
//! ```text
//! key / secret / socket_id / channel / channel_data ("-" for none) / user_data /
//! method / path / auth_timestamp / which byte to change / query parameters (k=v&k=v) / body...
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::signature::{
    RequestAuthError, SignedRequest, SigningKey, sign_request, socket_auth, user_auth, verify, verify_socket_auth,
    verify_user_auth,
};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let mut lines = text.splitn(12, '\n');
    let mut field = || lines.next().unwrap_or_default();
    let (key, secret, socket_id, channel) = (field(), field(), field(), field());
    let signing_key = SigningKey::new(secret);
    let channel_data = Some(field()).filter(|data| *data != "-");
    let (user_data, method, path) = (field(), field(), field());
    let timestamp: u64 = field().parse().unwrap_or_default();
    let change: usize = field().parse().unwrap_or_default();
    let query = field();
    let body = field().as_bytes();

    // An app key never contains ':' (the config refuses it): `auth` is "key:signature".
    if !key.contains(':') {
        let auth = socket_auth(key, secret, socket_id, channel, channel_data);
        assert!(verify_socket_auth(key, &signing_key, socket_id, channel, channel_data, &auth));
        if let Some(changed) = change_one_byte(&auth, change) {
            assert!(!verify_socket_auth(key, &signing_key, socket_id, channel, channel_data, &changed), "{changed}");
        }
        let other_channel = format!("{channel}x");
        assert!(!verify_socket_auth(key, &signing_key, socket_id, &other_channel, channel_data, &auth));

        let auth = user_auth(key, secret, socket_id, user_data);
        assert!(verify_user_auth(key, &signing_key, socket_id, user_data, &auth));
        if let Some(changed) = change_one_byte(&auth, change) {
            assert!(!verify_user_auth(key, &signing_key, socket_id, user_data, &changed), "{changed}");
        }
    }
    // Arbitrary text as a signature is refused, without a panic (unless the fuzzer forged HMAC-SHA256).
    assert!(!verify(secret, socket_id, channel));

    // The parameters as a caller gives them, and as an attacker would.
    let given: Vec<(String, String)> =
        query.split('&').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let arbitrary = SignedRequest { method, path, params: &given, body };
    let _ = arbitrary.verify(key, &signing_key, timestamp);

    // A caller's own parameters: plain names, not the ones the signer adds.
    let own: Vec<(&str, &str)> = given
        .iter()
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        .filter(|(k, _)| !k.starts_with("auth_") && k != "body_md5")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let signed = sign_request(key, secret, method, path, &own, body, timestamp);
    let params = decode_query(&signed);
    let request = SignedRequest { method, path, params: &params, body };
    assert_eq!(request.verify(key, &signing_key, timestamp), Ok(()), "{signed}");
    if let Some(late) = timestamp.checked_add(601) {
        assert_eq!(request.verify(key, &signing_key, late), Err(RequestAuthError::Expired));
    }
    let other_path = format!("{path}x");
    assert_eq!(
        SignedRequest { path: &other_path, ..request }.verify(key, &signing_key, timestamp),
        Err(RequestAuthError::BadSignature)
    );
    if !body.is_empty() {
        let mut other_body = body.to_vec();
        let at = change % other_body.len();
        other_body[at] ^= 1;
        let tampered = SignedRequest { body: &other_body, ..request };
        assert_eq!(tampered.verify(key, &signing_key, timestamp), Err(RequestAuthError::BodyMismatch));
    }
});

/// `auth` with the byte at `at` (modulo its length) changed, unless the change leaves the same
/// credential: a hex digit in the other case decodes to the same signature byte.
fn change_one_byte(auth: &str, at: usize) -> Option<String> {
    let mut bytes = auth.as_bytes().to_vec();
    let at = at % bytes.len();
    let before = bytes[at];
    bytes[at] = before.wrapping_add(1 + u8::try_from(at % 255).expect("below 255"));
    let in_signature = auth.rfind(':').is_some_and(|colon| at > colon);
    if in_signature && before.eq_ignore_ascii_case(&bytes[at]) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The query string `sign_request` built, decoded as a web framework would.
fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("every signed parameter is k=v");
            (k.to_owned(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let hex = std::str::from_utf8(&hex).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("the signer writes two hex digits"));
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).expect("the signer encoded UTF-8")
}
