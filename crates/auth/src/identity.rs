//! Who a request acts as, and what it may read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The channel every document is in; a grant of it sees everything.
pub const ALL_CHANNELS: &str = "*";
/// The public channel: readable by every user.
pub const PUBLIC_CHANNEL: &str = "!";

/// A user's effective channels, each with the sequence from which it is visible. A persistent
/// map: cloning it is O(1) and a grant added to a copy shares everything else, so a user that
/// holds one channel per shared document pays O(log n) per new grant, not a copy of all n.
pub type ChannelMap = imbl::OrdMap<String, u64>;

/// An authenticated user (or GUEST, whose `name` is `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCtx {
    /// `None` for GUEST.
    pub name: Option<String>,
    /// Effective channels (admin ∪ jwt channels ∪ those of every role, plus `!`), each with the
    /// sequence from which it is visible to this user (the grant's sequence). Shared: a user
    /// may hold many channels (one per shared list), and every request clones its caller.
    pub channels: ChannelMap,
    /// Effective roles: admin ∪ jwt roles.
    pub roles: BTreeSet<String>,
    /// Channels this user could read before and cannot now, each with the sequence of the
    /// write that took it away (directly, by losing a role, or by a role losing it). The
    /// changes feed uses it to send removals to clients that synced before the revocation.
    pub revoked: Arc<BTreeMap<String, u64>>,
}

impl UserCtx {
    /// Whether a revision in `channels` is readable.
    pub fn can_read(&self, channels: &[String]) -> bool {
        self.channels.contains_key(ALL_CHANNELS)
            || channels
                .iter()
                .any(|c| c == PUBLIC_CHANNEL || self.channels.contains_key(c))
    }
}

/// The identity behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin port: sees and does everything.
    Admin,
    /// A user (or GUEST) on the public port.
    User(UserCtx),
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    pub fn can_read(&self, channels: &[String]) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(u) => u.can_read(channels),
        }
    }

    pub fn user(&self) -> Option<&UserCtx> {
        match self {
            Caller::Admin => None,
            Caller::User(u) => Some(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_visibility() {
        let u = UserCtx {
            name: Some("a".into()),
            channels: [("x".to_string(), 1u64)].into_iter().collect(),
            ..Default::default()
        };
        assert!(u.can_read(&["x".into()]));
        assert!(u.can_read(&["y".into(), "!".into()]));
        assert!(!u.can_read(&["y".into()]));
        assert!(!u.can_read(&[]));
        let star = UserCtx {
            channels: [("*".to_string(), 1u64)].into_iter().collect(),
            ..Default::default()
        };
        assert!(star.can_read(&[]));
        assert!(Caller::Admin.can_read(&[]));
    }
}
