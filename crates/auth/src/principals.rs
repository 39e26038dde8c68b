//! Users and roles: the stored records, the admin API's JSON, validation, partial updates and
//! effective channels.
//!
//! Records are JSON in the store's principal keyspaces (`u`/`r`). Every write goes through
//! [`Principals::modify_user`] / [`Principals::modify_role`]: a read-modify-write under this
//! database's principal lock, stored under a new sequence which the record keeps (`seq`), and
//! which becomes the grant sequence of every channel or role the write added. GUEST is the user
//! record named [`GUEST`]; it has no password and is never listed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use syncgate_storage::{DatabaseStore, DocGrant, PrincipalKind, Ticket};

use crate::identity::{UserCtx, PUBLIC_CHANNEL};
use crate::AuthError;

/// The guest user's name on the API (and its record's key).
pub const GUEST: &str = "GUEST";
/// Longest user or role name, in bytes (as Sync Gateway).
pub const MAX_NAME_LEN: usize = 239;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 250;
/// Users whose effective identity is kept in memory at most.
const CTX_CACHE_CAPACITY: usize = 10_000;

/// Channel or role name → sequence of the write that granted it (0 = granted by the write in
/// progress; filled in when it is stored).
pub type Grants = BTreeMap<String, u64>;

/// A stored user.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id PHC string; never leaves this crate's API except to be verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub admin_channels: Grants,
    #[serde(default)]
    pub admin_roles: Grants,
    /// Issuer of the token that last set `jwt_roles`/`jwt_channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    #[serde(default)]
    pub jwt_roles: Grants,
    #[serde(default)]
    pub jwt_channels: Grants,
    /// Channels (admin or JWT) this user lost → sequence of the write that removed them.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub revoked_channels: Grants,
    /// Roles (admin or JWT) this user lost → sequence of the write that removed them.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub revoked_roles: Grants,
    /// Copied into every session; a new value invalidates all of the user's sessions.
    #[serde(default)]
    pub session_uuid: String,
    /// Sequence of this record's last write.
    #[serde(default)]
    pub seq: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("has_password", &self.password_hash.is_some())
            .field("disabled", &self.disabled)
            .field("admin_channels", &self.admin_channels)
            .field("admin_roles", &self.admin_roles)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl UserRecord {
    /// A new record with a fresh session uuid.
    pub fn new(name: &str) -> UserRecord {
        UserRecord {
            name: name.to_string(),
            session_uuid: new_uuid(),
            ..Default::default()
        }
    }

    pub fn is_guest(&self) -> bool {
        self.name == GUEST
    }

    /// Invalidates every session of the user.
    pub fn rotate_sessions(&mut self) {
        self.session_uuid = new_uuid();
    }
}

/// A stored role.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    #[serde(default)]
    pub admin_channels: Grants,
    /// Channels this role lost → sequence of the write that removed them.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub revoked_channels: Grants,
    #[serde(default)]
    pub seq: u64,
}

/// 128 random bits as hex.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A name for error messages: escaped and shortened.
pub(crate) fn show(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_default().to_string()
}

/// User and role names: 1–239 bytes, no `/ : ,` or backtick, at least one letter or digit.
pub fn validate_name(name: &str) -> Result<(), AuthError> {
    let mut problems = Vec::new();
    if name.is_empty() {
        problems.push("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        problems.push("longer than 239 bytes");
    }
    if name.contains(['/', ':', ',', '`']) {
        problems.push("contains '/', ':', ',' or '`'");
    }
    if !name.is_empty() && !name.chars().any(char::is_alphanumeric) {
        problems.push("must contain a letter or digit");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuthError::BadRequest(format!(
            "Invalid name \"{}\": {}",
            show(name),
            problems.join(", ")
        )))
    }
}

/// `^[^@]+@[^@]+$`, as Sync Gateway (which then ignores it; we refuse it).
pub fn validate_email(email: &str) -> Result<(), AuthError> {
    let ok = email
        .split_once('@')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'))
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadRequest(format!(
            "Invalid email address \"{}\"",
            show(email)
        )))
    }
}

fn validate_channels(what: &str, chans: &BTreeSet<String>) -> Result<(), AuthError> {
    for c in chans {
        if c.is_empty() || c.len() > MAX_CHANNEL_LEN {
            return Err(AuthError::BadRequest(format!(
                "'{what}' entries must be 1–{MAX_CHANNEL_LEN} bytes long"
            )));
        }
    }
    Ok(())
}

/// A PUT/POST body for a user. Fields left `None` stay as they are.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub name: Option<String>,
    /// Taken out of the JSON before deserializing (so no error can echo it).
    #[serde(skip)]
    pub password: Option<String>,
    pub email: Option<String>,
    pub disabled: Option<bool>,
    pub admin_channels: Option<BTreeSet<String>>,
    pub admin_roles: Option<BTreeSet<String>>,
    // read-only: accepted only when equal to the current value
    pub all_channels: Option<BTreeSet<String>>,
    pub roles: Option<BTreeSet<String>>,
    pub jwt_issuer: Option<String>,
    pub jwt_roles: Option<BTreeSet<String>>,
    pub jwt_channels: Option<BTreeSet<String>>,
    pub jwt_last_updated: Option<Value>,
    /// Read-only (shown by GET, derived from the grants): accepted and ignored so a GET body
    /// can be PUT back.
    pub channel_sources: Option<Value>,
}

impl fmt::Debug for UserUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserUpdate")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("email", &self.email)
            .field("disabled", &self.disabled)
            .field("admin_channels", &self.admin_channels)
            .field("admin_roles", &self.admin_roles)
            .finish_non_exhaustive()
    }
}

fn body_object(body: Value, what: &str) -> Result<Map<String, Value>, AuthError> {
    match body {
        Value::Object(m) => Ok(m),
        _ => Err(AuthError::BadRequest(format!(
            "The {what} body must be a JSON object"
        ))),
    }
}

fn field_error(what: &str, e: serde_json::Error) -> AuthError {
    let msg = e.to_string();
    // serde: "unknown field `x`, expected one of ..." / "invalid type: ... at line 1 column 9"
    let msg = msg.split(" at line ").next().unwrap_or(&msg);
    AuthError::BadRequest(format!("Invalid {what}: {msg}"))
}

impl UserUpdate {
    /// Parses a body strictly: unknown fields and wrong types are 400s.
    pub fn from_json(body: Value) -> Result<UserUpdate, AuthError> {
        let mut m = body_object(body, "user")?;
        let password = match m.remove("password") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                return Err(AuthError::BadRequest(
                    "Invalid user: 'password' must be a string".into(),
                ))
            }
        };
        let mut u: UserUpdate =
            serde_json::from_value(Value::Object(m)).map_err(|e| field_error("user", e))?;
        u.password = password;
        if let Some(c) = &u.admin_channels {
            validate_channels("admin_channels", c)?;
        }
        if let Some(r) = &u.admin_roles {
            for name in r {
                validate_name(name)?;
            }
        }
        if let Some(e) = &u.email {
            if !e.is_empty() {
                validate_email(e)?;
            }
        }
        Ok(u)
    }
}

/// A PUT/POST body for a role.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleUpdate {
    pub name: Option<String>,
    pub admin_channels: Option<BTreeSet<String>>,
    pub all_channels: Option<BTreeSet<String>>,
}

impl RoleUpdate {
    pub fn from_json(body: Value) -> Result<RoleUpdate, AuthError> {
        let m = body_object(body, "role")?;
        let r: RoleUpdate =
            serde_json::from_value(Value::Object(m)).map_err(|e| field_error("role", e))?;
        if let Some(c) = &r.admin_channels {
            validate_channels("admin_channels", c)?;
        }
        Ok(r)
    }
}

/// Whether a PUT/POST may create, update, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// `POST /_user/`: create only (409 if it exists).
    Create,
    /// `PUT /_user/{name}`: create or partial update.
    Upsert,
}

/// What a user write did (for the caller's invalidations).
#[derive(Debug, Clone, Default)]
pub struct UserWrite {
    pub created: bool,
    /// Whether anything was stored (an unchanged PUT stores nothing).
    pub changed: bool,
    /// The session uuid changed: every session of the user is now invalid.
    pub sessions_invalidated: bool,
}

/// A user and what it may read, as loaded for a request.
#[derive(Debug, Clone)]
pub struct LoadedUser {
    pub record: UserRecord,
    pub ctx: UserCtx,
}

/// Applies a grant list: kept entries keep their sequence, new ones get 0 (= this write).
fn regrant(current: &Grants, wanted: &BTreeSet<String>) -> Grants {
    wanted
        .iter()
        .map(|c| (c.clone(), current.get(c).copied().unwrap_or(0)))
        .collect()
}

fn fill_grants(g: &mut Grants, seq: u64) {
    for v in g.values_mut() {
        if *v == 0 {
            *v = seq;
        }
    }
}

/// Marks what `before` granted and `after` does not as revoked (sequence 0 = this write), and
/// forgets revocations of what is granted again.
fn track_revocations(before: &[&Grants], after: &[&Grants], revoked: &mut Grants) {
    let now: BTreeSet<&String> = after.iter().flat_map(|g| g.keys()).collect();
    for lost in before
        .iter()
        .flat_map(|g| g.keys())
        .filter(|c| !now.contains(c))
    {
        revoked.insert(lost.clone(), 0);
    }
    revoked.retain(|c, _| !now.contains(c));
}

fn keys(g: &Grants) -> Vec<&String> {
    g.keys().collect()
}

/// Records an effective channel: visible from the earliest grant that gives it.
fn grant(out: &mut BTreeMap<String, u64>, ch: &str, seq: u64) {
    out.entry(ch.to_string())
        .and_modify(|s| *s = (*s).min(seq))
        .or_insert(seq);
}

/// What [`Principals::modify`] needs of a user or role record.
trait Record: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync {
    fn set_name(&mut self, name: &str);
    /// Keeps, in the revocation lists, what `self` no longer grants that `before` did.
    fn track_revocations(&mut self, before: &Self);
    /// The record's own sequence, and that of its grants made by this write (sequence 0).
    fn stamp(&mut self, seq: u64);
}

impl Record for UserRecord {
    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }
    fn track_revocations(&mut self, cur: &Self) {
        track_revocations(
            &[&cur.admin_channels, &cur.jwt_channels],
            &[&self.admin_channels, &self.jwt_channels],
            &mut self.revoked_channels,
        );
        track_revocations(
            &[&cur.admin_roles, &cur.jwt_roles],
            &[&self.admin_roles, &self.jwt_roles],
            &mut self.revoked_roles,
        );
    }
    fn stamp(&mut self, seq: u64) {
        self.seq = seq;
        fill_grants(&mut self.revoked_channels, seq);
        fill_grants(&mut self.revoked_roles, seq);
        fill_grants(&mut self.admin_channels, seq);
        fill_grants(&mut self.admin_roles, seq);
        fill_grants(&mut self.jwt_channels, seq);
        fill_grants(&mut self.jwt_roles, seq);
    }
}

impl Record for RoleRecord {
    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }
    fn track_revocations(&mut self, cur: &Self) {
        track_revocations(
            &[&cur.admin_channels],
            &[&self.admin_channels],
            &mut self.revoked_channels,
        );
    }
    fn stamp(&mut self, seq: u64) {
        self.seq = seq;
        fill_grants(&mut self.revoked_channels, seq);
        fill_grants(&mut self.admin_channels, seq);
    }
}

/// A stored user or role record; one that does not decode is an error naming it.
fn decode_record<R: Record>(kind: PrincipalKind, name: &str, bytes: &[u8]) -> Result<R, AuthError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match kind {
            PrincipalKind::User => "user",
            PrincipalKind::Role => "role",
        };
        AuthError::Internal(format!("corrupt {what} record \"{}\": {e}", show(name)))
    })
}

/// How many times a read-modify-write of a principal decides again when the record changed
/// between its read and its write.
const MODIFY_ATTEMPTS: usize = 8;

/// One database's users and roles.
pub struct Principals {
    store: Arc<dyn DatabaseStore>,
    /// Serializes read-modify-write of principals (never held across an await).
    write: tokio::sync::Mutex<()>,
    /// Loaded users and the documents' grants they were computed from.
    cache: Mutex<Cache>,
}

/// What documents grant one user: document id → grant.
type DocGrants = BTreeMap<String, DocGrant>;

/// The in-memory identities. A write that changes the access index moves the store's grants
/// version; the cache catches up by applying the changed entries
/// ([`DatabaseStore::grant_changes_since`]): a new document grant that only gives channels is
/// added to the cached identity in place (O(log n) on its persistent channel map); a user
/// whose grants changed otherwise (a grant changed or withdrawn, roles, revocations) is
/// recomputed from its cached grants (no re-read of every grant); every other user stays
/// cached. A user that owns one channel per shared document therefore costs one map update
/// per new document, not a copy or a scan of all its grants.
#[derive(Default)]
struct Cache {
    /// The store's grants version the cache is up to date with.
    version: u64,
    /// Bumped by every principal write: a computation that started before one is not kept.
    epoch: u64,
    users: HashMap<String, Arc<LoadedUser>>,
    grants: HashMap<String, Arc<DocGrants>>,
}

impl Cache {
    /// Applies the access-index changes since the cached version.
    fn catch_up(&mut self, store: &dyn DatabaseStore) {
        let now = store.grants_version();
        if now == self.version {
            return;
        }
        let Some((version, changes)) = store.grant_changes_since(self.version) else {
            self.users.clear();
            self.grants.clear();
            self.version = now;
            return;
        };
        let mut roles_changed = false;
        for c in changes {
            match c.kind {
                PrincipalKind::User => {
                    // what the document granted before (known only with the user's grants)
                    let before = self.grants.get(&c.name).map(|g| g.get(&c.doc));
                    let kept = match (before, &c.grant, self.users.get(&c.name)) {
                        (Some(old), new, Some(_)) if old == new.as_ref() => true,
                        (Some(None), Some(new), Some(user)) if grants_channels_only(new) => {
                            let user = with_channels_added(user, new);
                            self.users.insert(c.name.clone(), Arc::new(user));
                            true
                        }
                        _ => false,
                    };
                    if !kept {
                        self.users.remove(&c.name);
                    }
                    if let Some(g) = self.grants.get_mut(&c.name) {
                        let g = Arc::make_mut(g);
                        match c.grant {
                            Some(grant) => g.insert(c.doc, grant),
                            None => g.remove(&c.doc),
                        };
                    }
                }
                // a role's channels reach every user holding (or having lost) it
                PrincipalKind::Role => roles_changed = true,
            }
        }
        if roles_changed {
            self.users.clear();
        }
        self.version = version;
    }
}

/// Whether a document's grant only gives channels (no roles, takes nothing away): added to a
/// user's identity, it changes nothing but those channels.
fn grants_channels_only(g: &DocGrant) -> bool {
    g.roles.is_empty() && g.revoked_channels.is_empty() && g.revoked_roles.is_empty()
}

/// `user` with what a new document grant gives it: what [`Principals::compute`] would return
/// with that grant added (each channel visible from its earliest grant; no longer revoked),
/// in O(log n) per channel on the persistent channel map instead of a recomputation of all n.
fn with_channels_added(user: &LoadedUser, g: &DocGrant) -> LoadedUser {
    let mut ctx = user.ctx.clone();
    for (c, s) in &g.channels {
        let seq = ctx.channels.get(c).map_or(*s, |old| (*old).min(*s));
        ctx.channels.insert(c.clone(), seq);
    }
    if g.channels.keys().any(|c| ctx.revoked.contains_key(c)) {
        Arc::make_mut(&mut ctx.revoked).retain(|c, _| !g.channels.contains_key(c));
    }
    LoadedUser {
        record: user.record.clone(),
        ctx,
    }
}

impl Principals {
    pub fn new(store: Arc<dyn DatabaseStore>) -> Principals {
        Principals {
            store,
            write: tokio::sync::Mutex::new(()),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Arc<dyn DatabaseStore> {
        &self.store
    }

    // --- reading -----------------------------------------------------------------------------

    pub async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        self.get_record(PrincipalKind::User, name).await
    }

    async fn get_record<R: Record>(
        &self,
        kind: PrincipalKind,
        name: &str,
    ) -> Result<Option<R>, AuthError> {
        match self.store.get_principal(kind, name).await? {
            Some(b) => decode_record(kind, name, &b).map(Some),
            None => Ok(None),
        }
    }

    /// A user as the admin API shows it: GUEST always exists (disabled until configured).
    pub async fn get_user_or_guest(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        match self.get_user(name).await? {
            None if name == GUEST => Ok(Some(UserRecord {
                name: GUEST.to_string(),
                disabled: true,
                ..Default::default()
            })),
            u => Ok(u),
        }
    }

    pub async fn get_role(&self, name: &str) -> Result<Option<RoleRecord>, AuthError> {
        self.get_record(PrincipalKind::Role, name).await
    }

    /// User names, sorted, without GUEST.
    pub async fn user_names(&self) -> Result<Vec<String>, AuthError> {
        let mut v = self.store.list_principals(PrincipalKind::User).await?;
        v.retain(|n| n != GUEST);
        v.sort();
        Ok(v)
    }

    pub async fn role_names(&self) -> Result<Vec<String>, AuthError> {
        let mut v = self.store.list_principals(PrincipalKind::Role).await?;
        v.sort();
        Ok(v)
    }

    /// The user's effective channels (with grant sequences) and roles.
    pub async fn effective(&self, user: &UserRecord) -> Result<UserCtx, AuthError> {
        let grants = self.user_doc_grants(&user.name).await?;
        Ok(self.compute(user, &grants, false).await?.0)
    }

    /// What documents grant a user, from the cache when it has them.
    async fn user_doc_grants(&self, name: &str) -> Result<Arc<DocGrants>, AuthError> {
        {
            let mut c = self.cache();
            c.catch_up(&*self.store);
            if let Some(g) = c.grants.get(name) {
                return Ok(g.clone());
            }
        }
        Ok(Arc::new(
            self.doc_grants(PrincipalKind::User, name)
                .await?
                .into_iter()
                .collect(),
        ))
    }

    /// What documents grant a principal (the sync function's `access()`/`role()`).
    async fn doc_grants(
        &self,
        kind: PrincipalKind,
        name: &str,
    ) -> Result<Vec<(String, syncgate_storage::DocGrant)>, AuthError> {
        Ok(self.store.doc_grants(kind, name).await?)
    }

    /// [`Principals::effective`], with where each channel comes from: `admin`, `token`,
    /// `role:NAME` or `doc:ID`.
    pub async fn effective_with_sources(
        &self,
        user: &UserRecord,
    ) -> Result<(UserCtx, BTreeMap<String, BTreeSet<String>>), AuthError> {
        let grants = self.user_doc_grants(&user.name).await?;
        self.compute(user, &grants, true).await
    }

    /// The effective identity of `user` given what documents grant it, with the sources of
    /// each channel when `with_sources`.
    async fn compute(
        &self,
        user: &UserRecord,
        doc_grants: &DocGrants,
        with_sources: bool,
    ) -> Result<(UserCtx, BTreeMap<String, BTreeSet<String>>), AuthError> {
        let mut channels = BTreeMap::new();
        let mut sources: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut source = |c: &str, from: &dyn Fn() -> String| {
            if with_sources {
                sources.entry(c.to_string()).or_default().insert(from());
            }
        };
        for (c, s) in &user.admin_channels {
            grant(&mut channels, c, *s);
            source(c, &|| "admin".into());
        }
        for (c, s) in &user.jwt_channels {
            grant(&mut channels, c, *s);
            source(c, &|| "token".into());
        }
        // channel → latest revocation sequence
        let mut revoked: BTreeMap<String, u64> = BTreeMap::new();
        let mut revoke = |c: &str, s: u64| {
            let e = revoked.entry(c.to_string()).or_insert(s);
            *e = (*e).max(s);
        };
        for (c, s) in &user.revoked_channels {
            revoke(c, *s);
        }
        // roles held → the sequence from which the user holds them (earliest grant)
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        for (r, s) in user.admin_roles.iter().chain(&user.jwt_roles) {
            grant(&mut held, r, *s);
        }
        // roles lost → sequence of the loss
        let mut lost_roles: BTreeMap<String, u64> = user.revoked_roles.clone();
        for (doc, g) in doc_grants {
            for (c, s) in &g.channels {
                grant(&mut channels, c, *s);
                source(c, &|| format!("doc:{doc}"));
            }
            for (c, s) in &g.revoked_channels {
                revoke(c, *s);
            }
            for (r, s) in &g.roles {
                grant(&mut held, r, *s);
            }
            for (r, s) in &g.revoked_roles {
                let e = lost_roles.entry(r.clone()).or_insert(*s);
                *e = (*e).max(*s);
            }
        }
        // a role's channels: its admin channels and what documents grant `role:NAME`
        let role_channels = async |r: &str| -> Result<(Grants, Grants), AuthError> {
            let mut chans = Grants::new();
            let mut gone = Grants::new();
            if let Some(role) = self.get_role(r).await? {
                chans.extend(role.admin_channels.clone());
                gone.extend(role.revoked_channels.clone());
            }
            for (_, g) in self.doc_grants(PrincipalKind::Role, r).await? {
                for (c, s) in g.channels {
                    grant(&mut chans, &c, s);
                }
                for (c, s) in g.revoked_channels {
                    let e = gone.entry(c).or_insert(s);
                    *e = (*e).max(s);
                }
            }
            Ok((chans, gone))
        };
        for (r, granted) in &held {
            let (chans, gone) = role_channels(r).await?;
            for (c, s) in &chans {
                grant(&mut channels, c, (*s).max(*granted));
                source(c, &|| format!("role:{r}"));
            }
            for (c, s) in &gone {
                // only a loss that happened while the user held the role
                if s > granted {
                    revoke(c, *s);
                }
            }
        }
        for (r, lost) in &lost_roles {
            if held.contains_key(r) {
                continue;
            }
            let (chans, _) = role_channels(r).await?;
            for c in chans.keys() {
                revoke(c, *lost);
            }
        }
        grant(&mut channels, PUBLIC_CHANNEL, 1);
        revoked.retain(|c, _| !channels.contains_key(c));
        Ok((
            UserCtx {
                name: (!user.is_guest()).then(|| user.name.clone()),
                channels: channels.into_iter().collect(),
                roles: held.into_keys().collect(),
                revoked: Arc::new(revoked),
            },
            sources,
        ))
    }

    /// The user with its effective identity, from the in-memory cache when possible.
    pub async fn load(&self, name: &str) -> Result<Option<Arc<LoadedUser>>, AuthError> {
        let (version, epoch, cached_grants) = {
            let mut c = self.cache();
            c.catch_up(&*self.store);
            if let Some(u) = c.users.get(name) {
                return Ok(Some(u.clone()));
            }
            (c.version, c.epoch, c.grants.get(name).cloned())
        };
        let Some(record) = self.get_user(name).await? else {
            return Ok(None);
        };
        let grants = match cached_grants {
            Some(g) => g,
            None => Arc::new(
                self.doc_grants(PrincipalKind::User, name)
                    .await?
                    .into_iter()
                    .collect(),
            ),
        };
        let ctx = self.compute(&record, &grants, false).await?.0;
        let loaded = Arc::new(LoadedUser { record, ctx });
        let mut c = self.cache();
        // kept only when nothing changed meanwhile (later changes are applied on the next
        // catch-up; earlier ones would be missing from what was read)
        if c.version == version && c.epoch == epoch {
            if c.users.len() >= CTX_CACHE_CAPACITY {
                c.users.clear();
            }
            if c.grants.len() >= CTX_CACHE_CAPACITY {
                c.grants.clear();
            }
            c.grants.entry(name.to_string()).or_insert(grants);
            c.users.insert(name.to_string(), loaded.clone());
        }
        Ok(Some(loaded))
    }

    fn invalidate_cache(&self) {
        let mut c = self.cache();
        c.users.clear();
        c.epoch += 1;
    }

    /// The admin API's JSON for a user (never the password or its hash).
    pub async fn user_json(&self, user: &UserRecord) -> Result<Value, AuthError> {
        let (ctx, sources) = self.effective_with_sources(user).await?;
        let mut v = json!({
            "name": user.name,
            "admin_channels": keys(&user.admin_channels),
            "all_channels": ctx.channels.keys().collect::<Vec<_>>(),
            "channel_sources": sources,
            "disabled": user.disabled,
        });
        if !user.is_guest() {
            v["email"] = json!(user.email.clone().unwrap_or_default());
            v["admin_roles"] = json!(keys(&user.admin_roles));
            v["roles"] = json!(ctx.roles);
        }
        if let Some(iss) = &user.jwt_issuer {
            v["jwt_issuer"] = json!(iss);
            v["jwt_roles"] = json!(keys(&user.jwt_roles));
            v["jwt_channels"] = json!(keys(&user.jwt_channels));
        }
        Ok(v)
    }

    pub fn role_json(&self, role: &RoleRecord) -> Value {
        let mut all: BTreeSet<&str> = role.admin_channels.keys().map(String::as_str).collect();
        all.insert(PUBLIC_CHANNEL);
        json!({
            "name": role.name,
            "admin_channels": keys(&role.admin_channels),
            "all_channels": all,
        })
    }

    // --- writing -----------------------------------------------------------------------------

    /// Read-modify-write of one user under the principal lock. `f` sees the current record and
    /// returns the record to store (grants with sequence 0 get this write's sequence), or `None`
    /// to store nothing. Returns the stored record and the ticket to wait for. The write is
    /// stored only if the record is still the one `f` saw (another node sharing the store may
    /// have changed it); otherwise `f` runs again on the new record, a few times at most.
    pub async fn modify_user<T>(
        &self,
        name: &str,
        f: impl FnMut(Option<&UserRecord>) -> Result<(Option<UserRecord>, T), AuthError>,
    ) -> Result<(Option<(UserRecord, Ticket)>, T), AuthError> {
        self.modify(PrincipalKind::User, name, f).await
    }

    /// Read-modify-write of one role (see [`Principals::modify_user`]).
    pub async fn modify_role<T>(
        &self,
        name: &str,
        f: impl FnMut(Option<&RoleRecord>) -> Result<(Option<RoleRecord>, T), AuthError>,
    ) -> Result<(Option<(RoleRecord, Ticket)>, T), AuthError> {
        self.modify(PrincipalKind::Role, name, f).await
    }

    /// The read-modify-write of [`Principals::modify_user`] for either kind of record.
    async fn modify<R: Record, T>(
        &self,
        kind: PrincipalKind,
        name: &str,
        mut f: impl FnMut(Option<&R>) -> Result<(Option<R>, T), AuthError>,
    ) -> Result<(Option<(R, Ticket)>, T), AuthError> {
        let _guard = self.write.lock().await;
        for _ in 0..MODIFY_ATTEMPTS {
            let bytes = self.store.get_principal(kind, name).await?;
            let current: Option<R> = match &bytes {
                Some(b) => Some(decode_record(kind, name, b)?),
                None => None,
            };
            let (new, out) = f(current.as_ref())?;
            let Some(mut rec) = new else {
                return Ok((None, out));
            };
            rec.set_name(name);
            if let Some(cur) = &current {
                rec.track_revocations(cur);
            }
            let mut stored = None;
            let written = self
                .store
                .put_principal_if(kind, name, bytes.as_deref(), &mut |seq| {
                    let mut r = rec.clone();
                    r.stamp(seq);
                    let bytes = serde_json::to_vec(&r).map_err(|e| e.to_string())?;
                    stored = Some(r);
                    Ok(bytes)
                })
                .await?;
            let Some((_, ticket)) = written else {
                continue; // changed meanwhile: decide again on what is stored now
            };
            self.invalidate_cache();
            return Ok((Some((stored.unwrap_or(rec), ticket)), out));
        }
        let what = match kind {
            PrincipalKind::User => "User",
            PrincipalKind::Role => "Role",
        };
        Err(AuthError::Conflict(format!(
            "{what} \"{}\" kept changing while this update was made; try again",
            show(name)
        )))
    }

    /// Applies an admin-API user body. `password_hash` is the hash of `upd.password`, computed
    /// by the caller off the reactor. Returns what happened and the ticket to wait for.
    pub async fn write_user(
        &self,
        name: &str,
        upd: &UserUpdate,
        password_hash: Option<String>,
        mode: WriteMode,
    ) -> Result<(UserWrite, Option<Ticket>), AuthError> {
        let guest = name == GUEST;
        if guest && mode == WriteMode::Create {
            return Err(AuthError::Conflict("User GUEST already exists".into()));
        }
        if guest && (upd.password.is_some() || upd.email.is_some()) {
            return Err(AuthError::BadRequest(
                "GUEST has no password or email; only 'disabled', 'admin_channels' and 'admin_roles' can be set".into(),
            ));
        }
        for _ in 0..MODIFY_ATTEMPTS {
            // the read-only check needs the current record's effective channels, read from the
            // store: before the read-modify-write, which decides again if the record changed
            let seen = self.get_user(name).await?;
            let ctx = self
                .effective(seen.as_ref().unwrap_or(&UserRecord::default()))
                .await?;
            let (written, w) = self
                .modify_user(name, |cur| {
                    if cur != seen.as_ref() {
                        return Ok((None, None)); // changed since it was read: check again
                    }
                    self.decide_user(name, cur, upd, &password_hash, mode, &ctx)
                        .map(|(rec, w)| (rec, Some(w)))
                })
                .await?;
            if let Some(w) = w {
                return Ok((w, written.map(|(_, t)| t)));
            }
        }
        Err(AuthError::Conflict(format!(
            "User \"{}\" kept changing while this update was made; try again",
            show(name)
        )))
    }

    /// The record [`Principals::write_user`] stores, from the current one (`cur`, whose
    /// effective identity is `ctx`), and what happened.
    fn decide_user(
        &self,
        name: &str,
        cur: Option<&UserRecord>,
        upd: &UserUpdate,
        password_hash: &Option<String>,
        mode: WriteMode,
        ctx: &UserCtx,
    ) -> Result<(Option<UserRecord>, UserWrite), AuthError> {
        let guest = name == GUEST;
        {
            let mut w = UserWrite::default();
            let (mut rec, empty) = match cur {
                Some(_) if mode == WriteMode::Create => {
                    return Err(AuthError::Conflict(format!(
                        "User \"{}\" already exists",
                        show(name)
                    )))
                }
                Some(c) => (c.clone(), UserRecord::default()),
                None => {
                    if !guest && upd.password.is_none() {
                        return Err(AuthError::BadRequest(
                            "A password is required to create a user".into(),
                        ));
                    }
                    // GUEST always "exists": writing it is an update
                    w.created = !guest;
                    let mut fresh = UserRecord::new(name);
                    // GUEST without a record is disabled; a first PUT starts from that
                    fresh.disabled = guest;
                    (fresh, UserRecord::default())
                }
            };
            let before = cur.unwrap_or(&empty);
            self.check_read_only(before, upd, ctx)?;
            if let Some(c) = &upd.admin_channels {
                rec.admin_channels = regrant(&rec.admin_channels, c);
            }
            if let Some(r) = &upd.admin_roles {
                rec.admin_roles = regrant(&rec.admin_roles, r);
            }
            if let Some(e) = &upd.email {
                rec.email = (!e.is_empty()).then(|| e.clone());
            }
            if let Some(d) = upd.disabled {
                if d && !rec.disabled {
                    // a disabled user's sessions stay dead after re-enabling
                    rec.rotate_sessions();
                    w.sessions_invalidated = true;
                }
                rec.disabled = d;
            }
            if let Some(h) = &password_hash {
                rec.password_hash = Some(h.clone());
                // any update containing a password logs the user out everywhere
                rec.rotate_sessions();
                w.sessions_invalidated = true;
            }
            w.changed = w.created || cur != Some(&rec);
            Ok((w.changed.then_some(rec), w))
        }
    }

    /// Read-only fields may be sent back unchanged (so a GET body can be PUT), never changed.
    fn check_read_only(
        &self,
        cur: &UserRecord,
        upd: &UserUpdate,
        ctx: &UserCtx,
    ) -> Result<(), AuthError> {
        let strip = |s: &BTreeSet<String>| -> BTreeSet<String> {
            s.iter().filter(|c| *c != PUBLIC_CHANNEL).cloned().collect()
        };
        if let Some(all) = &upd.all_channels {
            let current: BTreeSet<String> = ctx.channels.keys().cloned().collect();
            if strip(all) != strip(&current) {
                return Err(AuthError::BadRequest("all_channels is read-only".into()));
            }
        }
        if let Some(r) = &upd.roles {
            if *r != ctx.roles {
                return Err(AuthError::BadRequest("roles is read-only".into()));
            }
        }
        let same = |sent: &Option<BTreeSet<String>>, cur: &Grants| {
            sent.as_ref().is_none_or(|s| s.iter().eq(cur.keys()))
        };
        if upd
            .jwt_issuer
            .as_ref()
            .is_some_and(|i| Some(i) != cur.jwt_issuer.as_ref())
            || !same(&upd.jwt_roles, &cur.jwt_roles)
            || !same(&upd.jwt_channels, &cur.jwt_channels)
        {
            return Err(AuthError::BadRequest(
                "jwt_issuer, jwt_roles and jwt_channels are read-only".into(),
            ));
        }
        Ok(())
    }

    /// Applies an admin-API role body.
    pub async fn write_role(
        &self,
        name: &str,
        upd: &RoleUpdate,
        mode: WriteMode,
    ) -> Result<(bool, Option<Ticket>), AuthError> {
        let (written, created) = self
            .modify_role(name, |cur| {
                let created = cur.is_none();
                if !created && mode == WriteMode::Create {
                    return Err(AuthError::Conflict(format!(
                        "Role \"{}\" already exists",
                        show(name)
                    )));
                }
                let mut rec = cur.cloned().unwrap_or_else(|| RoleRecord {
                    name: name.to_string(),
                    ..Default::default()
                });
                if let Some(all) = &upd.all_channels {
                    let cur_set: BTreeSet<&String> = rec.admin_channels.keys().collect();
                    let sent: BTreeSet<&String> =
                        all.iter().filter(|c| *c != PUBLIC_CHANNEL).collect();
                    if cur_set != sent {
                        return Err(AuthError::BadRequest("all_channels is read-only".into()));
                    }
                }
                if let Some(c) = &upd.admin_channels {
                    rec.admin_channels = regrant(&rec.admin_channels, c);
                }
                let changed = created || cur != Some(&rec);
                Ok((changed.then_some(rec), created))
            })
            .await?;
        Ok((created, written.map(|(_, t)| t)))
    }

    /// Deletes a user (not GUEST). 404 if absent.
    pub async fn delete_user(&self, name: &str) -> Result<Ticket, AuthError> {
        if name == GUEST {
            return Err(AuthError::MethodNotAllowed(
                "The GUEST user cannot be deleted, only disabled with a PUT".into(),
            ));
        }
        let _guard = self.write.lock().await;
        if self.get_user(name).await?.is_none() {
            return Err(AuthError::NotFound(format!(
                "No such user \"{}\"",
                show(name)
            )));
        }
        let t = self
            .store
            .delete_principal(PrincipalKind::User, name)
            .await?;
        self.invalidate_cache();
        Ok(t)
    }

    pub async fn delete_role(&self, name: &str) -> Result<Ticket, AuthError> {
        let _guard = self.write.lock().await;
        if self.get_role(name).await?.is_none() {
            return Err(AuthError::NotFound(format!(
                "No such role \"{}\"",
                show(name)
            )));
        }
        let t = self
            .store
            .delete_principal(PrincipalKind::Role, name)
            .await?;
        self.invalidate_cache();
        Ok(t)
    }

    /// Invalidates every session of a user (rotates its session uuid). False if no such user.
    pub async fn rotate_sessions(&self, name: &str) -> Result<bool, AuthError> {
        let (w, ()) = self
            .modify_user(name, |cur| {
                Ok((
                    cur.map(|c| {
                        let mut c = c.clone();
                        c.rotate_sessions();
                        c
                    }),
                    (),
                ))
            })
            .await?;
        Ok(w.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncgate_storage::Store;

    fn principals() -> (tempfile::TempDir, Principals) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db: Arc<dyn DatabaseStore> = store.database("db").unwrap();
        (dir, Principals::new(db))
    }

    /// Another writer (another node sharing the store) changes the user between the read and
    /// the write of a read-modify-write: the write does not overwrite it; the update is decided
    /// again on the new record, so both changes are kept.
    #[tokio::test]
    async fn a_change_made_meanwhile_is_not_overwritten() {
        let (_d, p) = principals();
        p.write_user(
            "ann",
            &upd(json!({"password": "pw-ann-1", "admin_channels": ["a"]})),
            Some("$h".into()),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let mut calls = 0;
        let (written, ()) = p
            .modify_user("ann", |cur| {
                calls += 1;
                if calls == 1 {
                    // the other node: adds channel "b" behind this update's back
                    let mut other = cur.unwrap().clone();
                    other.admin_channels.insert("b".into(), 0);
                    let bytes = serde_json::to_vec(&other).unwrap();
                    // the embedded store's future is complete when returned
                    let mut build = |_| Ok(bytes.clone());
                    let write = p
                        .store()
                        .put_principal(PrincipalKind::User, "ann", &mut build);
                    let std::task::Poll::Ready(r) = std::future::Future::poll(
                        std::pin::pin!(write),
                        &mut std::task::Context::from_waker(std::task::Waker::noop()),
                    ) else {
                        panic!("sled answers at once");
                    };
                    r.unwrap();
                }
                let mut rec = cur.unwrap().clone();
                rec.email = Some("ann@example.com".into());
                Ok((Some(rec), ()))
            })
            .await
            .unwrap();
        assert!(written.is_some());
        assert_eq!(
            calls, 2,
            "decided again on the record the other writer stored"
        );
        let ann = p.get_user("ann").await.unwrap().unwrap();
        assert_eq!(ann.email.as_deref(), Some("ann@example.com"));
        assert!(
            ann.admin_channels.contains_key("b"),
            "{:?}",
            ann.admin_channels
        );
        assert!(ann.admin_channels.contains_key("a"));
    }

    fn upd(v: Value) -> UserUpdate {
        UserUpdate::from_json(v).unwrap()
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "foo#bar",
            "foo?bar",
            "$foo$bar",
            "_sync-foobar",
            "0%7C59",
            "Ünï",
            "a b",
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "x".repeat(240);
        for bad in ["", "a/b", "a:b", "a,b", "a`b", "$$", long.as_str()] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"x".repeat(239)).is_ok());
    }

    #[test]
    fn emails() {
        assert!(validate_email("a@b.c").is_ok());
        for bad in ["a", "@b", "a@", "a@b@c", "a b@c"] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strict_bodies() {
        let e = UserUpdate::from_json(json!({"name":"a","passwrd":"x"})).unwrap_err();
        assert!(e.to_string().contains("unknown field `passwrd`"), "{e}");
        let e = UserUpdate::from_json(json!({"password": 12345})).unwrap_err();
        assert!(!e.to_string().contains("12345"), "{e}");
        assert!(UserUpdate::from_json(json!({"email":"nope"})).is_err());
        assert!(UserUpdate::from_json(json!({"admin_channels":"a"})).is_err());
        assert!(UserUpdate::from_json(json!([])).is_err());
        assert!(RoleUpdate::from_json(json!({"admin_roles":[]})).is_err());
        let u = upd(json!({"password":"secret-pw"}));
        assert!(!format!("{u:?}").contains("secret-pw"));
    }

    /// Writes document `id` (child of `parent`) granting `user` the `channels`.
    async fn grant_doc(
        p: &Principals,
        id: &str,
        parent: Option<&str>,
        user: &str,
        channels: &[&str],
    ) -> String {
        let body = json!({"n": id});
        let mut access = syncgate_storage::RevAccess::default();
        if !channels.is_empty() {
            access.channels.insert(
                user.to_string(),
                channels.iter().map(|c| c.to_string()).collect(),
            );
        }
        let w = syncgate_storage::DocWrite::Edit {
            id: id.into(),
            parent: parent.map(Into::into),
            deleted: false,
            body: serde_json::to_vec(&body).unwrap(),
            canonical: syncgate_storage::canonical_json(&body),
            attachments: vec![],
            channels: vec![],
            access,
            revs_limit: 1000,
            must_exist: false,
        };
        let (mut r, _) = p.store().write_docs(vec![w]).await.unwrap();
        r.remove(0).unwrap().rev
    }

    async fn channel_names(p: &Principals, name: &str) -> Vec<String> {
        let u = p.load(name).await.unwrap().unwrap();
        u.ctx.channels.keys().cloned().collect()
    }

    #[tokio::test]
    async fn cached_identities_follow_document_grants_one_change_at_a_time() {
        let (_d, p) = principals();
        for n in ["u", "v"] {
            p.write_user(
                n,
                &upd(json!({"password":"pw"})),
                Some("$h".into()),
                WriteMode::Create,
            )
            .await
            .unwrap();
        }
        let d1 = grant_doc(&p, "d1", None, "u", &["a"]).await;
        assert_eq!(channel_names(&p, "u").await, ["!", "a"]);
        let v_before = p.load("v").await.unwrap().unwrap();
        grant_doc(&p, "d2", None, "u", &["b"]).await;
        assert_eq!(channel_names(&p, "u").await, ["!", "a", "b"]);
        // d1 no longer grants anything: a is revoked, b stays
        grant_doc(&p, "d1", Some(&d1), "u", &[]).await;
        let u = p.load("u").await.unwrap().unwrap();
        assert_eq!(u.ctx.channels.keys().collect::<Vec<_>>(), ["!", "b"]);
        assert!(u.ctx.revoked.contains_key("a"), "{:?}", u.ctx.revoked);
        // the other user's identity was not recomputed: the grants changed only u's
        assert!(Arc::ptr_eq(&v_before, &p.load("v").await.unwrap().unwrap()));
        // what the cache caught up to is what a fresh computation from the store gives
        let fresh = Principals::new(p.store().clone());
        assert_eq!(fresh.load("u").await.unwrap().unwrap().ctx, u.ctx);
        // a grant to v reaches v
        grant_doc(&p, "d3", None, "v", &["c"]).await;
        assert_eq!(channel_names(&p, "v").await, ["!", "c"]);
        assert_eq!(
            fresh.load("v").await.unwrap().unwrap().ctx,
            p.load("v").await.unwrap().unwrap().ctx
        );
    }

    async fn fresh(p: &Principals) -> Arc<LoadedUser> {
        Principals::new(p.store().clone())
            .load("u")
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_channel_grant_is_added_to_the_cached_identity_in_place() {
        let (_d, p) = principals();
        p.write_user(
            "u",
            &upd(json!({"password":"pw", "admin_channels": ["adm", "gone"]})),
            Some("$h".into()),
            WriteMode::Create,
        )
        .await
        .unwrap();
        // "gone" revoked by the admin: recorded as revoked until something grants it again
        p.write_user(
            "u",
            &upd(json!({"admin_channels": ["adm"]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let before = p.load("u").await.unwrap().unwrap();
        assert!(before.ctx.revoked.contains_key("gone"));
        // grants of new documents (a channel held already, a revoked one, new ones): each step
        // is what a computation from scratch gives
        let d1 = grant_doc(&p, "d1", None, "u", &["adm", "gone", "a"]).await;
        assert_eq!(p.load("u").await.unwrap().unwrap().ctx, fresh(&p).await.ctx);
        assert_eq!(channel_names(&p, "u").await, ["!", "a", "adm", "gone"]);
        assert!(!p
            .load("u")
            .await
            .unwrap()
            .unwrap()
            .ctx
            .revoked
            .contains_key("gone"));
        // "adm" keeps the admin grant's earlier sequence
        assert_eq!(
            p.load("u").await.unwrap().unwrap().ctx.channels["adm"],
            before.ctx.channels["adm"]
        );
        let d2 = grant_doc(&p, "d2", None, "u", &["b"]).await;
        assert_eq!(p.load("u").await.unwrap().unwrap().ctx, fresh(&p).await.ctx);
        // a changed and a withdrawn grant are recomputed
        let d1 = grant_doc(&p, "d1", Some(&d1), "u", &["a"]).await;
        assert_eq!(p.load("u").await.unwrap().unwrap().ctx, fresh(&p).await.ctx);
        grant_doc(&p, "d1", Some(&d1), "u", &[]).await;
        let u = p.load("u").await.unwrap().unwrap();
        assert_eq!(u.ctx, fresh(&p).await.ctx);
        assert_eq!(channel_names(&p, "u").await, ["!", "adm", "b"]);

        // in place, not recomputed: the cached user record is kept as it was, even when the
        // stored record changed behind the cache's back (written here around `Principals`)
        let mut rec = u.record.clone();
        rec.admin_channels.insert("sneaked".into(), 1);
        let bytes = serde_json::to_vec(&rec).unwrap();
        p.store()
            .put_principal(PrincipalKind::User, "u", &mut |_| Ok(bytes.clone()))
            .await
            .unwrap();
        grant_doc(&p, "d3", None, "u", &["c"]).await;
        assert_eq!(channel_names(&p, "u").await, ["!", "adm", "b", "c"]);
        // a withdrawn grant recomputes: the stored record is read again
        grant_doc(&p, "d2", Some(&d2), "u", &[]).await;
        assert_eq!(channel_names(&p, "u").await, ["!", "adm", "c", "sneaked"]);
    }

    #[tokio::test]
    async fn revocations_are_recorded_with_their_sequence() {
        let (_d, p) = principals();
        p.write_role(
            "r",
            &RoleUpdate::from_json(json!({"admin_channels":["rc","rc2"]})).unwrap(),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let u = upd(json!({"password":"pw","admin_channels":["a","b"],"admin_roles":["r"]}));
        p.write_user("u", &u, Some("$h".into()), WriteMode::Create)
            .await
            .unwrap();
        // drop channel b directly
        p.write_user(
            "u",
            &upd(json!({"admin_channels":["a"]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let s_b = p.get_user("u").await.unwrap().unwrap().seq;
        // the role loses rc2
        p.write_role(
            "r",
            &RoleUpdate::from_json(json!({"admin_channels":["rc"]})).unwrap(),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let s_rc2 = p.get_role("r").await.unwrap().unwrap().seq;
        let ctx = p
            .effective(&p.get_user("u").await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(ctx.revoked.get("b"), Some(&s_b));
        assert_eq!(ctx.revoked.get("rc2"), Some(&s_rc2));
        assert!(ctx.channels.contains_key("rc") && !ctx.revoked.contains_key("rc"));
        // losing the role revokes its channels at that write
        p.write_user(
            "u",
            &upd(json!({"admin_roles":[]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let s_role = p.get_user("u").await.unwrap().unwrap().seq;
        let ctx = p
            .effective(&p.get_user("u").await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(ctx.revoked.get("rc"), Some(&s_role));
        // granting b again clears its revocation
        p.write_user(
            "u",
            &upd(json!({"admin_channels":["a","b"]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        let ctx = p
            .effective(&p.get_user("u").await.unwrap().unwrap())
            .await
            .unwrap();
        assert!(!ctx.revoked.contains_key("b") && ctx.channels.contains_key("b"));
    }

    #[tokio::test]
    async fn create_update_partial_and_grant_sequences() {
        let (_d, p) = principals();
        let u = upd(json!({"password":"pw1","admin_channels":["a","b"],"email":"x@y.z"}));
        let (w, t) = p
            .write_user("alice", &u, Some("$hash1".into()), WriteMode::Create)
            .await
            .unwrap();
        assert!(w.created && w.changed && t.is_some());
        let rec = p.get_user("alice").await.unwrap().unwrap();
        let s1 = rec.seq;
        assert!(s1 > 0);
        assert_eq!(
            rec.admin_channels,
            Grants::from([("a".into(), s1), ("b".into(), s1)])
        );
        assert!(!format!("{rec:?}").contains("$hash1"));
        // POST again: 409
        assert!(matches!(
            p.write_user("alice", &u, Some("$h".into()), WriteMode::Create)
                .await,
            Err(AuthError::Conflict(_))
        ));
        // partial update: channels kept, email unchanged, new channel gets the new seq
        let (w, _) = p
            .write_user(
                "alice",
                &upd(json!({"admin_channels":["b","c"]})),
                None,
                WriteMode::Upsert,
            )
            .await
            .unwrap();
        assert!(!w.created && w.changed && !w.sessions_invalidated);
        let rec2 = p.get_user("alice").await.unwrap().unwrap();
        assert!(rec2.seq > s1);
        assert_eq!(rec2.admin_channels["b"], s1);
        assert_eq!(rec2.admin_channels["c"], rec2.seq);
        assert_eq!(rec2.email.as_deref(), Some("x@y.z"));
        assert_eq!(rec2.password_hash.as_deref(), Some("$hash1"));
        assert_eq!(rec2.session_uuid, rec.session_uuid);
        // unchanged PUT stores nothing
        let (w, t) = p
            .write_user(
                "alice",
                &upd(json!({"admin_channels":["b","c"]})),
                None,
                WriteMode::Upsert,
            )
            .await
            .unwrap();
        assert!(!w.changed && t.is_none());
        // [] clears
        p.write_user(
            "alice",
            &upd(json!({"admin_channels":[]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert!(p
            .get_user("alice")
            .await
            .unwrap()
            .unwrap()
            .admin_channels
            .is_empty());
        // password update rotates the session uuid
        let (w, _) = p
            .write_user(
                "alice",
                &upd(json!({"password":"pw2"})),
                Some("$hash2".into()),
                WriteMode::Upsert,
            )
            .await
            .unwrap();
        assert!(w.sessions_invalidated);
        assert_ne!(
            p.get_user("alice").await.unwrap().unwrap().session_uuid,
            rec.session_uuid
        );
        // create without password
        assert!(matches!(
            p.write_user("bob", &upd(json!({})), None, WriteMode::Upsert)
                .await,
            Err(AuthError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn effective_channels_and_read_only_fields() {
        let (_d, p) = principals();
        p.write_role(
            "r",
            &RoleUpdate::from_json(json!({"admin_channels":["rc"]})).unwrap(),
            WriteMode::Create,
        )
        .await
        .unwrap();
        p.write_user(
            "u",
            &upd(json!({"password":"pw1","admin_channels":["a"],"admin_roles":["r","ghost"]})),
            Some("$h".into()),
            WriteMode::Create,
        )
        .await
        .unwrap();
        let rec = p.get_user("u").await.unwrap().unwrap();
        let ctx = p.effective(&rec).await.unwrap();
        assert_eq!(ctx.name.as_deref(), Some("u"));
        assert_eq!(ctx.channels.keys().collect::<Vec<_>>(), ["!", "a", "rc"]);
        assert_eq!(
            ctx.roles,
            BTreeSet::from(["ghost".to_string(), "r".to_string()])
        );
        // the role channel is visible from when the role was granted (later than the role's own grant)
        assert_eq!(ctx.channels["rc"], rec.admin_roles["r"]);
        let body = p.user_json(&rec).await.unwrap();
        assert_eq!(body["all_channels"], json!(["!", "a", "rc"]));
        assert!(body.get("password").is_none());
        assert!(!body.to_string().contains("$h"));
        // a GET body can be PUT back
        let mut back = body.clone();
        back.as_object_mut().unwrap().remove("name");
        let (w, _) = p
            .write_user("u", &upd(back), None, WriteMode::Upsert)
            .await
            .unwrap();
        assert!(!w.changed);
        // changing read-only fields is refused
        for bad in [
            json!({"all_channels":["x"]}),
            json!({"roles":[]}),
            json!({"jwt_issuer":"i"}),
        ] {
            assert!(
                matches!(
                    p.write_user("u", &upd(bad.clone()), None, WriteMode::Upsert)
                        .await,
                    Err(AuthError::BadRequest(_))
                ),
                "{bad}"
            );
        }
        // the cache sees role changes
        assert_eq!(p.load("u").await.unwrap().unwrap().ctx.channels.len(), 3);
        p.write_role(
            "r",
            &RoleUpdate::from_json(json!({"admin_channels":["rc","rd"]})).unwrap(),
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert!(p
            .load("u")
            .await
            .unwrap()
            .unwrap()
            .ctx
            .channels
            .contains_key("rd"));
        p.delete_role("r").await.unwrap();
        assert!(!p
            .load("u")
            .await
            .unwrap()
            .unwrap()
            .ctx
            .channels
            .contains_key("rc"));
    }

    #[tokio::test]
    async fn guest_rules() {
        let (_d, p) = principals();
        // absent GUEST: shown disabled; a first PUT of channels alone keeps it disabled
        assert!(p.get_user_or_guest(GUEST).await.unwrap().unwrap().disabled);
        p.write_user(
            GUEST,
            &upd(json!({"admin_channels":["c"]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert!(p.get_user(GUEST).await.unwrap().unwrap().disabled);
        assert!(matches!(
            p.write_user(
                GUEST,
                &upd(json!({"disabled":false})),
                None,
                WriteMode::Create
            )
            .await,
            Err(AuthError::Conflict(_))
        ));
        assert!(p
            .write_user(
                GUEST,
                &upd(json!({"password":"abc"})),
                Some("$h".into()),
                WriteMode::Upsert
            )
            .await
            .is_err());
        p.write_user(
            GUEST,
            &upd(json!({"disabled":false,"admin_channels":["g"]})),
            None,
            WriteMode::Upsert,
        )
        .await
        .unwrap();
        assert!(p.user_names().await.unwrap().is_empty());
        let g = p.load(GUEST).await.unwrap().unwrap();
        assert_eq!(g.ctx.name, None);
        assert!(g.ctx.channels.contains_key("g"));
        assert!(matches!(
            p.delete_user(GUEST).await,
            Err(AuthError::MethodNotAllowed(_))
        ));
    }
}
