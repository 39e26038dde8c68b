//! How a user's sessions are listed on the admin port: by handle (see
//! `syncgate_auth::sessions::handle`), never by id or storage key.

use serde_json::{json, Value};
use syncgate_auth::sessions::{rfc3339, SessionRecord};

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
