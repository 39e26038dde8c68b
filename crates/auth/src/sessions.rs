//! TTL sessions: ids, keyed-hash storage, expiry with sliding refresh, one-time sessions,
//! cookies, garbage collection.
//!
//! A session id is 160 bits from the OS CSPRNG as 40 lower-case hex characters. The store never
//! sees it: records are keyed by HMAC-SHA256(server key, id), so a copied data directory holds
//! no usable session. A record names the user and copies the user's `session_uuid`; rotating
//! that uuid (password change, disable, revoke-all) invalidates every session of the user at
//! once. Expiry is checked on every use (sled has no TTL) and expired records are collected in
//! the background.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use syncgate_storage::{DatabaseStore, Ticket};

use crate::AuthError;

/// Length of a session id in hex characters (160 bits).
pub const SESSION_ID_HEX: usize = 40;
/// Lifetime of a one-time session.
pub const ONE_TIME_TTL: Duration = Duration::from_secs(300);
/// Longest accepted TTL (about 30 years; keeps expiry arithmetic far from overflow).
pub const MAX_TTL_SECS: u64 = 1_000_000_000;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored session (keyed by the hash of its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub username: String,
    /// Absolute expiry, ms since the epoch.
    pub expires_ms: u64,
    /// The TTL it was created with, ms.
    pub ttl_ms: u64,
    /// The user's `session_uuid` when the session was made.
    pub session_uuid: String,
    #[serde(default)]
    pub one_time: bool,
}

impl SessionRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms
    }

    /// When the session was last (re)issued.
    pub fn issued_ms(&self) -> u64 {
        self.expires_ms.saturating_sub(self.ttl_ms)
    }

    /// Sliding refresh: more than 10 % of the TTL has passed since the last issue.
    pub fn needs_refresh(&self, now_ms: u64) -> bool {
        !self.one_time && now_ms.saturating_sub(self.issued_ms()) > self.ttl_ms / 10
    }

    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_ms)
    }
}

/// A fresh session id: 20 bytes from the OS CSPRNG, lower-case hex.
pub fn new_session_id() -> String {
    let mut b = [0u8; SESSION_ID_HEX / 2];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Whether a string has the shape of a session id (checked before any lookup).
pub fn is_session_id(s: &str) -> bool {
    s.len() == SESSION_ID_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One database's sessions.
pub struct Sessions {
    store: Arc<dyn DatabaseStore>,
    /// HMAC key for storage keys (the server's secret).
    key: Vec<u8>,
    /// Orders read-modify-writes of session records against deletions within the process: a
    /// one-time session is taken once, and a sliding refresh never writes back a session that
    /// a revocation deleted meanwhile.
    write: tokio::sync::Mutex<()>,
}

impl Sessions {
    pub fn new(store: Arc<dyn DatabaseStore>, key: Vec<u8>) -> Sessions {
        Sessions {
            store,
            key,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The storage key of a session id.
    fn storage_key(&self, id: &str) -> String {
        // HMAC accepts keys of any length
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"syncgate").expect("key"));
        mac.update(id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Creates a session for `username` and returns its id.
    pub async fn create(
        &self,
        username: &str,
        session_uuid: &str,
        ttl: Duration,
        one_time: bool,
        now_ms: u64,
    ) -> Result<(String, SessionRecord, Ticket), AuthError> {
        let ttl_ms = ttl.as_millis().min(u128::from(MAX_TTL_SECS) * 1000) as u64;
        let rec = SessionRecord {
            username: username.to_string(),
            expires_ms: now_ms + ttl_ms,
            ttl_ms,
            session_uuid: session_uuid.to_string(),
            one_time,
        };
        let id = new_session_id();
        let t = self.put(&id, &rec).await?;
        Ok((id, rec, t))
    }

    /// The record of a session id (None for an unknown or malformed id).
    pub async fn get(&self, id: &str) -> Result<Option<SessionRecord>, AuthError> {
        if !is_session_id(id) {
            return Ok(None);
        }
        match self.store.get_session(&self.storage_key(id)).await? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                AuthError::Internal(format!("stored session record does not decode: {e}"))
            }),
            None => Ok(None),
        }
    }

    pub async fn put(&self, id: &str, rec: &SessionRecord) -> Result<Ticket, AuthError> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| AuthError::Internal(format!("session encoding: {e}")))?;
        Ok(self.store.put_session(&self.storage_key(id), bytes).await?)
    }

    /// Deletes a session; false if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, AuthError> {
        Ok(self.delete_durably(id).await?.is_some())
    }

    /// Sliding refresh: stores the record with its new expiry unless the session was deleted
    /// since it was read (then nothing is written and the answer is false).
    pub async fn refresh(&self, id: &str, rec: &SessionRecord) -> Result<bool, AuthError> {
        let _g = self.write.lock().await;
        if self.get(id).await?.is_none() {
            return Ok(false);
        }
        self.put(id, rec).await?;
        Ok(true)
    }

    /// Deletes one session; the ticket to wait for before acknowledging (None if absent).
    pub async fn delete_durably(&self, id: &str) -> Result<Option<Ticket>, AuthError> {
        let _g = self.write.lock().await;
        self.delete_locked(id).await
    }

    async fn delete_locked(&self, id: &str) -> Result<Option<Ticket>, AuthError> {
        if self.get(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.store.delete_sessions(&[self.storage_key(id)]).await?,
        ))
    }

    /// Consumes a one-time session: true for the first caller only.
    pub async fn take_one_time(&self, id: &str) -> Result<bool, AuthError> {
        let _g = self.write.lock().await;
        Ok(self.delete_locked(id).await?.is_some())
    }

    /// Deletes every stored session for which `dead` is true; returns how many.
    pub async fn delete_where(
        &self,
        dead: impl FnMut(&SessionRecord) -> bool,
    ) -> Result<usize, AuthError> {
        Ok(self.delete_where_durably(dead).await?.0)
    }

    /// As [`Sessions::delete_where`], with a ticket that covers the deletion and every write
    /// applied before it (wait for it before acknowledging a revocation).
    pub async fn delete_where_durably(
        &self,
        mut dead: impl FnMut(&SessionRecord) -> bool,
    ) -> Result<(usize, Ticket), AuthError> {
        let _g = self.write.lock().await;
        let keys: Vec<String> = self
            .store
            .list_sessions()
            .await?
            .into_iter()
            .filter(|(_, v)| match serde_json::from_slice::<SessionRecord>(v) {
                Ok(r) => dead(&r),
                Err(_) => true,
            })
            .map(|(k, _)| k)
            .collect();
        if !keys.is_empty() {
            let t = self.store.delete_sessions(&keys).await?;
            return Ok((keys.len(), t));
        }
        // an empty batch still yields a ticket ordered after every earlier write
        Ok((0, self.store.delete_sessions(&[]).await?))
    }

    /// Deletes every session of a user.
    pub async fn delete_for_user(&self, username: &str) -> Result<usize, AuthError> {
        self.delete_where(|r| r.username == username).await
    }

    pub async fn count(&self) -> Result<usize, AuthError> {
        Ok(self.store.list_sessions().await?.len())
    }

    /// Every stored session as (handle, storage key, record). A record that does not decode is
    /// an error naming its handle.
    pub(crate) async fn stored(&self) -> Result<Vec<(String, String, SessionRecord)>, AuthError> {
        self.store
            .list_sessions()
            .await?
            .into_iter()
            .map(|(k, v)| match serde_json::from_slice::<SessionRecord>(&v) {
                Ok(r) => Ok((handle(&k), k, r)),
                Err(e) => Err(AuthError::Internal(format!(
                    "session record {} does not decode: {e}",
                    handle(&k)
                ))),
            })
            .collect()
    }

    /// A user's sessions that would be accepted now (not expired, issued under the user's
    /// current session uuid), as (handle, record).
    pub async fn live_for_user(
        &self,
        username: &str,
        session_uuid: &str,
        now_ms: u64,
    ) -> Result<Vec<(String, SessionRecord)>, AuthError> {
        Ok(self
            .stored()
            .await?
            .into_iter()
            .filter(|(_, _, r)| {
                r.username == username && !r.expired(now_ms) && r.session_uuid == session_uuid
            })
            .map(|(h, _, r)| (h, r))
            .collect())
    }

    /// Deletes the session of `username` with this handle; the ticket to wait for (None if
    /// there is no such session).
    pub async fn delete_by_handle(
        &self,
        username: &str,
        h: &str,
    ) -> Result<Option<Ticket>, AuthError> {
        let _g = self.write.lock().await;
        let Some((_, key, _)) = self
            .stored()
            .await?
            .into_iter()
            .find(|(hh, _, r)| r.username == username && hh == h)
        else {
            return Ok(None);
        };
        Ok(Some(self.store.delete_sessions(&[key]).await?))
    }
}

/// Length of a session handle in hex characters.
pub const HANDLE_HEX: usize = 32;

/// The handle of a stored session: how an operator names a session without knowing it.
///
/// The store keys a session by HMAC-SHA256(server key, session id) and the id exists only in
/// the client's cookie. A handle is the first 128 bits of
/// SHA-256("syncgate session handle\0" ‖ storage key), as 32 lower-case hex characters: a
/// one-way function of a value that is itself a one-way function of the id, so it cannot be
/// turned back into a cookie nor into the storage key. It is stable for the session's life (a
/// sliding refresh rewrites the record under the same key), and its length keeps it apart from
/// a 40-character session id.
pub fn handle(storage_key: &str) -> String {
    let mut h = Sha256::new();
    Digest::update(&mut h, b"syncgate session handle\0");
    Digest::update(&mut h, storage_key.as_bytes());
    hex::encode(&h.finalize()[..HANDLE_HEX / 2])
}

/// Whether a path segment has the shape of a handle.
pub fn is_handle(s: &str) -> bool {
    s.len() == HANDLE_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// How this database's session cookie is made (fixed per database, so a refresh re-issues the
/// cookie with exactly the attributes of the login).
#[derive(Debug, Clone)]
pub struct CookieSettings {
    pub name: String,
    /// `/<db>`.
    pub path: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl CookieSettings {
    fn attributes(&self, out: &mut String) {
        if self.http_only {
            out.push_str("; HttpOnly");
        }
        out.push_str("; SameSite=");
        out.push_str(self.same_site.as_str());
        if self.secure {
            out.push_str("; Secure");
        }
    }

    /// `Set-Cookie` value for a session.
    pub fn set_cookie(&self, id: &str, expires: SystemTime) -> String {
        let mut c = format!(
            "{}={}; Path={}; Expires={}",
            self.name,
            id,
            self.path,
            httpdate::fmt_http_date(expires)
        );
        self.attributes(&mut c);
        c
    }

    /// `Set-Cookie` value that removes the cookie (logout).
    pub fn clear_cookie(&self) -> String {
        let mut c = format!(
            "{}=; Path={}; Expires={}; Max-Age=0",
            self.name,
            self.path,
            httpdate::fmt_http_date(UNIX_EPOCH)
        );
        self.attributes(&mut c);
        c
    }
}

/// RFC 3339 UTC, second precision (`2026-01-21T15:24:44Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncgate_storage::Store;

    fn sessions() -> (tempfile::TempDir, Sessions, Arc<dyn DatabaseStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db: Arc<dyn DatabaseStore> = store.database("db").unwrap();
        (dir, Sessions::new(db.clone(), b"k".to_vec()), db)
    }

    #[tokio::test]
    async fn a_refresh_never_brings_back_a_deleted_session() {
        let (_d, s, _) = sessions();
        let (id, mut rec, _) = s
            .create("u", "uuid", Duration::from_secs(60), false, now_ms())
            .await
            .unwrap();
        assert!(s.delete(&id).await.unwrap());
        rec.expires_ms += 1000;
        assert!(!s.refresh(&id, &rec).await.unwrap());
        assert!(s.get(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn ids_are_40_hex_and_only_hashes_are_stored() {
        let (_d, s, db) = sessions();
        let (id, rec, _) = s
            .create("alice", "uuid", Duration::from_secs(60), false, 1_000)
            .await
            .unwrap();
        assert!(is_session_id(&id), "{id}");
        assert_ne!(id, new_session_id());
        assert_eq!(rec.expires_ms, 61_000);
        let stored = db.list_sessions().await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0].0, id);
        assert!(!String::from_utf8_lossy(&stored[0].1).contains(&id));
        assert_eq!(s.get(&id).await.unwrap(), Some(rec));
        // another key: the same id finds nothing
        let other = Sessions::new(db, b"other".to_vec());
        assert_eq!(other.get(&id).await.unwrap(), None);
        assert_eq!(s.get("not-an-id").await.unwrap(), None);
        assert_eq!(s.get(&id.to_uppercase()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn expiry_refresh_one_time_and_collection() {
        let (_d, s, _db) = sessions();
        let (id, rec, _) = s
            .create("alice", "u", Duration::from_secs(100), false, 0)
            .await
            .unwrap();
        assert!(!rec.expired(99_999));
        assert!(rec.expired(100_000));
        assert!(!rec.needs_refresh(10_000));
        assert!(rec.needs_refresh(10_001));
        let (ot, otr, _) = s.create("bob", "u", ONE_TIME_TTL, true, 0).await.unwrap();
        assert!(!otr.needs_refresh(200_000));
        assert!(s.take_one_time(&ot).await.unwrap());
        assert!(!s.take_one_time(&ot).await.unwrap(), "single use");
        s.create("bob", "u", Duration::from_secs(1), false, 0)
            .await
            .unwrap();
        assert_eq!(s.delete_where(|r| r.expired(50_000)).await.unwrap(), 1);
        assert!(s.get(&id).await.unwrap().is_some());
        assert_eq!(s.delete_for_user("alice").await.unwrap(), 1);
        assert_eq!(s.count().await.unwrap(), 0);
        assert!(!s.delete(&id).await.unwrap());
    }

    #[test]
    fn cookie_attributes() {
        let c = CookieSettings {
            name: "SyncGatewaySession".into(),
            path: "/db".into(),
            secure: true,
            http_only: true,
            same_site: SameSite::None,
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_768_000_000);
        assert_eq!(
            c.set_cookie("abc", t),
            "SyncGatewaySession=abc; Path=/db; Expires=Fri, 09 Jan 2026 23:06:40 GMT; HttpOnly; SameSite=None; Secure"
        );
        assert!(c.clear_cookie().starts_with(
            "SyncGatewaySession=; Path=/db; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0"
        ));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_768_000_000)),
            "2026-01-09T23:06:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}

#[cfg(test)]
mod handle_tests {
    use super::*;

    #[test]
    fn handles_are_32_hex_and_not_the_key() {
        let key = "a".repeat(64);
        let h = handle(&key);
        assert!(is_handle(&h), "{h}");
        assert!(!key.contains(&h));
        assert_ne!(h, handle(&"b".repeat(64)));
        assert!(!is_handle(&"a".repeat(40)), "a session id is not a handle");
        assert!(!is_handle(&h.to_uppercase()));
    }
}
