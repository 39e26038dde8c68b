//! Listing a user's sessions without revealing them.
//!
//! The store keys a session by HMAC-SHA256(server key, session id) and the id itself exists
//! only in the client's cookie. An operator still needs to see a user's sessions and revoke one,
//! so each stored session gets a **handle**: the first 128 bits of
//! SHA-256("syncgate session handle\0" ‖ storage key), as 32 lower-case hex characters. It is a
//! one-way function of a value that is itself a one-way function of the id: a handle cannot
//! be turned back into a cookie, nor into the storage key. It is stable for the session's
//! life (a sliding refresh rewrites the record under the same key), and its length keeps it
//! apart from a 40-character session id on `DELETE /{db}/_user/{name}/_session/{…}`.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use syncgate_auth::principals::UserRecord;
use syncgate_auth::sessions::{now_ms, rfc3339, SessionRecord};
use syncgate_core::{Database, Error, Result};

/// Length of a handle in hex characters.
pub const HANDLE_HEX: usize = 32;

/// The handle of a stored session.
pub fn handle(storage_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"syncgate session handle\0");
    h.update(storage_key.as_bytes());
    hex::encode(&h.finalize()[..HANDLE_HEX / 2])
}

/// Whether a path segment has the shape of a handle.
pub fn is_handle(s: &str) -> bool {
    s.len() == HANDLE_HEX && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Every stored session as (storage key, record). A record that does not decode is an error.
fn stored(db: &Database) -> Result<Vec<(String, SessionRecord)>> {
    db.store
        .list_sessions()?
        .into_iter()
        .map(|(k, v)| match serde_json::from_slice::<SessionRecord>(&v) {
            Ok(r) => Ok((k, r)),
            Err(e) => Err(Error::Internal(format!(
                "session record {} does not decode: {e}",
                handle(&k)
            ))),
        })
        .collect()
}

/// A user's sessions that would be accepted now (not expired, issued under the user's current
/// session uuid, user enabled), as (handle, record).
pub fn live_for_user(db: &Database, user: &UserRecord) -> Result<Vec<(String, SessionRecord)>> {
    if user.disabled {
        return Ok(Vec::new());
    }
    let now = now_ms();
    Ok(stored(db)?
        .into_iter()
        .filter(|(_, r)| {
            r.username == user.name && !r.expired(now) && r.session_uuid == user.session_uuid
        })
        .map(|(k, r)| (handle(&k), r))
        .collect())
}

/// The listing entry of a session.
pub fn json(handle: &str, r: &SessionRecord) -> Value {
    json!({
        "handle": handle,
        "issued": rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.issued_ms())),
        "expires": rfc3339(r.expires()),
        "ttl_secs": r.ttl_ms / 1000,
        "one_time": r.one_time,
    })
}

/// Deletes the session of `username` with this handle; false if there is none. Answers after
/// the deletion is durable, as every other revocation.
pub async fn delete_by_handle(db: &Database, username: &str, h: &str) -> Result<bool> {
    let Some((key, _)) = stored(db)?
        .into_iter()
        .find(|(k, r)| r.username == username && handle(k) == h)
    else {
        return Ok(false);
    };
    let t = db.store.delete_sessions(&[key])?;
    db.store.durable(t).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
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
