//! The core error: every failure a handler can report, each with one HTTP status.

use syncgate_auth::AuthError;
use syncgate_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    /// A 400 with a more precise CouchDB error name than `bad_request` (Mango:
    /// `invalid_operator`, `bad_arg`, `no_usable_index`, ...).
    #[error("{reason}")]
    BadRequestNamed { error: &'static str, reason: String },
    #[error("{reason}")]
    Unauthorized { reason: String, challenge: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    BadContentType(String),
    #[error("{reason}")]
    TooManyRequests { reason: String, retry_after: u64 },
    #[error("{0}")]
    ServiceUnavailable(String),
    /// An upstream service (an OpenID provider) failed or could not be reached.
    #[error("{0}")]
    BadGateway(String),
    /// The sync function failed (an exception, invalid output or a timeout): a 500 whose
    /// reason is shown (the details are only in the log).
    #[error("{0}")]
    SyncFunction(String),
    /// A bug or an engine failure: logged in detail, answered generically.
    #[error("{0}")]
    Internal(String),
    /// The store was written by a newer syncgate (startup refuses it: exit 2).
    #[error("{0}")]
    Incompatible(String),
    /// A stored record that does not decode: logged, and answered naming the record (never
    /// served as an empty or default value).
    #[error("A stored record is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The reason a client is shown: an internal error's detail is logged here and never sent;
    /// a corrupt record is logged and named.
    pub fn public_reason(&self) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "The server hit an internal error; it has been logged".to_string()
            }
            Error::Corrupt(detail) => {
                tracing::error!(record = %detail, "corrupt stored record");
                self.to_string()
            }
            other => other.to_string(),
        }
    }

    /// HTTP status and CouchDB error name.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Error::BadRequest(_) => (400, "bad_request"),
            Error::BadRequestNamed { error, .. } => (400, error),
            Error::Unauthorized { .. } => (401, "unauthorized"),
            Error::Forbidden(_) => (403, "forbidden"),
            Error::NotFound(_) => (404, "not_found"),
            Error::MethodNotAllowed(_) => (405, "method_not_allowed"),
            Error::Conflict(_) => (409, "conflict"),
            Error::PreconditionFailed(_) => (412, "file_exists"),
            Error::TooLarge(_) => (413, "too_large"),
            Error::BadContentType(_) => (415, "bad_content_type"),
            Error::TooManyRequests { .. } => (429, "too_many_requests"),
            Error::BadGateway(_) => (502, "bad_gateway"),
            Error::ServiceUnavailable(_) => (503, "service_unavailable"),
            Error::Internal(_)
            | Error::Corrupt(_)
            | Error::SyncFunction(_)
            | Error::Incompatible(_) => (500, "internal_server_error"),
        }
    }

    pub fn bad(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Error::Unauthorized {
            reason: msg.into(),
            challenge: true,
        }
    }
}

impl From<crate::mango::MangoError> for Error {
    fn from(e: crate::mango::MangoError) -> Self {
        Error::BadRequestNamed {
            error: e.error,
            reason: e.reason,
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::BadRequest(m) => Error::BadRequest(m),
            StorageError::NotFound(m) => Error::NotFound(m),
            StorageError::Conflict(m) => Error::Conflict(m),
            // a stub without data is the client's mistake
            StorageError::PreconditionFailed(m) => Error::PreconditionFailed(m),
            StorageError::Corrupt(m) => Error::Corrupt(m),
            e @ StorageError::Engine(_) => Error::Internal(e.to_string()),
            StorageError::Unavailable(m) => Error::ServiceUnavailable(m),
            StorageError::Incompatible(m) => Error::Incompatible(m),
        }
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized { reason, challenge } => {
                Error::Unauthorized { reason, challenge }
            }
            AuthError::Forbidden(m) => Error::Forbidden(m),
            AuthError::BadRequest(m) => Error::BadRequest(m),
            AuthError::NotFound(m) => Error::NotFound(m),
            AuthError::MethodNotAllowed(m) => Error::MethodNotAllowed(m),
            AuthError::Conflict(m) => Error::Conflict(m),
            AuthError::BadGateway(m) => Error::BadGateway(m),
            AuthError::Internal(m) => Error::Internal(m),
            e @ AuthError::TooManyRequests { .. } => {
                let retry_after = if let AuthError::TooManyRequests { retry_after } = &e {
                    *retry_after
                } else {
                    60
                };
                Error::TooManyRequests {
                    reason: e.to_string(),
                    retry_after,
                }
            }
            AuthError::Storage(s) => s.into(),
        }
    }
}
