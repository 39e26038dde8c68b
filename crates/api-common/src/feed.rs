//! `_changes` over HTTP: normal (one JSON body), longpoll, continuous and eventsource.
//!
//! Live feeds are streams driven by the client reading them: no task is spawned, so when the
//! client goes away hyper drops the stream and with it the [`FeedGuard`] that counts it.
//! Waiting uses the store's commit notification (no polling).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::HeaderValue;
use serde_json::{json, Value};
use syncgate_auth::Caller;
use syncgate_core::changes::{ChangeRow, ChangesOptions, ChangesPages, Since};
use syncgate_core::find::SelectorFilter;
use syncgate_core::mango::{self, Selector};
use syncgate_core::{Database, Error, Result};

use crate::reply::{bytes_reply, Reply};
use crate::{Request, StreamingBody};

/// Smallest heartbeat accepted (ms).
pub const MIN_HEARTBEAT_MS: u64 = 1_000;
/// Heartbeat interval for `heartbeat=true` (ms), as CouchDB.
pub const DEFAULT_HEARTBEAT_MS: u64 = 60_000;
/// Rows per chunk of a continuous or eventsource feed.
const STREAM_PAGE: usize = 1_000;
/// Longpoll/continuous timeout when none is given and no heartbeat is set (ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Normal,
    Longpoll,
    Continuous,
    EventSource,
}

/// Counts an open live feed while it exists.
struct FeedGuard(Arc<Database>);

impl FeedGuard {
    fn new(db: Arc<Database>) -> Self {
        db.metrics().feeds_active.fetch_add(1, Ordering::SeqCst);
        FeedGuard(db)
    }
}

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.metrics().feeds_active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A parameter from the query string, else from the POST body (query wins, as SG).
fn param(req: &Request, body: &Value, name: &str) -> Option<Value> {
    match req.q(name) {
        Some(v) => Some(Value::String(v.to_string())),
        None => body.get(name).cloned(),
    }
}

fn as_bool(v: Option<Value>, name: &str) -> Result<bool> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(Value::String(s)) if s == "true" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "false" || s == "0" || s.is_empty() => Ok(false),
        Some(other) => Err(Error::bad(format!(
            "'{name}' must be true or false, not {}",
            crate::request::short(&other.to_string())
        ))),
    }
}

fn as_u64(v: Option<Value>, name: &str) -> Result<Option<u64>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::bad(format!("'{name}' must be a non-negative integer"))),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
            Error::bad(format!(
                "'{name}' must be a non-negative integer, not \"{}\"",
                crate::request::short(&s)
            ))
        }),
        Some(_) => Err(Error::bad(format!(
            "'{name}' must be a non-negative integer"
        ))),
    }
}

fn string_set(v: Value, name: &str) -> Result<HashSet<String>> {
    match v {
        Value::Array(a) => a
            .into_iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::bad(format!("'{name}' must hold strings")))
            })
            .collect(),
        Value::String(s) => {
            if s.trim_start().starts_with('[') {
                let v: Value = serde_json::from_str(&s)
                    .map_err(|_| Error::bad(format!("'{name}' is not a valid JSON array")))?;
                string_set(v, name)
            } else {
                Ok(s.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect())
            }
        }
        _ => Err(Error::bad(format!("'{name}' must be an array of strings"))),
    }
}

/// `filter=_selector`: `selector` (and optional `fields`) from the POST body, or as JSON in
/// the query string. Errors are 400 `bad_request` with Mango's reason, as CouchDB answers them
/// on `_changes`.
fn selector_filter(req: &Request, body: &Value) -> Result<SelectorFilter> {
    let from_query = |name: &str| -> Result<Option<Value>> {
        req.q(name)
            .map(|q| {
                serde_json::from_str(q)
                    .map_err(|_| Error::bad(format!("Selector error: '{name}' is not valid JSON")))
            })
            .transpose()
    };
    let selector = match from_query("selector")? {
        Some(v) => v,
        None => body
            .get("selector")
            .cloned()
            .ok_or_else(|| Error::bad("Selector must be specified in POST payload"))?,
    };
    if !selector.is_object() {
        return Err(Error::bad("Selector error: expected a JSON object"));
    }
    let fields = match from_query("fields")? {
        Some(v) => Some(v),
        None => body.get("fields").cloned(),
    };
    if fields
        .as_ref()
        .is_some_and(|f| !f.is_array() && !f.is_null())
    {
        return Err(Error::bad("Selector error: fields must be JSON array"));
    }
    let mango = |e: mango::MangoError| Error::bad(e.reason);
    Ok(SelectorFilter {
        selector: Selector::parse(&selector).map_err(mango)?,
        fields: mango::parse_fields(fields.as_ref()).map_err(mango)?,
    })
}

/// `GET|POST /{db}/_changes`.
pub async fn changes(db: Arc<Database>, caller: Caller, req: &Request) -> Result<Reply> {
    let body = if req.method == http::Method::POST {
        req.json_or_empty()?
    } else {
        json!({})
    };
    if !body.is_object() {
        return Err(Error::bad("_changes body must be a JSON object"));
    }
    let feed = match param(req, &body, "feed")
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("normal")
    {
        "normal" => Feed::Normal,
        "longpoll" => Feed::Longpoll,
        "continuous" => Feed::Continuous,
        "eventsource" => Feed::EventSource,
        other => {
            return Err(Error::bad(format!(
                "Unknown feed type \"{}\"",
                crate::request::short(other)
            )))
        }
    };
    // an EventSource reconnects to the same URL with the id of the last event it saw: that
    // id wins over `since` in the URL (CouchDB), or the client would get those events again.
    // Ids are the rows' JSON `seq` (`"G:S"` quoted), which `Since::parse` reads back.
    let last_event_id = (feed == Feed::EventSource)
        .then(|| req.header("last-event-id"))
        .flatten()
        .map(|h| Value::String(h.to_string()));
    let since = match last_event_id.or_else(|| param(req, &body, "since")) {
        None => Since::default(),
        Some(v) => Since::parse(&v, db.last_seq())?,
    };
    let mut opts = ChangesOptions {
        since,
        limit: as_u64(param(req, &body, "limit"), "limit")?
            .map(|l| l as usize)
            .filter(|l| *l > 0),
        descending: as_bool(param(req, &body, "descending"), "descending")?,
        include_docs: as_bool(param(req, &body, "include_docs"), "include_docs")?,
        attachments: as_bool(param(req, &body, "attachments"), "attachments")?,
        conflicts: as_bool(param(req, &body, "conflicts"), "conflicts")?,
        all_docs: param(req, &body, "style").as_ref().and_then(Value::as_str) == Some("all_docs"),
        active_only: as_bool(param(req, &body, "active_only"), "active_only")?,
        doc_ids: None,
        channels: None,
        selector: None,
    };
    match param(req, &body, "filter").as_ref().and_then(Value::as_str) {
        None => {}
        Some("_doc_ids") => {
            // query: a JSON array or a comma-separated list; body: a JSON array
            let ids = match (req.q("doc_ids"), body.get("doc_ids")) {
                (Some(q), _) => string_set(Value::String(q.to_string()), "doc_ids")?,
                (None, Some(v @ Value::Array(_))) => string_set(v.clone(), "doc_ids")?,
                (None, Some(_)) => {
                    return Err(Error::bad("'doc_ids' must be a JSON array of document ids"))
                }
                (None, None) => return Err(Error::bad("filter=_doc_ids needs 'doc_ids'")),
            };
            if ids.is_empty() {
                return Err(Error::bad("filter=_doc_ids needs a non-empty 'doc_ids'"));
            }
            opts.doc_ids = Some(ids);
        }
        Some("sync_gateway/bychannel") => {
            let ch = param(req, &body, "channels")
                .ok_or_else(|| Error::bad("Missing 'channels' filter parameter"))?;
            opts.channels = Some(string_set(ch, "channels")?);
        }
        Some("_selector") => opts.selector = Some(Arc::new(selector_filter(req, &body)?)),
        Some(other) => {
            return Err(Error::bad(format!(
                "Unknown filter \"{}\"; try sync_gateway/bychannel, _doc_ids or _selector",
                crate::request::short(other)
            )))
        }
    }
    // `heartbeat=true` is CouchDB's way of asking for the default interval
    let heartbeat = match param(req, &body, "heartbeat") {
        Some(Value::Bool(true)) => Some(DEFAULT_HEARTBEAT_MS),
        Some(Value::String(s)) if s == "true" => Some(DEFAULT_HEARTBEAT_MS),
        Some(Value::Bool(false)) => None,
        Some(Value::String(s)) if s == "false" => None,
        other => as_u64(other, "heartbeat")?,
    }
    .filter(|h| *h > 0)
    .map(|h| Duration::from_millis(h.max(MIN_HEARTBEAT_MS)));
    let timeout = match as_u64(param(req, &body, "timeout"), "timeout")? {
        Some(0) => None,
        Some(t) => Some(Duration::from_millis(t)),
        // a heartbeat without a timeout waits until a change (PouchDB's live pull)
        None if heartbeat.is_some() => None,
        None => Some(Duration::from_millis(DEFAULT_TIMEOUT_MS)),
    };

    if feed == Feed::Normal || opts.descending {
        let pages = db.changes_paged(&caller, &opts).await?;
        return Ok(no_store(paged_reply(pages).await?));
    }
    // a longpoll with changes ready answers at once
    if feed == Feed::Longpoll {
        let pages = db.changes_paged(&caller, &opts).await?;
        if pages.remaining() > 0 || db.is_shutting_down() {
            return Ok(no_store(paged_reply(pages).await?));
        }
    }
    let state = LiveFeed {
        guard: FeedGuard::new(db.clone()),
        db,
        caller,
        opts,
        feed,
        heartbeat,
        timeout,
        sent: 0,
        phase: Phase::Start,
        idle_since: Instant::now(),
    };
    let body = stream::unfold(state, |mut st| async move {
        st.next_chunk().await.map(|c| (c, st))
    })
    .boxed();
    let content_type = match feed {
        Feed::EventSource => "text/event-stream",
        Feed::Continuous => "application/octet-stream",
        _ => "application/json",
    };
    let mut r = Reply::new(Bytes::new().into());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r.extensions_mut().insert(StreamingBody::new(body));
    Ok(no_store(r))
}

/// One batch as `{"results":[…],"last_seq":…}`: a small batch in one piece; a large one
/// rendered and sent a page of rows at a time (with `include_docs`, a page's documents are read
/// when the page is sent), so neither the rows nor the body are ever held whole. A page that
/// fails after the first was sent ends the body where it is: the client sees an incomplete
/// response, never a complete-looking one with rows missing.
async fn paged_reply(mut pages: ChangesPages) -> Result<Reply> {
    if pages.remaining() <= STREAM_PAGE {
        return Ok(bytes_reply(
            200,
            "application/json",
            pages.into_batch().await?.to_body(),
        ));
    }
    // the first page before the status line: an error there is still an error response
    let first = pages.next_page(STREAM_PAGE).await?.unwrap_or_default();
    let mut head = b"{\"results\":[".to_vec();
    push_rows(&mut head, &first, true);
    enum Step {
        Rows(Box<ChangesPages>),
        End(Vec<u8>),
        Done,
    }
    let rest = stream::unfold(Step::Rows(Box::new(pages)), |step| async move {
        match step {
            Step::Rows(mut pages) => match pages.next_page(STREAM_PAGE).await {
                Ok(Some(rows)) => {
                    let mut out =
                        Vec::with_capacity(rows.iter().map(|r| r.json.len() + 1).sum::<usize>());
                    push_rows(&mut out, &rows, false);
                    Some((Bytes::from(out), Step::Rows(pages)))
                }
                Ok(None) => {
                    let mut end = b"],\"last_seq\":".to_vec();
                    // a Since always serializes
                    let _ = serde_json::to_writer(&mut end, &pages.last_seq);
                    end.push(b'}');
                    Some((Bytes::new(), Step::End(end)))
                }
                Err(e) => {
                    tracing::error!("changes feed cut short while sending: {e}");
                    None
                }
            },
            Step::End(end) => Some((Bytes::from(end), Step::Done)),
            Step::Done => None,
        }
    })
    .filter(|b| std::future::ready(!b.is_empty()));
    let body = stream::once(std::future::ready(Bytes::from(head))).chain(rest);
    let mut r = Reply::new(Bytes::new().into());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut().insert(StreamingBody::new(body.boxed()));
    Ok(r)
}

/// Appends rows' JSON text, comma-separated (`first`: no comma before the first row).
fn push_rows(out: &mut Vec<u8>, rows: &[ChangeRow], first: bool) {
    for (i, row) in rows.iter().enumerate() {
        if i > 0 || !first {
            out.push(b',');
        }
        out.extend_from_slice(row.json.as_bytes());
    }
}

/// Feeds are never cached (SG sends the same header).
fn no_store(mut r: Reply) -> Reply {
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0, no-cache, no-store"),
    );
    r
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Waiting,
    Done,
}

struct LiveFeed {
    #[allow(dead_code)]
    guard: FeedGuard,
    db: Arc<Database>,
    caller: Caller,
    opts: ChangesOptions,
    feed: Feed,
    heartbeat: Option<Duration>,
    timeout: Option<Duration>,
    /// Rows sent so far (for `limit`).
    sent: usize,
    phase: Phase,
    /// Start of the current idle period (timeout measures idleness).
    idle_since: Instant,
}

impl LiveFeed {
    fn row_bytes(&self, row: &ChangeRow, out: &mut String) {
        if self.feed == Feed::EventSource {
            out.push_str(&format!("id: {}\ndata: ", row.seq.to_json()));
        }
        out.push_str(&row.json);
        out.push_str(if self.feed == Feed::EventSource {
            "\n\n"
        } else {
            "\n"
        });
    }

    fn end_bytes(&self) -> String {
        let last = self.opts.since.to_json();
        match self.feed {
            Feed::Longpoll => format!("],\n\"last_seq\":{last}}}\n"),
            Feed::Continuous => format!("{{\"last_seq\":{last}}}\n"),
            _ => String::new(),
        }
    }

    /// Produces the next piece of the body, or `None` at the end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Start => {
                    self.phase = Phase::Waiting;
                    let mut out = String::new();
                    if self.feed == Feed::Longpoll {
                        out.push_str("{\"results\":[\n");
                    }
                    if self.feed != Feed::Longpoll {
                        out.push_str(&self.drain().await);
                        if self.phase == Phase::Done {
                            out.push_str(&self.end_bytes());
                        }
                    }
                    return Some(Bytes::from(out));
                }
                Phase::Waiting => {
                    if self.db.is_shutting_down() {
                        self.phase = Phase::Done;
                        return Some(Bytes::from(self.end_bytes()));
                    }
                    let remaining = self
                        .timeout
                        .map(|t| t.saturating_sub(self.idle_since.elapsed()));
                    if remaining == Some(Duration::ZERO) {
                        self.phase = Phase::Done;
                        return Some(Bytes::from(self.end_bytes()));
                    }
                    let wait = match (self.heartbeat, remaining) {
                        (Some(h), Some(r)) => h.min(r),
                        (Some(h), None) => h,
                        (None, Some(r)) => r,
                        (None, None) => Duration::from_secs(3600),
                    };
                    let changed = self.db.wait_for_change(self.opts.since.seq, wait).await;
                    if !changed {
                        if self.db.is_shutting_down() {
                            continue;
                        }
                        if self.heartbeat.is_some()
                            && self.timeout.is_none_or(|t| self.idle_since.elapsed() < t)
                        {
                            return Some(Bytes::from_static(b"\n"));
                        }
                        continue;
                    }
                    let rows = self.drain().await;
                    if rows.is_empty() {
                        continue; // a change this caller cannot see
                    }
                    let mut out = rows;
                    if self.feed == Feed::Longpoll {
                        self.phase = Phase::Done;
                    }
                    if self.phase == Phase::Done {
                        out.push_str(&self.end_bytes());
                    }
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    /// Reads every available row, advancing `since`; marks the feed done when `limit` is met.
    async fn drain(&mut self) -> String {
        let mut opts = self.opts.clone();
        if let Some(l) = opts.limit {
            opts.limit = Some(l.saturating_sub(self.sent));
        }
        // a continuous feed from far back is sent a page per chunk, not built whole in memory;
        // the next page follows at once (the store is already past `since`)
        if self.feed != Feed::Longpoll {
            opts.limit = Some(opts.limit.map_or(STREAM_PAGE, |l| l.min(STREAM_PAGE)));
        }
        // grants and revocations take effect in an open feed: re-read the user on every wake
        match self.db.refresh_caller(&self.caller).await {
            Some(c) => self.caller = c,
            None => {
                // deleted or disabled while the feed was open
                self.phase = Phase::Done;
                return String::new();
            }
        }
        let batch = match self.db.changes(&self.caller, &opts).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "changes feed failed");
                self.phase = Phase::Done;
                return String::new();
            }
        };
        let mut out = String::new();
        let n = batch.rows.len();
        for (i, row) in batch.rows.iter().enumerate() {
            if self.feed == Feed::Longpoll && i > 0 {
                out.push(',');
            }
            self.row_bytes(row, &mut out);
        }
        self.opts.since = batch.last_seq;
        self.sent += n;
        if n > 0 {
            self.idle_since = Instant::now();
        }
        if self.opts.limit.is_some_and(|l| self.sent >= l) {
            self.phase = Phase::Done;
        }
        out
    }
}
