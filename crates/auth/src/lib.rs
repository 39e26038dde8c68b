//! Identities and credential checks. Knows nothing of HTTP frameworks.
//!
//! - [`identity`]: who a request acts as ([`Caller`], [`UserCtx`]) and the channel-visibility rule.
//! - [`authenticator`]: the public-port pipeline (Bearer → Basic → cookie → GUEST).
//! - [`jwt`]: Bearer tokens: OpenID Connect and static-key (`local_jwt`) providers.

pub mod authenticator;
pub mod identity;
pub mod jwt;

pub use authenticator::{Authenticator, Credentials, GuestConfig};
pub use identity::{Caller, UserCtx};

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
    Conflict(String),
    #[error("Too many failed login attempts; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    #[error(transparent)]
    Storage(#[from] syncgate_storage::StorageError),
}

impl AuthError {
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        AuthError::Unauthorized {
            reason: reason.into(),
            challenge: true,
        }
    }
}
