//! Admin routes of the sync function (SPEC §13):
//!
//! - `GET|HEAD|PUT|DELETE /{db}/_config/sync`: read, replace (JavaScript body) or reset the
//!   function of a running database.
//! - `POST /{db}/_sync`: dry run, `{"doc","oldDoc"?,"userCtx"?,"sync_function"?}`.
//! - `GET|POST /{db}/_resync`: progress of, and start (`?action=start`, the default) or stop
//!   (`?action=stop`), the re-run over every document.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use syncgate_api_common::reply::bytes_reply;
use syncgate_api_common::{json_reply, Reply, Request};
use syncgate_core::sync_fn::admin::user_ctx_text;
use syncgate_core::{Database, Error, Result};

fn not_allowed(req: &Request, what: &str) -> Error {
    Error::MethodNotAllowed(format!("Method {} is not allowed on {what}", req.method))
}

/// `/{db}/_config/sync`.
pub async fn config_sync(db: &Database, req: &Request) -> Result<Reply> {
    match req.method {
        Method::GET | Method::HEAD => Ok(bytes_reply(
            200,
            "text/javascript; charset=utf-8",
            db.sync_source().unwrap_or_default().into_bytes(),
        )),
        Method::PUT => {
            db.replace_sync_function(req.javascript_text()?).await?;
            Ok(json_reply(200, &json!({"ok": true})))
        }
        Method::DELETE => {
            db.replace_sync_function("").await?;
            Ok(json_reply(200, &json!({"ok": true})))
        }
        _ => Err(not_allowed(req, "_config/sync")),
    }
}

/// The body of `POST /{db}/_sync`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    doc: Value,
    #[serde(rename = "oldDoc", default)]
    old_doc: Option<Value>,
    /// Absent or null: the admin (every `require*` passes).
    #[serde(rename = "userCtx", default)]
    user_ctx: Option<DryRunUser>,
    /// Another function to run instead of the database's (to try one before installing it).
    #[serde(default)]
    sync_function: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunUser {
    name: String,
    #[serde(default)]
    roles: Roles,
    #[serde(default)]
    channels: Vec<String>,
}

/// Roles as a list, or as Sync Gateway's `userCtx.roles` object (role → sequence).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Roles {
    List(Vec<String>),
    Map(BTreeMap<String, Value>),
}

impl Default for Roles {
    fn default() -> Self {
        Roles::List(Vec::new())
    }
}

/// `POST /{db}/_sync`.
pub async fn dry_run(db: &Database, req: &Request) -> Result<Reply> {
    if req.method != Method::POST {
        return Err(not_allowed(req, "_sync"));
    }
    let body: DryRun = serde_json::from_value(req.json()?)
        .map_err(|e| Error::bad(format!("Invalid _sync request: {e}")))?;
    let user_ctx = body.user_ctx.map(|u| {
        let roles = match u.roles {
            Roles::List(l) => l,
            Roles::Map(m) => m.into_keys().collect(),
        };
        user_ctx_text(&u.name, &roles, &u.channels)
    });
    let out = db
        .sync_dry_run(
            &body.doc,
            body.old_doc.as_ref(),
            user_ctx,
            body.sync_function.as_deref(),
        )
        .await?;
    Ok(json_reply(200, &out))
}

/// `/{db}/_resync`.
pub fn resync(db: &Arc<Database>, req: &Request) -> Result<Reply> {
    match req.method {
        Method::GET | Method::HEAD => Ok(json_reply(200, &db.resync_status())),
        Method::POST => {
            let status = match req.q("action").unwrap_or("start") {
                "start" => db.start_resync()?,
                "stop" => db.stop_resync()?,
                _ => {
                    return Err(Error::bad(
                        "Unknown parameter for 'action'. Must be start or stop",
                    ))
                }
            };
            Ok(json_reply(200, &status))
        }
        _ => Err(not_allowed(req, "_resync")),
    }
}
