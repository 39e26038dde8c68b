//! Identities and credential checks. Knows nothing of HTTP frameworks.
//!
//! - [`identity`]: who a request acts as ([`Caller`], [`UserCtx`]) and the channel-visibility rule.
//! - [`principals`]: users and roles — stored records, admin-API JSON, validation, partial
//!   updates, effective channels with their grant sequences.
//! - [`password`]: Argon2id hashing off the reactor and the cache of verified passwords.
//! - [`throttle`]: failed-login throttling per (user name, client address).
//! - [`sessions`]: TTL sessions stored under a keyed hash of their id, cookies, one-time sessions.
//! - [`authenticator`]: one database's facade: the public-port pipeline (Bearer → Basic →
//!   cookie → GUEST, with the [`BearerAuth`] hook for token providers), session creation and
//!   the admin operations that must invalidate caches and sessions.
//! - [`jwt`]: Bearer tokens: OpenID Connect and static-key (`local_jwt`) providers.

pub mod authenticator;
pub mod identity;
pub mod jwt;
pub mod password;
pub mod principals;
pub mod sessions;
pub mod throttle;

pub use authenticator::{
    AuthMethod, AuthSettings, Authenticated, Authenticator, BearerAuth, ConfigRole, ConfigUser,
    Credentials, GuestConfig, NewSession,
};
pub use identity::{Caller, ChannelMap, UserCtx};
pub use password::HashParams;
pub use principals::{WriteMode, GUEST};
pub use sessions::{CookieSettings, SameSite};

/// Errors of the authentication layer, mapped once to HTTP by the API crates.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing or wrong credentials; the reason says which check failed (never a secret).
    #[error("{reason}")]
    Unauthorized {
        reason: String,
        /// Whether a Basic challenge may be offered (the caller decides per request headers).
        challenge: bool,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// An upstream service (an OpenID provider's token endpoint) failed or is unreachable.
    #[error("{0}")]
    BadGateway(String),
    #[error("Too many failed login attempts; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error(transparent)]
    Storage(#[from] syncgate_storage::StorageError),
    /// A bug or an environment failure (logged, answered generically).
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        AuthError::Unauthorized {
            reason: reason.into(),
            challenge: true,
        }
    }
}
