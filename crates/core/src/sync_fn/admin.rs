//! The admin side of the sync function (SPEC §13): replacing it on a running database
//! (`PUT /{db}/_config/sync`, kept in the store), the dry run (`POST /{db}/_sync`) and the
//! online re-run over every document (`POST/GET /{db}/_resync`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use syncgate_storage::{DatabaseStore, DocMeta, Restamp};

use super::apply::Winner;
use super::{Decision, SyncFunction};
use crate::database::Database;
use crate::error::{Error, Result};

/// Setting key of the function set through the admin API.
pub(crate) const SETTING: &str = "sync_function";

/// The function `PUT /{db}/_config/sync` stored, and the config file's function at that time:
/// the stored one is used while the file's is still that text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSync {
    /// `None`: the default function.
    source: Option<String>,
    /// The config file's function when the admin API set this one.
    config_source: Option<String>,
}

/// The function a database opens with: the config file's (`config_source`), unless the admin
/// API stored one while the file had that same text (then the stored one). A stored one the
/// file has since replaced is dropped.
pub(crate) async fn effective_source(
    db: &str,
    store: &dyn DatabaseStore,
    config_source: Option<String>,
) -> Result<Option<String>> {
    let Some(bytes) = store.get_setting(SETTING).await? else {
        return Ok(config_source);
    };
    let stored: StoredSync = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Corrupt(format!(
            "the sync function stored for database \"{db}\" by PUT _config/sync: {e}"
        ))
    })?;
    if stored.config_source == config_source {
        tracing::info!(db = %db, "using the sync function set by PUT _config/sync");
        return Ok(stored.source);
    }
    tracing::info!(
        db = %db,
        "the config file's sync function changed since PUT _config/sync: the file's replaces the stored one"
    );
    store.put_setting(SETTING, None).await?;
    Ok(config_source)
}

/// Progress of `_resync`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResyncStatus {
    state: &'static str,
    start_time: Option<SystemTime>,
    docs_processed: u64,
    docs_changed: u64,
    docs_errored: u64,
    last_error: String,
}

/// `_resync` state of one database.
#[derive(Debug, Default)]
pub struct Resync {
    status: Mutex<ResyncStatus>,
    stop: AtomicBool,
}

impl Resync {
    fn lock(&self) -> std::sync::MutexGuard<'_, ResyncStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `{"status","docs_processed","docs_changed","docs_errored",...}`.
    pub fn json(&self) -> Value {
        let s = self.lock();
        let mut out = json!({
            "status": if s.state.is_empty() { "not_started" } else { s.state },
            "docs_processed": s.docs_processed,
            "docs_changed": s.docs_changed,
            "docs_errored": s.docs_errored,
        });
        if let Some(t) = s.start_time {
            out["start_time"] = json!(syncgate_auth::sessions::rfc3339(t));
        }
        if !s.last_error.is_empty() {
            out["last_error"] = json!(s.last_error);
        }
        out
    }
}

/// Documents read per `_resync` step (their calls run in parallel, their changes are stored
/// in one batch).
const RESYNC_PAGE: usize = 64;

/// A body parsed for the default function's `channels` rule.
fn default_decision(id: &str, json: &[u8]) -> Result<Decision> {
    let view: Map<String, Value> = serde_json::from_slice(json).map_err(|e| {
        Error::Corrupt(format!(
            "the body of document \"{}\" does not parse: {e}",
            crate::short(id)
        ))
    })?;
    Ok(Decision {
        channels: crate::docs::channels_of(&view),
        access: Default::default(),
        consulted: false,
    })
}

/// `userCtx` for the dry run: `{"name","roles":[…],"channels":[…]}`.
pub fn user_ctx_text(name: &str, roles: &[String], channels: &[String]) -> String {
    json!({"name": name, "roles": roles, "channels": channels}).to_string()
}

impl Database {
    /// The function's source (`None`: the default).
    pub fn sync_source(&self) -> Option<String> {
        self.sync_function().map(|f| f.source().to_string())
    }

    /// `PUT /{db}/_config/sync`: compiles `source` (blank: back to the default), stores it and
    /// makes it the function of every later write. A syntax error is a 400 naming its line and
    /// column, and the function in use stays.
    pub async fn replace_sync_function(&self, source: &str) -> Result<()> {
        let _one_at_a_time = self.sync_admin.lock().await;
        let source = (!source.trim().is_empty()).then(|| source.to_string());
        let compiled = match &source {
            Some(src) => {
                let src = src.clone();
                let timeout = self.config.javascript_timeout_ms();
                let f = tokio::task::spawn_blocking(move || SyncFunction::new(&src, timeout))
                    .await
                    .map_err(|e| Error::Internal(format!("compiling the sync function: {e}")))?
                    .map_err(|e| Error::bad(e.to_string()))?;
                Some(Arc::new(f))
            }
            None => None,
        };
        let record = StoredSync {
            source,
            config_source: self.config_sync.clone(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Error::Internal(format!("encoding the sync function: {e}")))?;
        let ticket = self.store.put_setting(SETTING, Some(&bytes)).await?;
        self.store.durable(ticket).await?;
        *self.sync.write().unwrap_or_else(|e| e.into_inner()) = compiled;
        tracing::info!(db = %self.name, "sync function replaced through the admin API");
        Ok(())
    }

    /// Another node changed this database's settings: the function stored there (or, none
    /// stored, the config file's) replaces this node's, unless it is the one in use.
    pub(crate) async fn reload_sync_function(self: &Arc<Self>) -> Result<()> {
        let _one_at_a_time = self.sync_admin.lock().await;
        let db = self.clone();
        let stored = db.store.get_setting(SETTING).await?;
        let compiled = tokio::task::spawn_blocking(move || -> Result<Option<_>> {
            let source = match stored {
                Some(bytes) => {
                    let stored: StoredSync = serde_json::from_slice(&bytes).map_err(|e| {
                        Error::Corrupt(format!(
                            "the sync function stored for database \"{}\" by PUT _config/sync: {e}",
                            db.name
                        ))
                    })?;
                    stored.source
                }
                None => db.config_sync.clone(),
            };
            if source == db.sync_source() {
                return Ok(None);
            }
            let compiled = match source {
                Some(src) => Some(Arc::new(
                    SyncFunction::new(&src, db.config.javascript_timeout_ms())
                        .map_err(|e| Error::bad(e.to_string()))?,
                )),
                None => None,
            };
            Ok(Some(compiled))
        })
        .await
        .map_err(|e| Error::Internal(format!("reloading the sync function: {e}")))??;
        if let Some(compiled) = compiled {
            *self.sync.write().unwrap_or_else(|e| e.into_inner()) = compiled;
            tracing::info!(db = %self.name, "sync function replaced on another node: reloaded");
        }
        Ok(())
    }

    /// `POST /{db}/_sync`: runs the function (`source`, else the database's) on `doc` and
    /// `old_doc` as the user `user_ctx` (JSON text, `None` = admin) and reports what it decided,
    /// writing nothing: `{"channels","access","roles"}`, plus `"exception"` (the reason a
    /// write would get) when it rejected or failed.
    pub async fn sync_dry_run(
        &self,
        doc: &Value,
        old_doc: Option<&Value>,
        user_ctx: Option<String>,
        source: Option<&str>,
    ) -> Result<Value> {
        let Value::Object(view) = doc else {
            return Err(Error::bad("'doc' must be a JSON object"));
        };
        if old_doc.is_some_and(|o| !o.is_object() && !o.is_null()) {
            return Err(Error::bad("'oldDoc' must be a JSON object or null"));
        }
        let id = view.get("_id").and_then(Value::as_str).unwrap_or("");
        let f = match source {
            Some(src) => {
                let src = src.to_string();
                let timeout = self.config.javascript_timeout_ms();
                let f = tokio::task::spawn_blocking(move || {
                    SyncFunction::with_workers(&src, timeout, 1)
                })
                .await
                .map_err(|e| Error::Internal(format!("compiling the sync function: {e}")))?
                .map_err(|e| Error::bad(format!("sync_function: {e}")))?;
                Some(Arc::new(f))
            }
            None => self.sync_function(),
        };
        let outcome = match f {
            Some(f) => {
                let old = old_doc.filter(|o| !o.is_null()).map(Value::to_string);
                let user = match user_ctx {
                    Some(t) => Some(Arc::new(
                        super::call_user_from_json(&t).map_err(Error::bad)?,
                    )),
                    None => None,
                };
                f.run(id, doc.to_string(), old, user).await
            }
            None => Ok(Decision {
                channels: crate::docs::channels_of(view),
                access: Default::default(),
                consulted: false,
            }),
        };
        let (decision, exception) = match outcome {
            Ok(d) => (d, None),
            Err(
                e @ (Error::Forbidden(_) | Error::Unauthorized { .. } | Error::SyncFunction(_)),
            ) => (Decision::default(), Some(e.to_string())),
            Err(e) => return Err(e),
        };
        let mut out = json!({
            "channels": decision.channels,
            "access": decision.access.channels,
            "roles": decision.access.roles,
        });
        if let Some(reason) = exception {
            out["exception"] = json!(reason);
        }
        Ok(out)
    }

    /// `GET /{db}/_resync`.
    pub fn resync_status(&self) -> Value {
        self.resync.json()
    }

    /// `POST /{db}/_resync?action=stop`: asks a running re-run to stop after its current step.
    pub fn stop_resync(&self) -> Result<Value> {
        {
            let mut s = self.resync.lock();
            if s.state != "running" {
                return Err(Error::bad("Database _resync is not running"));
            }
            s.state = "stopping";
        }
        self.resync.stop.store(true, Ordering::SeqCst);
        Ok(self.resync.json())
    }

    /// `POST /{db}/_resync`: re-runs the current function over every document's winning
    /// revision in the background (the database stays online). A document whose channels or
    /// grants change gets a new sequence (feeds show its new channels and removals; changed
    /// grants are restamped, so clients get their backfill); one whose call fails keeps what it
    /// had and is counted in `docs_errored`.
    pub fn start_resync(self: &Arc<Self>) -> Result<Value> {
        {
            let mut s = self.resync.lock();
            if s.state == "running" || s.state == "stopping" {
                return Err(Error::ServiceUnavailable(
                    "Database _resync already in progress".into(),
                ));
            }
            *s = ResyncStatus {
                state: "running",
                start_time: Some(SystemTime::now()),
                ..Default::default()
            };
        }
        self.resync.stop.store(false, Ordering::SeqCst);
        let db = self.clone();
        tokio::spawn(async move {
            let result = db.run_resync().await;
            let mut s = db.resync.lock();
            match result {
                Ok(true) => s.state = "completed",
                Ok(false) => s.state = "stopped",
                Err(e) => {
                    tracing::warn!(db = %db.name, "_resync failed: {e}");
                    s.state = "error";
                    s.last_error = e.to_string();
                }
            }
            tracing::info!(
                db = %db.name,
                processed = s.docs_processed,
                changed = s.docs_changed,
                errored = s.docs_errored,
                "_resync {}", s.state
            );
        });
        Ok(self.resync.json())
    }

    /// The re-run: true when it went through every document, false when stopped.
    async fn run_resync(self: &Arc<Self>) -> Result<bool> {
        let f = self.sync_function();
        let mut after: Option<String> = None;
        loop {
            if self.resync.stop.load(Ordering::SeqCst) || *self.shutdown.borrow() {
                return Ok(false);
            }
            let page = self.resync_page(after.as_deref()).await?;
            let Some((last, _)) = page.last() else {
                return Ok(true);
            };
            after = Some(last.clone());
            let processed = page.len() as u64;
            let mut calls = Vec::with_capacity(page.len());
            for (id, w) in page {
                let Some(w) = w else {
                    continue;
                };
                let call = match &f {
                    Some(f) => {
                        let fut = f.submit(id.clone(), w.doc.clone(), w.old_doc.clone(), None);
                        boxed(fut)
                    }
                    None => {
                        let d = default_decision(&id, &w.json);
                        boxed(async move { d })
                    }
                };
                calls.push((id, w, call));
            }
            let mut stamps: Vec<Restamp> = Vec::new();
            let mut errored = 0u64;
            for (id, w, call) in calls {
                match call.await {
                    Ok(d) => stamps.extend(w.restamp(&id, d)),
                    Err(e) => {
                        tracing::warn!(db = %self.name, doc = %crate::short(&id), "_resync: the sync function failed ({e}); the document keeps its channels and grants");
                        errored += 1;
                    }
                }
            }
            let changed = if stamps.is_empty() {
                0
            } else {
                let (done, ticket) = self.store.restamp_docs(stamps).await?;
                self.store.durable(ticket).await?;
                done.iter().filter(|s| s.is_some()).count() as u64
            };
            let mut s = self.resync.lock();
            s.docs_processed += processed;
            s.docs_changed += changed;
            s.docs_errored += errored;
        }
    }

    /// The next documents after `after` (all from the start when `None`), each with its
    /// winner's inputs (`None`: nothing to run, e.g. a body lost).
    async fn resync_page(&self, after: Option<&str>) -> Result<Vec<(String, Option<Winner>)>> {
        let mut rows: Vec<(String, DocMeta)> = Vec::with_capacity(RESYNC_PAGE);
        let mut docs = self.store.docs_from(after.unwrap_or(""), false);
        while let Some(row) = docs.next().await {
            let (id, meta) = row?;
            if after == Some(id.as_str()) {
                continue;
            }
            rows.push((id, meta));
            if rows.len() == RESYNC_PAGE {
                break;
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (id, meta) in rows {
            let w = self.winner_inputs(&id, &meta).await?;
            out.push((id, w));
        }
        Ok(out)
    }
}

type BoxedDecision = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Decision>> + Send>>;

fn boxed(f: impl std::future::Future<Output = Result<Decision>> + Send + 'static) -> BoxedDecision {
    Box::pin(f)
}
