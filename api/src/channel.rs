//! Channel names: Pusher's character set and length limit, and the kind a name's prefix selects.

use std::fmt;

/// Pusher's limit on a channel name, in bytes (every allowed character is one byte).
pub const MAX_CHANNEL_NAME_BYTES: usize = 164;

/// What a channel's name prefix makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    /// `private-`: subscription needs an HMAC of `socket_id:channel`.
    Private,
    /// `private-encrypted-`: like private; payloads are end-to-end encrypted and relayed as-is.
    PrivateEncrypted,
    /// `presence-`: like private, plus `channel_data` naming the member.
    Presence,
    /// `#server-to-user-{user id}`: events sent to one signed-in user (`sendToUser`); only a
    /// socket signed in as that user may subscribe.
    ServerToUser,
}

/// The prefix of the channel pusher-js subscribes to after `signin()`.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A channel name that passed validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_BYTES} characters")]
    TooLong,
    #[error("channel name may only contain letters, digits and _ - = @ , . ;")]
    InvalidCharacter,
}

impl ChannelName {
    /// Validates `name` against Pusher's rules: `[A-Za-z0-9_\-=@,.;]{1,164}`.
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_BYTES {
            return Err(ChannelNameError::TooLong);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
        // The one name outside the character set: Pusher's reserved per-user channel.
        let checked = name.strip_prefix(SERVER_TO_USER_PREFIX).unwrap_or(name);
        if checked.is_empty() || !checked.bytes().all(allowed) {
            return Err(ChannelNameError::InvalidCharacter);
        }
        Ok(ChannelName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ChannelKind {
        let name = self.0.as_str();
        if name.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else if name.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Cache channels remember their last event and send it to each new subscriber.
    pub fn is_cache(&self) -> bool {
        ["cache-", "private-cache-", "presence-cache-", "private-encrypted-cache-"]
            .iter()
            .any(|prefix| self.0.starts_with(prefix))
    }

    /// Private, encrypted and presence channels are served only after a valid signature.
    /// (A server-to-user channel needs a signin instead.)
    pub fn requires_auth(&self) -> bool {
        matches!(self.kind(), ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence)
    }

    /// The user a `#server-to-user-` channel belongs to.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.0.strip_prefix(SERVER_TO_USER_PREFIX)
    }

    /// The per-user channel of `user_id`, if the id fits in a channel name.
    pub fn for_user(user_id: &str) -> Result<Self, ChannelNameError> {
        ChannelName::parse(&format!("{SERVER_TO_USER_PREFIX}{user_id}"))
    }

    pub fn is_presence(&self) -> bool {
        self.kind() == ChannelKind::Presence
    }

    /// Client events (`client-*`) are allowed on private and presence channels only; Pusher
    /// forbids them on encrypted channels because the server cannot vouch for their payload.
    pub fn allows_client_events(&self) -> bool {
        matches!(self.kind(), ChannelKind::Private | ChannelKind::Presence)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ChannelName> for String {
    fn from(name: ChannelName) -> String {
        name.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_select_the_kind() {
        let kind = |n: &str| ChannelName::parse(n).unwrap().kind();
        assert_eq!(kind("orders"), ChannelKind::Public);
        assert_eq!(kind("cache-orders"), ChannelKind::Public);
        assert_eq!(kind("private-orders.1"), ChannelKind::Private);
        assert_eq!(kind("private-cache-orders"), ChannelKind::Private);
        assert_eq!(kind("private-encrypted-orders"), ChannelKind::PrivateEncrypted);
        assert_eq!(kind("private-encrypted-cache-x"), ChannelKind::PrivateEncrypted);
        assert_eq!(kind("presence-room"), ChannelKind::Presence);
        assert_eq!(kind("presence-cache-room"), ChannelKind::Presence);
    }

    #[test]
    fn cache_channels_are_recognised() {
        for name in ["cache-a", "private-cache-a", "presence-cache-a", "private-encrypted-cache-a"] {
            assert!(ChannelName::parse(name).unwrap().is_cache(), "{name}");
        }
        for name in ["a", "private-a", "cachex", "presence-a-cache-"] {
            assert!(!ChannelName::parse(name).unwrap().is_cache(), "{name}");
        }
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::parse("a b"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(ChannelName::parse("a/b"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(ChannelName::parse("é"), Err(ChannelNameError::InvalidCharacter));
        assert!(ChannelName::parse(&"a".repeat(164)).is_ok());
        assert_eq!(ChannelName::parse(&"a".repeat(165)), Err(ChannelNameError::TooLong));
        assert!(ChannelName::parse("private-App.Models.User.1").is_ok());
        assert!(ChannelName::parse("a_-=@,.;Z9").is_ok());
        assert_eq!(ChannelName::parse("#a"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(ChannelName::parse("#server-to-user-"), Err(ChannelNameError::InvalidCharacter));
        assert_eq!(ChannelName::parse("#server-to-user-a#b"), Err(ChannelNameError::InvalidCharacter));
        let user = ChannelName::for_user("42").unwrap();
        assert_eq!(user.as_str(), "#server-to-user-42");
        assert_eq!(user.kind(), ChannelKind::ServerToUser);
        assert_eq!(user.server_to_user_id(), Some("42"));
        assert!(!user.requires_auth() && !user.allows_client_events());
    }
}
