//! The per-database JavaScript sync function (SPEC §13): decides each new revision's channels,
//! the grants of `access()`/`role()`, and whether the write is accepted.
//!
//! - [`engine`]: QuickJS runtimes on worker threads, timeouts, compile checks.
//! - this module: the database-facing call: the caller's `userCtx`, the mapping of throws and
//!   exceptions to HTTP errors, and the validation of what the function produced.

pub mod admin;
pub mod apply;
pub mod engine;
pub mod gather;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use syncgate_auth::{Caller, GUEST};
use syncgate_storage::RevAccess;

pub use engine::{check, CallError, CallInput, CallUser, CompileError, Engine};

use crate::error::{Error, Result};

/// Default bound of one call (`javascript_timeout_ms`).
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Reason of a call stopped by the timeout.
pub const TIMED_OUT: &str = "JS sync function timed out";
/// Reason of any other failure inside the function (details only in the log).
pub const EXCEPTION: &str = "Exception in JS sync function";

/// What the function decided for one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Channels from `channel()`, sorted and deduplicated.
    pub channels: Vec<String>,
    /// Grants from `access()`/`role()`.
    pub access: RevAccess,
    /// Whether the call read the caller's channels or roles (`requireAccess`/`requireRole`).
    pub consulted: bool,
}

/// A configured sync function: its source and the worker pool running it.
pub struct SyncFunction {
    engine: Engine,
    /// Where the writes of requests whose calls finish together meet.
    pub(crate) gather: gather::Gather,
}

impl std::fmt::Debug for SyncFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncFunction").finish_non_exhaustive()
    }
}

/// Worker threads per function: the machine's cores, at most 8.
fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

#[derive(Deserialize)]
struct RawOutput {
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    access: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    reject: Option<u16>,
    reason: Option<String>,
    #[serde(default)]
    consulted: bool,
}

/// Valid channel name: non-empty, no comma, no NUL.
fn valid_channel(c: &str) -> bool {
    !c.is_empty() && !c.contains(',') && !c.contains('\0')
}

/// A principal name as `access()`/`role()` address it: the guest is `""` or `GUEST`.
fn principal(name: &str) -> std::result::Result<String, String> {
    if name.is_empty() || name == GUEST {
        return Ok(GUEST.to_string());
    }
    let bad = name.len() > 239
        || name.contains(['/', ':', ',', '`', '\0'])
        || !name.chars().any(char::is_alphanumeric);
    if bad {
        return Err(format!(
            "invalid user or role name \"{}\"",
            crate::short(name)
        ));
    }
    Ok(name.to_string())
}

/// `user` or `role:NAME` → the stored key (`NAME` validated).
fn grantee(name: &str) -> std::result::Result<String, String> {
    match name.strip_prefix("role:") {
        Some(r) if !r.is_empty() => {
            let r = principal(r)?;
            Ok(format!("role:{r}"))
        }
        Some(_) => Err("empty role name".into()),
        None => principal(name),
    }
}

/// Validates and normalizes the function's output.
fn decide(raw: RawOutput) -> std::result::Result<Decision, String> {
    let mut channels = BTreeSet::new();
    for c in raw.channels {
        if !valid_channel(&c) {
            return Err(format!("illegal channel name \"{}\"", crate::short(&c)));
        }
        channels.insert(c);
    }
    let mut access = RevAccess::default();
    for (user, chans) in raw.access {
        let key = grantee(&user)?;
        for c in chans {
            if c == "*" {
                continue; // the function cannot grant all channels
            }
            if !valid_channel(&c) {
                return Err(format!("illegal channel name \"{}\"", crate::short(&c)));
            }
            access.channels.entry(key.clone()).or_default().insert(c);
        }
    }
    for (user, roles) in raw.roles {
        if user.starts_with("role:") {
            return Err(format!(
                "role() grants roles to users, not to \"{}\"",
                crate::short(&user)
            ));
        }
        let key = principal(&user)?;
        for r in roles {
            let Some(name) = r.strip_prefix("role:") else {
                return Err(format!(
                    "role() values must start with \"role:\" (got \"{}\")",
                    crate::short(&r)
                ));
            };
            let name = principal(name)?;
            access.roles.entry(key.clone()).or_default().insert(name);
        }
    }
    Ok(Decision {
        channels: channels.into_iter().collect(),
        access,
        consulted: raw.consulted,
    })
}

/// Who the helpers check: `None` for the admin. Shares the caller's channel map.
pub fn call_user(caller: &Caller) -> Option<Arc<CallUser>> {
    let u = caller.user()?;
    Some(Arc::new(CallUser::new(
        u.name.clone().unwrap_or_default(),
        u.roles.iter().cloned().collect(),
        u.channels.clone(),
    )))
}

/// A `userCtx` given as JSON (the dry run's): `{"name","roles":[…],"channels":[…]}`.
pub fn call_user_from_json(text: &str) -> std::result::Result<CallUser, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        roles: Vec<String>,
        #[serde(default)]
        channels: Vec<String>,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("userCtx: {e}"))?;
    Ok(CallUser::new(
        raw.name.unwrap_or_default(),
        raw.roles,
        raw.channels.into_iter().map(|c| (c, 1u64)).collect(),
    ))
}

impl SyncFunction {
    /// Compiles `source` and starts its workers.
    pub fn new(source: &str, timeout_ms: u64) -> std::result::Result<SyncFunction, CompileError> {
        Self::with_workers(source, timeout_ms, workers())
    }

    /// [`SyncFunction::new`] with `workers` threads (a dry run of another function needs one).
    pub fn with_workers(
        source: &str,
        timeout_ms: u64,
        workers: usize,
    ) -> std::result::Result<SyncFunction, CompileError> {
        let engine = Engine::start(source, Duration::from_millis(timeout_ms.max(1)), workers)?;
        Ok(SyncFunction {
            engine,
            gather: gather::Gather::default(),
        })
    }

    pub fn source(&self) -> &str {
        self.engine.source()
    }

    /// Runs the function for one revision. `doc` is the new revision's body with `_id`, `_rev`
    /// (and `_deleted`); `old_doc` the parent's body with `_id`. Rejections and exceptions are
    /// errors with their HTTP status.
    pub async fn run(
        &self,
        doc_id: &str,
        doc: String,
        old_doc: Option<String>,
        user: Option<Arc<CallUser>>,
    ) -> Result<Decision> {
        self.submit(doc_id.to_string(), doc, old_doc, user).await
    }

    /// [`SyncFunction::run`], queued now and awaited later (calls of one request run on the
    /// workers in parallel).
    pub fn submit(
        &self,
        doc_id: String,
        doc: String,
        old_doc: Option<String>,
        user: Option<Arc<CallUser>>,
    ) -> impl std::future::Future<Output = Result<Decision>> + Send + 'static {
        let pending = self.engine.submit(CallInput { doc, old_doc, user });
        async move { interpret(&doc_id, pending.await) }
    }
}

/// Maps a call's outcome to the revision's decision or the write's error.
fn interpret(doc_id: &str, out: engine::CallResult) -> Result<Decision> {
    let exception = |detail: &str| {
        tracing::warn!(doc = %crate::short(doc_id), "exception in the sync function: {detail}");
        Error::SyncFunction(EXCEPTION.into())
    };
    let text = match out {
        Ok(t) => t,
        Err(CallError::TimedOut) => {
            tracing::warn!(doc = %crate::short(doc_id), "the sync function timed out");
            return Err(Error::SyncFunction(TIMED_OUT.into()));
        }
        Err(CallError::Exception(m)) => return Err(exception(&m)),
        Err(CallError::Forbidden(m)) => return Err(Error::Forbidden(m)),
        Err(CallError::Unauthorized(m)) => {
            return Err(Error::Unauthorized {
                reason: m,
                challenge: false,
            })
        }
    };
    let raw: RawOutput = serde_json::from_str(&text)
        .map_err(|e| exception(&format!("unexpected result {text}: {e}")))?;
    match raw.reject {
        Some(401) => {
            return Err(Error::Unauthorized {
                reason: raw.reason.unwrap_or_default(),
                challenge: false,
            })
        }
        Some(_) => return Err(Error::Forbidden(raw.reason.unwrap_or_default())),
        None => {}
    }
    decide(raw).map_err(|m| exception(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: serde_json::Value) -> RawOutput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn output_is_validated() {
        let d = decide(raw(serde_json::json!({
            "channels": ["b", "a", "b", "bar ok"],
            "access": {"u": ["x", "*"], "role:mod": ["m"], "": ["pub"], "GUEST": ["pub2"]},
            "roles": {"u": ["role:mod"]},
        })))
        .unwrap();
        assert_eq!(d.channels, ["a", "b", "bar ok"]);
        assert_eq!(d.access.channels["u"].iter().collect::<Vec<_>>(), ["x"]);
        assert!(d.access.channels.contains_key("role:mod"));
        assert_eq!(d.access.channels["GUEST"].len(), 2);
        assert!(d.access.roles["u"].contains("mod"));
        for bad in [
            serde_json::json!({"channels": ["bad,name"]}),
            serde_json::json!({"channels": [""]}),
            serde_json::json!({"access": {"u": ["bad,name"]}}),
            serde_json::json!({"access": {"bad,username": ["c"]}}),
            serde_json::json!({"access": {"role:bad:rolename": ["c"]}}),
            serde_json::json!({"access": {",.,.,.": ["c"]}}),
            serde_json::json!({"roles": {"u": ["mod"]}}),
        ] {
            assert!(decide(raw(bad.clone())).is_err(), "{bad}");
        }
        for ok in ["foo#bar", "foo?bar", "$foo$bar", "_sync-foobar"] {
            let v = serde_json::json!({"roles": {"u": [format!("role:{ok}")]}});
            assert!(decide(raw(v)).is_ok(), "{ok}");
        }
    }
}
