//! One database's authentication: the public-port pipeline (Bearer → Basic → cookie → GUEST),
//! password checks with throttling and the verified-password cache, sessions, and the admin
//! operations on users, roles and sessions that must keep those caches and sessions honest.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use syncgate_storage::{BoxFuture, DatabaseStore, Ticket};

use crate::password::{self, HashParams, VerifiedCache};
use crate::principals::{
    show, LoadedUser, Principals, RoleUpdate, UserUpdate, UserWrite, WriteMode, GUEST,
};
use crate::sessions::{now_ms, CookieSettings, SessionRecord, Sessions, ONE_TIME_TTL};
use crate::throttle::Throttle;
use crate::{AuthError, UserCtx};

/// The GUEST user's settings (always taken from the config).
#[derive(Debug, Clone, Default)]
pub struct GuestConfig {
    pub disabled: bool,
    pub admin_channels: Vec<String>,
}

/// A user in the config file (`databases.*.users.NAME`): created at startup when missing,
/// never overwritten.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUser {
    /// Ignored: the map key is the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub admin_channels: Vec<String>,
    #[serde(default)]
    pub admin_roles: Vec<String>,
}

impl std::fmt::Debug for ConfigUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigUser")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("email", &self.email)
            .field("disabled", &self.disabled)
            .field("admin_channels", &self.admin_channels)
            .field("admin_roles", &self.admin_roles)
            .finish()
    }
}

impl ConfigUser {
    /// The admin-API update this config entry stands for (validated like an API body).
    pub fn to_update(&self) -> Result<UserUpdate, AuthError> {
        let mut body = serde_json::json!({
            "admin_channels": self.admin_channels,
            "admin_roles": self.admin_roles,
        });
        if let Some(e) = &self.email {
            body["email"] = e.clone().into();
        }
        if let Some(d) = self.disabled {
            body["disabled"] = d.into();
        }
        let mut u = UserUpdate::from_json(body)?;
        if let Some(p) = &self.password {
            password::validate_password(p)?;
            u.password = Some(p.clone());
        }
        Ok(u)
    }
}

/// A role in the config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRole {
    /// Ignored: the map key is the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub admin_channels: Vec<String>,
}

/// Everything a database's authenticator is configured with.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub disable_password_auth: bool,
    pub hash_params: HashParams,
    pub cookie: CookieSettings,
    /// Default TTL of sessions (`session_ttl_secs`).
    pub session_ttl: Duration,
    /// The server's secret for hashing session ids.
    pub session_key: Vec<u8>,
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

/// Verifies `Authorization: Bearer` tokens (OIDC and local JWT providers). A database without
/// token providers has none and refuses Bearer headers. Install with
/// [`Authenticator::set_bearer`].
pub trait BearerAuth: Send + Sync {
    /// Checks the token and returns the name of the user it stands for; the user must exist
    /// when this returns (register it through `principals` if the provider allows). The
    /// pipeline then loads the user and refuses it if disabled.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        principals: &'a Principals,
    ) -> BoxFuture<'a, Result<String, AuthError>>;
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Bearer,
    Basic,
    Cookie,
    Guest,
}

/// The outcome of the pipeline.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: UserCtx,
    pub method: AuthMethod,
    /// A `Set-Cookie` value the response must carry (sliding refresh of the session).
    pub set_cookie: Option<String>,
}

/// A new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub record: SessionRecord,
    /// `Set-Cookie` value (none for one-time sessions).
    pub set_cookie: Option<String>,
}

fn invalid_login() -> AuthError {
    AuthError::unauthorized("Invalid login")
}

fn session_error(reason: &str) -> AuthError {
    AuthError::Unauthorized {
        reason: reason.to_string(),
        challenge: false,
    }
}

/// Splits a Basic header value into name and password. Scheme names are case-insensitive.
fn parse_basic(value: &str) -> Result<(String, String), AuthError> {
    let b64 = value.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| AuthError::unauthorized("Invalid login: malformed Basic credentials"))?;
    let text = String::from_utf8(raw)
        .map_err(|_| AuthError::unauthorized("Invalid login: Basic credentials are not UTF-8"))?;
    match text.split_once(':') {
        Some((n, p)) if !n.is_empty() => Ok((n.to_string(), p.to_string())),
        _ => Err(AuthError::unauthorized(
            "Invalid login: malformed Basic credentials",
        )),
    }
}

/// Authenticates requests against one database's principals and sessions.
pub struct Authenticator {
    settings: AuthSettings,
    principals: Principals,
    sessions: Sessions,
    verified: VerifiedCache,
    throttle: Throttle,
    bearer: RwLock<Option<Arc<dyn BearerAuth>>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn DatabaseStore>, settings: AuthSettings) -> Self {
        Authenticator {
            principals: Principals::new(store.clone()),
            sessions: Sessions::new(store, settings.session_key.clone()),
            settings,
            verified: VerifiedCache::default(),
            throttle: Throttle::default(),
            bearer: RwLock::new(None),
        }
    }

    pub fn principals(&self) -> &Principals {
        &self.principals
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn cookie(&self) -> &CookieSettings {
        &self.settings.cookie
    }

    /// Installs the Bearer-token verifier (the database's OIDC / local JWT providers).
    pub fn set_bearer(&self, b: Arc<dyn BearerAuth>) {
        if let Ok(mut g) = self.bearer.write() {
            *g = Some(b);
        }
    }

    fn bearer(&self) -> Option<Arc<dyn BearerAuth>> {
        self.bearer.read().ok().and_then(|g| g.clone())
    }

    /// GUEST's identity, when GUEST is enabled.
    pub async fn guest(&self) -> Option<UserCtx> {
        match self.principals.load(GUEST).await {
            Ok(Some(g)) if !g.record.disabled => Some(g.ctx.clone()),
            _ => None,
        }
    }

    // --- the pipeline ------------------------------------------------------------------------

    /// Runs the pipeline for a normal endpoint: Bearer → Basic → cookie → GUEST. Bad
    /// credentials of any kind (including a bad cookie) are a 401; no credentials with GUEST
    /// disabled is a 401 `Login required`.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<Authenticated, AuthError> {
        if let Some(a) = self.identify(creds, false).await? {
            return Ok(a);
        }
        self.guest_or(AuthError::unauthorized("Login required"))
            .await
    }

    /// The pipeline for `/_session`: a bad, expired or revoked cookie is ignored; bad Basic or
    /// Bearer credentials still fail. `None` = anonymous with GUEST disabled.
    pub async fn authenticate_optional(
        &self,
        creds: &Credentials<'_>,
    ) -> Result<Option<Authenticated>, AuthError> {
        if let Some(a) = self.identify(creds, true).await? {
            return Ok(Some(a));
        }
        Ok(self.guest_or(invalid_login()).await.ok())
    }

    async fn guest_or(&self, err: AuthError) -> Result<Authenticated, AuthError> {
        match self.guest().await {
            Some(user) => Ok(Authenticated {
                user,
                method: AuthMethod::Guest,
                set_cookie: None,
            }),
            None => Err(err),
        }
    }

    /// Credentials on the request, if any, checked. `Ok(None)` = no (usable) credentials.
    async fn identify(
        &self,
        creds: &Credentials<'_>,
        ignore_bad_cookie: bool,
    ) -> Result<Option<Authenticated>, AuthError> {
        if let Some(h) = creds.authorization {
            let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                let user = self.authenticate_bearer(rest.trim()).await?;
                return Ok(Some(Authenticated {
                    user: user.ctx.clone(),
                    method: AuthMethod::Bearer,
                    set_cookie: None,
                }));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                if self.settings.disable_password_auth {
                    return Err(session_error(
                        "Password authentication is disabled for this database",
                    ));
                }
                let (name, pw) = parse_basic(rest)?;
                let user = self.check_password(&name, &pw, creds.client_addr).await?;
                return Ok(Some(Authenticated {
                    user: user.ctx.clone(),
                    method: AuthMethod::Basic,
                    set_cookie: None,
                }));
            }
            return Err(AuthError::unauthorized(
                "Invalid login: unsupported Authorization scheme (use Basic or Bearer)",
            ));
        }
        if let Some(id) = creds.session_cookie {
            match self.authenticate_cookie(id).await {
                Ok(a) => return Ok(Some(a)),
                Err(e) if !ignore_bad_cookie => return Err(e),
                Err(_) => {}
            }
        }
        Ok(None)
    }

    /// The hook for token providers; none configured → 401.
    async fn authenticate_bearer(&self, token: &str) -> Result<Arc<LoadedUser>, AuthError> {
        let Some(b) = self.bearer() else {
            return Err(session_error(
                "Invalid login: this database accepts no Bearer tokens",
            ));
        };
        let name = b.authenticate(token, &self.principals).await?;
        match self.principals.load(&name).await? {
            Some(u) if !u.record.disabled && !u.record.is_guest() => Ok(u),
            Some(u) if u.record.disabled => Err(session_error("Invalid login: user is disabled")),
            _ => Err(session_error("Invalid login: unknown user")),
        }
    }

    /// Checks a name and password: throttled per (name, address), cached on success. Wrong
    /// password, unknown or disabled user → 401 `Invalid login`; throttled → 429.
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
        addr: Option<IpAddr>,
    ) -> Result<Arc<LoadedUser>, AuthError> {
        if let Err(retry_after) = self.throttle.check(name, addr) {
            return Err(AuthError::TooManyRequests { retry_after });
        }
        let user = self.principals.load(name).await?;
        let ok = match &user {
            Some(u) if !u.record.disabled && !u.record.is_guest() => {
                match &u.record.password_hash {
                    Some(h) => self.verified.verify(name, h, password).await,
                    None => false,
                }
            }
            Some(_) => false,
            None => {
                password::verify_dummy(self.settings.hash_params, password.to_string()).await;
                false
            }
        };
        match user {
            Some(u) if ok => {
                self.throttle.success(name, addr);
                Ok(u)
            }
            _ => {
                self.throttle.failure(name, addr);
                tracing::debug!(user = %show(name), "failed password check");
                Err(invalid_login())
            }
        }
    }

    /// Authenticates a session cookie, refreshing it when due.
    async fn authenticate_cookie(&self, id: &str) -> Result<Authenticated, AuthError> {
        let now = now_ms();
        let Some(mut rec) = self.sessions.get(id).await? else {
            return Err(session_error("Session Invalid"));
        };
        if rec.expired(now) {
            let _ = self.sessions.delete(id).await;
            return Err(session_error("Session expired"));
        }
        let user = match self.principals.load(&rec.username).await? {
            Some(u) if u.record.session_uuid == rec.session_uuid && !u.record.disabled => u,
            _ => return Err(session_error("Session no longer valid for user")),
        };
        if rec.one_time {
            if !self.sessions.take_one_time(id).await? {
                return Err(session_error("Session Invalid"));
            }
            return Ok(Authenticated {
                user: user.ctx.clone(),
                method: AuthMethod::Cookie,
                set_cookie: None,
            });
        }
        let mut set_cookie = None;
        if rec.needs_refresh(now) {
            rec.expires_ms = now + rec.ttl_ms;
            self.sessions.put(id, &rec).await?;
            set_cookie = Some(self.settings.cookie.set_cookie(id, rec.expires()));
        }
        Ok(Authenticated {
            user: user.ctx.clone(),
            method: AuthMethod::Cookie,
            set_cookie,
        })
    }

    // --- sessions ----------------------------------------------------------------------------

    /// Creates a session for an existing, enabled user. Admin errors: unknown user 404,
    /// disabled 400.
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Option<Duration>,
        one_time: bool,
    ) -> Result<NewSession, AuthError> {
        if name.is_empty() || name == GUEST {
            return Err(AuthError::BadRequest("Invalid or missing user name".into()));
        }
        let user = self
            .principals
            .get_user(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("No such user \"{}\"", show(name))))?;
        if user.disabled {
            return Err(AuthError::BadRequest("User is disabled".into()));
        }
        let ttl = if one_time {
            ONE_TIME_TTL
        } else {
            ttl.unwrap_or(self.settings.session_ttl)
        };
        let (id, record, ticket) = self
            .sessions
            .create(name, &user.session_uuid, ttl, one_time, now_ms())
            .await?;
        self.durable(ticket).await?;
        let set_cookie =
            (!one_time).then(|| self.settings.cookie.set_cookie(&id, record.expires()));
        Ok(NewSession {
            id,
            record,
            set_cookie,
        })
    }

    /// A session that is live: exists, not expired, its user exists with the same session
    /// uuid and is enabled. Returns the user's identity.
    pub async fn live_session(
        &self,
        id: &str,
    ) -> Result<Option<(SessionRecord, UserCtx)>, AuthError> {
        let Some(rec) = self.sessions.get(id).await? else {
            return Ok(None);
        };
        if rec.expired(now_ms()) {
            return Ok(None);
        }
        match self.principals.load(&rec.username).await? {
            Some(u) if u.record.session_uuid == rec.session_uuid && !u.record.disabled => {
                let ctx = u.ctx.clone();
                Ok(Some((rec, ctx)))
            }
            _ => Ok(None),
        }
    }

    /// Deletes one session; false if it did not exist.
    pub async fn delete_session(&self, id: &str) -> Result<bool, AuthError> {
        match self.sessions.delete_durably(id).await? {
            Some(t) => self.durable(t).await.map(|_| true),
            None => Ok(false),
        }
    }

    /// A user's live sessions as (handle, record); none for a disabled user.
    pub async fn user_sessions(
        &self,
        user: &crate::principals::UserRecord,
    ) -> Result<Vec<(String, SessionRecord)>, AuthError> {
        if user.disabled {
            return Ok(Vec::new());
        }
        self.sessions
            .live_for_user(&user.name, &user.session_uuid, now_ms())
            .await
    }

    /// Revokes the session of `username` with this handle; false if there is none. Answers
    /// after the deletion is durable, as every other revocation.
    pub async fn revoke_session_handle(&self, username: &str, h: &str) -> Result<bool, AuthError> {
        match self.sessions.delete_by_handle(username, h).await? {
            Some(t) => self.durable(t).await.map(|_| true),
            None => Ok(false),
        }
    }

    /// Revokes every session of a user (rotates its session uuid and deletes the records).
    pub async fn revoke_sessions(&self, name: &str) -> Result<(), AuthError> {
        self.principals.rotate_sessions(name).await?;
        // the ticket also covers the rotation written just before
        let (_, t) = self
            .sessions
            .delete_where_durably(|r| r.username == name)
            .await?;
        self.durable(t).await
    }

    /// Deletes expired sessions and sessions of users that are gone or were revoked.
    pub async fn collect_sessions(&self) -> Result<usize, AuthError> {
        let now = now_ms();
        // the session uuid of every user holding a live session (None: the user is gone)
        let mut uuids: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (_, _, r) in self.sessions.stored().await? {
            if r.expired(now) || uuids.contains_key(&r.username) {
                continue;
            }
            let uuid = self
                .principals
                .get_user(&r.username)
                .await
                .ok()
                .flatten()
                .map(|u| u.session_uuid);
            uuids.insert(r.username.clone(), uuid);
        }
        self.sessions
            .delete_where(|r| {
                r.expired(now)
                    || uuids
                        .get(&r.username)
                        // a session created since the users were read stays
                        .is_some_and(|u| u.as_deref() != Some(r.session_uuid.as_str()))
            })
            .await
    }

    // --- admin operations on principals --------------------------------------------------------

    /// Admin `POST /_user/` and `PUT /_user/{name}`. `path_name` is the URL's name (PUT).
    /// Returns the user's name and what happened.
    pub async fn put_user(
        &self,
        path_name: Option<&str>,
        body: Value,
        mode: WriteMode,
    ) -> Result<(String, UserWrite), AuthError> {
        let upd = UserUpdate::from_json(body)?;
        let name = match (path_name, &upd.name) {
            (Some(p), Some(b)) if p != b => {
                return Err(AuthError::BadRequest(
                    "Name mismatch (the body's name must match the URL)".into(),
                ))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b.clone(),
            (None, None) => return Err(AuthError::BadRequest("Missing name property".into())),
        };
        if name != GUEST {
            crate::principals::validate_name(&name)?;
        }
        let hash = match &upd.password {
            Some(p) if name != GUEST => {
                password::validate_password(p)?;
                Some(password::hash_async(self.settings.hash_params, p.clone()).await?)
            }
            _ => None,
        };
        let (w, ticket) = self.principals.write_user(&name, &upd, hash, mode).await?;
        self.after_user_write(&name, &w).await?;
        if let Some(t) = ticket {
            self.durable(t).await?;
        }
        Ok((name, w))
    }

    async fn after_user_write(&self, name: &str, w: &UserWrite) -> Result<(), AuthError> {
        if w.sessions_invalidated {
            self.verified.forget(name);
            self.sessions.delete_for_user(name).await?;
        }
        Ok(())
    }

    /// Admin `DELETE /_user/{name}`: the user and its sessions are gone.
    pub async fn delete_user(&self, name: &str) -> Result<(), AuthError> {
        let t = self.principals.delete_user(name).await?;
        self.verified.forget(name);
        self.sessions.delete_for_user(name).await?;
        self.durable(t).await
    }

    /// Admin `POST /_role/` and `PUT /_role/{name}`. Returns the name and whether it was created.
    pub async fn put_role(
        &self,
        path_name: Option<&str>,
        body: Value,
        mode: WriteMode,
    ) -> Result<(String, bool), AuthError> {
        let upd = RoleUpdate::from_json(body)?;
        let name = match (path_name, &upd.name) {
            (Some(p), Some(b)) if p != b => {
                return Err(AuthError::BadRequest(
                    "Name mismatch (the body's name must match the URL)".into(),
                ))
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b.clone(),
            (None, None) => return Err(AuthError::BadRequest("Missing name property".into())),
        };
        crate::principals::validate_name(&name)?;
        let (created, ticket) = self.principals.write_role(&name, &upd, mode).await?;
        if let Some(t) = ticket {
            self.durable(t).await?;
        }
        Ok((name, created))
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), AuthError> {
        let t = self.principals.delete_role(name).await?;
        self.durable(t).await
    }

    /// Installs the config file's principals at startup: roles, then users, created only when
    /// missing (never overwritten); GUEST always set from the config. Runs before the
    /// listeners serve, so hashing here blocks nothing.
    pub async fn install_config(
        &self,
        roles: &BTreeMap<String, ConfigRole>,
        users: &BTreeMap<String, ConfigUser>,
        guest: &GuestConfig,
    ) -> Result<(), AuthError> {
        for (name, role) in roles {
            if self.principals.get_role(name).await?.is_some() {
                continue;
            }
            let upd = RoleUpdate {
                admin_channels: Some(role.admin_channels.iter().cloned().collect()),
                ..Default::default()
            };
            match self
                .principals
                .write_role(name, &upd, WriteMode::Create)
                .await
            {
                // another node sharing the store installed it meanwhile
                Err(AuthError::Conflict(_)) => {}
                r => {
                    r?;
                }
            }
        }
        for (name, user) in users {
            if name == GUEST || self.principals.get_user(name).await?.is_some() {
                continue;
            }
            let upd = user.to_update()?;
            let hash = match &upd.password {
                Some(p) => Some(password::hash(self.settings.hash_params, p)?),
                None => None,
            };
            match self
                .principals
                .write_user(name, &upd, hash, WriteMode::Create)
                .await
            {
                // another node sharing the store installed it meanwhile
                Err(AuthError::Conflict(_)) => {}
                r => {
                    r?;
                }
            }
        }
        // a database that never enabled GUEST keeps no GUEST record (and spends no sequence)
        let default_guest = guest.disabled && guest.admin_channels.is_empty();
        if default_guest && self.principals.get_user(GUEST).await?.is_none() {
            return Ok(());
        }
        let upd = UserUpdate::from_json(serde_json::json!({
            "disabled": guest.disabled,
            "admin_channels": guest.admin_channels,
        }))?;
        self.principals
            .write_user(GUEST, &upd, None, WriteMode::Upsert)
            .await?;
        Ok(())
    }

    async fn durable(&self, t: Ticket) -> Result<(), AuthError> {
        Ok(self.principals.store().durable(t).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::SameSite;
    use serde_json::json;
    use syncgate_storage::Store;

    fn auth() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db: Arc<dyn DatabaseStore> = store.database("db").unwrap();
        let a = Authenticator::new(
            db,
            AuthSettings {
                disable_password_auth: false,
                hash_params: HashParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                cookie: CookieSettings {
                    name: "SyncGatewaySession".into(),
                    path: "/db".into(),
                    secure: false,
                    http_only: true,
                    same_site: SameSite::Lax,
                },
                session_ttl: Duration::from_secs(3600),
                session_key: b"key".to_vec(),
            },
        );
        (dir, a)
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[tokio::test]
    async fn basic_pipeline_and_cache() {
        let (_d, a) = auth();
        a.install_config(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &GuestConfig {
                disabled: true,
                admin_channels: vec![],
            },
        )
        .await
        .unwrap();
        assert_eq!(
            a.principals.store().last_seq(),
            0,
            "default GUEST spends no sequence"
        );
        a.install_config(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &GuestConfig {
                disabled: true,
                admin_channels: vec![],
            },
        )
        .await
        .unwrap();
        a.put_user(
            None,
            json!({"name":"alice","password":"pw-alice","admin_channels":["a"]}),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let h = basic("alice", "pw-alice");
        let creds = Credentials {
            authorization: Some(&h),
            ..Default::default()
        };
        let ok = a.authenticate(&creds).await.unwrap();
        assert_eq!(ok.method, AuthMethod::Basic);
        assert_eq!(ok.user.name.as_deref(), Some("alice"));
        assert!(ok.user.channels.contains_key("a"));
        assert_eq!(a.verified.len(), 1, "success cached");
        let bad = basic("alice", "nope");
        let e = a
            .authenticate(&Credentials {
                authorization: Some(&bad),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            AuthError::Unauthorized {
                challenge: true,
                ..
            }
        ));
        // no credentials, GUEST disabled
        assert!(a.authenticate(&Credentials::default()).await.is_err());
        assert!(a
            .authenticate_optional(&Credentials::default())
            .await
            .unwrap()
            .is_none());
        // password change forgets the cached verification
        a.put_user(
            Some("alice"),
            json!({"password":"pw-new"}),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert_eq!(a.verified.len(), 0);
        assert!(a.authenticate(&creds).await.is_err());
        // disabled
        a.put_user(Some("alice"), json!({"disabled":true}), WriteMode::Upsert)
            .await
            .unwrap();
        let h2 = basic("alice", "pw-new");
        assert!(a
            .authenticate(&Credentials {
                authorization: Some(&h2),
                ..Default::default()
            })
            .await
            .is_err());
    }

    #[tokio::test]
    async fn throttled_even_with_the_right_password() {
        let (_d, a) = auth();
        a.put_user(
            None,
            json!({"name":"bob","password":"pw-bob"}),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        for _ in 0..crate::throttle::MAX_FAILURES {
            assert!(matches!(
                a.check_password("bob", "wrong", ip).await,
                Err(AuthError::Unauthorized { .. })
            ));
        }
        assert!(matches!(
            a.check_password("bob", "pw-bob", ip).await,
            Err(AuthError::TooManyRequests { .. })
        ));
        assert!(a.check_password("bob", "pw-bob", None).await.is_ok());
    }

    #[tokio::test]
    async fn an_expired_session_is_refused_and_deleted() {
        let (_d, a) = auth();
        a.put_user(
            None,
            json!({"name":"dan","password":"pw-dan"}),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let s = a
            .create_session("dan", Some(Duration::from_millis(1)), false)
            .await
            .unwrap();
        assert_eq!(a.sessions().count().await.unwrap(), 1);
        // past its expiry (waiting for the clock, not measuring anything)
        tokio::time::sleep(Duration::from_millis(20)).await;
        let creds = Credentials {
            session_cookie: Some(&s.id),
            ..Default::default()
        };
        assert!(a.authenticate(&creds).await.is_err());
        assert_eq!(a.sessions().count().await.unwrap(), 0, "deleted when used");
    }

    #[tokio::test]
    async fn sessions_and_revocation() {
        let (_d, a) = auth();
        a.put_user(
            None,
            json!({"name":"carol","password":"pw-carol"}),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let s = a.create_session("carol", None, false).await.unwrap();
        let cookie = s.set_cookie.clone().unwrap();
        assert!(cookie.starts_with(&format!("SyncGatewaySession={}; Path=/db; Expires=", s.id)));
        let creds = Credentials {
            session_cookie: Some(&s.id),
            ..Default::default()
        };
        let ok = a.authenticate(&creds).await.unwrap();
        assert_eq!(ok.method, AuthMethod::Cookie);
        assert!(ok.set_cookie.is_none(), "fresh session: no refresh");
        assert!(a.live_session(&s.id).await.unwrap().is_some());
        // revoke all
        a.revoke_sessions("carol").await.unwrap();
        assert!(a.authenticate(&creds).await.is_err());
        assert!(
            a.authenticate_optional(&creds).await.unwrap().is_none(),
            "ignored on /_session"
        );
        // password change invalidates
        let s2 = a.create_session("carol", None, false).await.unwrap();
        a.put_user(
            Some("carol"),
            json!({"password":"pw-carol"}),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert!(a.live_session(&s2.id).await.unwrap().is_none());
        // errors
        assert!(matches!(
            a.create_session("nobody", None, false).await,
            Err(AuthError::NotFound(_))
        ));
        assert!(matches!(
            a.create_session(GUEST, None, false).await,
            Err(AuthError::BadRequest(_))
        ));
        // one-time
        let ot = a.create_session("carol", None, true).await.unwrap();
        assert!(ot.set_cookie.is_none());
        let c = Credentials {
            session_cookie: Some(&ot.id),
            ..Default::default()
        };
        assert!(a.authenticate(&c).await.is_ok());
        assert!(a.authenticate(&c).await.is_err());
        // refresh after 10 % of the TTL
        let s3 = a
            .create_session("carol", Some(Duration::from_millis(500)), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let c3 = Credentials {
            session_cookie: Some(&s3.id),
            ..Default::default()
        };
        let r = a.authenticate(&c3).await.unwrap();
        assert!(r.set_cookie.is_some_and(|c| c.contains(&s3.id)));
        assert!(a.authenticate(&c3).await.unwrap().set_cookie.is_none());
        // expiry and collection
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(a.authenticate(&c3).await.is_err());
        let s4 = a
            .create_session("carol", Some(Duration::from_millis(1)), false)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(a.collect_sessions().await.unwrap() >= 1);
        assert!(a.sessions.get(&s4.id).await.unwrap().is_none());
        // deleting the user deletes its sessions
        let s5 = a.create_session("carol", None, false).await.unwrap();
        a.delete_user("carol").await.unwrap();
        assert!(a.sessions.get(&s5.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn config_principals_are_created_once_guest_always_reset() {
        let (_d, a) = auth();
        let users: BTreeMap<String, ConfigUser> = serde_json::from_value(json!({
            "dave": {"password": "pw-dave", "admin_channels": ["d"]}
        }))
        .unwrap();
        let roles: BTreeMap<String, ConfigRole> =
            serde_json::from_value(json!({"r": {"admin_channels": ["x"]}})).unwrap();
        let guest = GuestConfig {
            disabled: false,
            admin_channels: vec!["pub".into()],
        };
        a.install_config(&roles, &users, &guest).await.unwrap();
        assert!(a.check_password("dave", "pw-dave", None).await.is_ok());
        assert!(a.guest().await.unwrap().channels.contains_key("pub"));
        a.put_user(
            Some("dave"),
            json!({"admin_channels":["changed"]}),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        a.put_user(Some(GUEST), json!({"disabled":true}), WriteMode::Upsert)
            .await
            .unwrap();
        assert!(a.guest().await.is_none());
        a.install_config(&roles, &users, &guest).await.unwrap();
        let d = a.principals.get_user("dave").await.unwrap().unwrap();
        assert!(d.admin_channels.contains_key("changed"), "not overwritten");
        assert!(a.guest().await.is_some(), "GUEST reset from config");
        assert!(format!("{:?}", users["dave"]).contains("redacted"));
    }
}
