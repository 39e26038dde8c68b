//! Mango over stored documents: the JSON a selector is matched against, the
//! `_changes?filter=_selector` test of one change, and `POST /{db}/_find`.
//!
//! Documents are turned into `serde_json::Value` for matching in two functions here
//! (`Database::mango_doc`, `Database::find_doc`); besides them only the `fields` projection of
//! `_changes?include_docs` rows (in `changes::change_row`) works on a rendered `Value`. A change
//! of how bodies are stored or rendered touches those three places.

use std::collections::BTreeSet;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{Map, Value};
use syncgate_auth::identity::{ALL_CHANNELS, PUBLIC_CHANNEL};
use syncgate_auth::Caller;
use syncgate_storage::json::{push_json, push_str};
use syncgate_storage::{ChangeEntry, DocMeta};

use crate::database::Database;
use crate::docs::GetOptions;
use crate::error::{Error, Result};
use crate::mango::{FieldPath, Selector};

/// `filter=_selector` of a `_changes` request: the compiled selector and the optional
/// `fields` projection of `include_docs` documents.
#[derive(Debug, Clone)]
pub struct SelectorFilter {
    pub selector: Selector,
    pub fields: Option<Vec<FieldPath>>,
}

impl Database {
    /// One revision as a selector sees it, as CouchDB's `couch_doc:to_json_obj(Doc, [])`: the
    /// stored body with `_id`, `_rev`, `_deleted: true` for a tombstone and attachment stubs.
    /// Reads the body (it counts in `docs_read`). `None` when the body is gone (a pruned
    /// revision); a tombstone stored without a body is `{_id, _rev, _deleted}`.
    pub(crate) async fn mango_doc(
        &self,
        id: &str,
        rev: &str,
        deleted: bool,
    ) -> Result<Option<Value>> {
        let stored = match self.store.rev_body(id, rev).await? {
            Some(b) => Some(b),
            None if deleted => None,
            None => return Ok(None),
        };
        let mut out = Map::new();
        out.insert("_id".into(), Value::String(id.to_string()));
        out.insert("_rev".into(), Value::String(rev.to_string()));
        if deleted {
            out.insert("_deleted".into(), Value::Bool(true));
        }
        if let Some(b) = stored {
            let body: Map<String, Value> = serde_json::from_slice(&b.json).map_err(|e| {
                Error::Internal(format!(
                    "stored body of \"{id}\" {rev} is not a JSON object: {e}"
                ))
            })?;
            out.extend(body);
            if !b.attachments.is_empty() {
                let atts: Map<String, Value> = b
                    .attachments
                    .iter()
                    .map(|(name, m)| {
                        let stub = serde_json::json!({"content_type": m.content_type,
                            "revpos": m.revpos, "digest": m.digest, "length": m.length,
                            "stub": true});
                        (name.clone(), stub)
                    })
                    .collect();
                out.insert("_attachments".into(), Value::Object(atts));
            }
        }
        Ok(Some(Value::Object(out)))
    }

    /// The leaves of a change that pass a `_selector` filter (CouchDB's `couch_changes`):
    /// the winner alone, or with `style=all_docs` every leaf the caller may read, each matched
    /// against its own body. Empty when none passes: the change is left out of the feed.
    pub(crate) async fn selector_leaves(
        &self,
        caller: &Caller,
        e: &ChangeEntry,
        selector: &Selector,
        all_docs: bool,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if !all_docs || e.leaves.len() <= 1 {
            // the caller's scope was checked against the winner's channels already
            if let Some(w) = e.leaves.first() {
                if self
                    .mango_doc(&e.id, &w.rev, w.deleted)
                    .await?
                    .is_some_and(|d| selector.matches(&d))
                {
                    out.push(w.rev.clone());
                }
            }
            return Ok(out);
        }
        let Some(meta) = self.store.doc_meta(&e.id).await? else {
            return Ok(out);
        };
        for leaf in &e.leaves {
            let readable = meta
                .tree
                .get(&leaf.rev)
                .is_some_and(|n| caller.can_read(&n.channels));
            if readable
                && self
                    .mango_doc(&e.id, &leaf.rev, leaf.deleted)
                    .await?
                    .is_some_and(|d| selector.matches(&d))
            {
                out.push(leaf.rev.clone());
            }
        }
        Ok(out)
    }
}

/// CouchDB's default `limit` of `_find`.
pub const DEFAULT_FIND_LIMIT: u64 = 25;

/// The warning CouchDB adds when no index serves a query (always, here: there are none).
pub const NO_INDEX_WARNING: &str =
    "No matching index found, create an index to optimize query time.";

/// A parsed `POST /{db}/_find` body.
#[derive(Debug, Clone)]
pub struct FindRequest {
    pub selector: Selector,
    pub fields: Option<Vec<FieldPath>>,
    pub limit: usize,
    pub skip: usize,
    /// Resume after this document id (decoded `bookmark`); the raw value is echoed when a
    /// page is empty.
    pub after: Option<(String, String)>,
    /// `sort: [{"_id": "desc"}]`.
    pub descending: bool,
    pub conflicts: bool,
    pub execution_stats: bool,
    /// The `use_index` named, for the "was not used" warning.
    pub use_index: Option<Vec<String>>,
}

fn named(error: &'static str, reason: impl Into<String>) -> Error {
    Error::BadRequestNamed {
        error,
        reason: reason.into(),
    }
}

fn shown(v: &Value) -> String {
    crate::short(&v.to_string())
}

/// `_find` bookmarks: base64url of the JSON string of the last document id returned.
pub fn encode_bookmark(id: &str) -> String {
    B64URL.encode(Value::String(id.to_string()).to_string())
}

fn decode_bookmark(raw: &str) -> Result<String> {
    let bad = || {
        named(
            "invalid_bookmark",
            format!(
                "Invalid bookmark value: {}",
                shown(&Value::String(raw.into()))
            ),
        )
    };
    let bytes = B64URL.decode(raw).map_err(|_| bad())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::String(id)) => Ok(id),
        _ => Err(bad()),
    }
}

impl FindRequest {
    /// Validates a `_find` body as CouchDB's `mango_opts:validate_find` does, with its error
    /// names. Accepted and ignored (a single node with no indexes): `r`, `stale`, `update`,
    /// `stable`, `partition: ""`. `use_index` names an index that cannot exist here: a warning,
    /// or 400 `invalid_index` with `allow_fallback: false`. `sort` is only possible on `_id`.
    pub fn parse(body: &Value) -> Result<FindRequest> {
        let Value::Object(m) = body else {
            return Err(Error::bad("Request body must be a JSON object"));
        };
        const KEYS: &[&str] = &[
            "selector",
            "use_index",
            "bookmark",
            "limit",
            "skip",
            "sort",
            "fields",
            "partition",
            "r",
            "conflicts",
            "stale",
            "update",
            "stable",
            "execution_stats",
            "allow_fallback",
        ];
        if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(named(
                "invalid_key",
                format!("Invalid key {} for this request.", crate::short(k)),
            ));
        }
        let selector = match m.get("selector") {
            None => {
                return Err(named(
                    "missing_required_key",
                    "Missing required key: selector",
                ))
            }
            Some(v) => Selector::parse(v)?,
        };
        let non_neg = |name: &str, default: u64| -> Result<usize> {
            match m.get(name) {
                None => Ok(default as usize),
                Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    named(
                        "invalid_non_neg_integer",
                        format!(
                            "{} is not an integer greater than or equal to zero",
                            shown(v)
                        ),
                    )
                }),
            }
        };
        let boolean = |name: &str| -> Result<Option<bool>> {
            match m.get(name) {
                None => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(v) => Err(named(
                    "invalid_boolean",
                    format!("Invalid boolean value: {}", shown(v)),
                )),
            }
        };
        let limit = non_neg("limit", DEFAULT_FIND_LIMIT)?;
        let skip = non_neg("skip", 0)?;
        let after = match m.get("bookmark") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() || s == "nil" => None,
            Some(Value::String(s)) => Some((decode_bookmark(s)?, s.clone())),
            Some(v) => {
                return Err(named(
                    "invalid_bookmark",
                    format!("Invalid bookmark value: {}", shown(v)),
                ))
            }
        };
        let descending = parse_sort(m.get("sort"))?;
        let fields = crate::mango::parse_fields(m.get("fields"))?;
        let use_index = match m.get("use_index") {
            None | Some(Value::Null) => None,
            Some(v) => parse_use_index(v)?,
        };
        if let Some(v) = m.get("r") {
            if v.as_u64().is_none_or(|r| r == 0) {
                return Err(named(
                    "invalid_pos_integer",
                    format!("{} is not an integer greater than zero", shown(v)),
                ));
            }
        }
        match m.get("stale") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::String(s)) if s == "ok" || s == "false" => {}
            Some(v) => {
                return Err(named(
                    "invalid_ok_or_false_value",
                    format!("Invalid value for stale: {}", shown(v)),
                ))
            }
        }
        match m.get("partition") {
            None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(_) => return Err(Error::bad("partition: this database is not partitioned")),
        }
        for k in ["update", "stable"] {
            boolean(k)?;
        }
        let allow_fallback = boolean("allow_fallback")?.unwrap_or(true);
        if let (Some(ix), false) = (&use_index, allow_fallback) {
            let what = match ix.as_slice() {
                [d] => format!("_design/{d}"),
                [d, v] => format!("_design/{d}, {v}"),
                _ => String::new(),
            };
            return Err(named(
                "invalid_index",
                format!(
                    "{what} specified by `use_index` could not be found or it is not suitable."
                ),
            ));
        }
        Ok(FindRequest {
            selector,
            fields,
            limit,
            skip,
            after,
            descending,
            conflicts: boolean("conflicts")?.unwrap_or(false),
            execution_stats: boolean("execution_stats")?.unwrap_or(false),
            use_index,
        })
    }

    fn warning(&self) -> String {
        let mut w = Vec::new();
        match self.use_index.as_deref() {
            Some([d]) => w.push(format!(
                "_design/{d} was not used because it does not contain a valid index for this query."
            )),
            Some([d, v]) => w.push(format!(
                "_design/{d}, {v} was not used because it is not a valid index for this query."
            )),
            _ => {}
        }
        w.push(NO_INDEX_WARNING.to_string());
        w.join("\n")
    }
}

/// `sort`: only on `_id` (the primary index); returns whether it is descending. Anything else
/// is CouchDB's 400 `no_usable_index`, as CouchDB answers when no index covers the sort.
fn parse_sort(v: Option<&Value>) -> Result<bool> {
    let items = match v {
        None => return Ok(false),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(named(
                "invalid_sort_json",
                format!("Sort must be an array of sort specs, not: {}", shown(other)),
            ))
        }
    };
    let mut specs = Vec::new();
    for item in items {
        let spec = match item {
            Value::String(f) if !f.is_empty() => (f.clone(), false),
            Value::Object(o) if o.len() == 1 => {
                let (f, dir) = o.iter().next().expect("one member");
                match dir.as_str() {
                    Some("asc") => (f.clone(), false),
                    Some("desc") => (f.clone(), true),
                    _ => {
                        return Err(named(
                            "invalid_sort_dir",
                            format!("Invalid sort direction: {}", shown(dir)),
                        ))
                    }
                }
            }
            other => {
                return Err(named(
                    "invalid_sort_field",
                    format!("Invalid sort field: {}", shown(other)),
                ))
            }
        };
        specs.push(spec);
    }
    if specs.windows(2).any(|w| w[0].1 != w[1].1) {
        return Err(named(
            "unsupported_mixed_sort",
            "Sorts currently only support a single direction for all fields.",
        ));
    }
    if specs.iter().any(|(f, _)| f != "_id") {
        return Err(named(
            "no_usable_index",
            "No index exists for this sort, try indexing by the sort fields.",
        ));
    }
    Ok(specs.first().is_some_and(|(_, desc)| *desc))
}

/// `use_index`: `"ddoc"`, `"_design/ddoc"`, `"ddoc/view"`, or `["ddoc"]`/`["ddoc","view"]`.
fn parse_use_index(v: &Value) -> Result<Option<Vec<String>>> {
    let bad = || {
        named(
            "invalid_index_name",
            format!("Invalid index name: {}", shown(v)),
        )
    };
    let parts: Vec<String> = match v {
        Value::String(s) => {
            let p: Vec<&str> = s.split('/').collect();
            match p.as_slice() {
                ["_design", rest @ ..] => rest.iter().map(|x| x.to_string()).collect(),
                other => other.iter().map(|x| x.to_string()).collect(),
            }
        }
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => return Err(bad()),
    };
    match parts.len() {
        0 => Ok(None),
        1 | 2 => Ok(Some(
            parts
                .into_iter()
                .map(|p| p.strip_prefix("_design/").map(str::to_string).unwrap_or(p))
                .collect(),
        )),
        _ => Err(bad()),
    }
}

impl Database {
    /// One document as `_find` returns it (and matches it): the winning revision rendered as
    /// `GET /{db}/{id}` does, `_conflicts` when asked, as JSON text and as the `Value` the
    /// selector reads. The one place `_find` renders a body.
    async fn find_doc(
        &self,
        caller: &Caller,
        id: &str,
        meta: &DocMeta,
        rev: &str,
        conflicts: bool,
    ) -> Result<Option<(Vec<u8>, Value)>> {
        let opts = GetOptions {
            conflicts,
            ..Default::default()
        };
        let Some(r) = self.render(caller, id, meta, rev, &opts).await? else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&r.json)
            .map_err(|e| Error::Internal(format!("rendered \"{id}\" {rev} is not JSON: {e}")))?;
        Ok(Some((r.json, value)))
    }

    /// The ids `_find` may return for a user limited to some channels, in id order, read
    /// through the channel index (documents outside those channels are never read). `None`
    /// for the admin and users with `*`: they walk every document.
    async fn visible_ids(&self, caller: &Caller) -> Result<Option<Vec<String>>> {
        let Some(user) = caller
            .user()
            .filter(|u| !u.channels.contains_key(ALL_CHANNELS))
        else {
            return Ok(None);
        };
        let mut channels: Vec<String> = user.channels.keys().cloned().collect();
        channels.push(PUBLIC_CHANNEL.to_string());
        channels.sort();
        channels.dedup();
        let mut ids = BTreeSet::new();
        // one consistent view: each document once, at the sequence it has in the view
        let view = self.store.changes_view();
        let mut entries = view.in_channels(&channels, 0);
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if !entry.deleted() && entry.channels.iter().any(|c| channels.contains(c)) {
                ids.insert(entry.id);
            }
        }
        Ok(Some(ids.into_iter().collect()))
    }

    /// `POST /{db}/_find` without indexes: walks the documents in id order (the primary
    /// index), skipping design documents, deleted documents and, on the public port, documents
    /// outside the caller's channels; matches each body against the selector. Returns the
    /// response as JSON text: `{"docs","bookmark","execution_stats"?,"warning"}`; documents
    /// keep their text (number digits, member order), also when projected.
    pub async fn find(&self, caller: &Caller, q: &FindRequest) -> Result<Vec<u8>> {
        let started = Instant::now();
        let start = q.after.as_ref().map(|(id, _)| id.as_str()).unwrap_or("");
        // candidates in result order, from `start` (inclusive)
        let mut candidates = match self.visible_ids(caller).await? {
            None => Candidates::All(self.store.docs_from(start, q.descending)),
            Some(mut ids) => {
                if q.descending {
                    ids.reverse();
                    ids.retain(|id| start.is_empty() || id.as_str() <= start);
                } else {
                    ids.retain(|id| id.as_str() >= start);
                }
                Candidates::Ids(ids.into_iter())
            }
        };
        let mut docs: Vec<Vec<u8>> = Vec::new();
        let mut last_id: Option<String> = None;
        let (mut keys_examined, mut docs_examined, mut skipped) = (0u64, 0u64, 0usize);
        if q.limit > 0 {
            while let Some(item) = candidates.next(&*self.store).await {
                let (id, meta) = item.map_err(Error::from)?;
                keys_examined += 1;
                if q.after.as_ref().is_some_and(|(a, _)| *a == id) || id.starts_with("_design/") {
                    continue;
                }
                let Some(w) = meta.tree.winner() else {
                    continue;
                };
                if w.deleted || !caller.can_read(&w.channels) {
                    continue;
                }
                let rev = w.rev.clone();
                docs_examined += 1;
                let Some((text, doc)) =
                    self.find_doc(caller, &id, &meta, &rev, q.conflicts).await?
                else {
                    continue;
                };
                if !q.selector.matches(&doc) {
                    continue;
                }
                if skipped < q.skip {
                    skipped += 1;
                    continue;
                }
                let out = match &q.fields {
                    Some(f) => crate::mango::project_text(&text, f)
                        .map_err(|e| Error::Internal(format!("projecting \"{id}\": {e}")))?,
                    None => text,
                };
                docs.push(out);
                last_id = Some(id);
                if docs.len() >= q.limit {
                    break;
                }
            }
        }
        let bookmark = match (&last_id, &q.after) {
            (Some(id), _) => encode_bookmark(id),
            (None, Some((_, raw))) => raw.clone(),
            (None, None) => "nil".to_string(),
        };
        let mut out: Vec<u8> =
            Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum::<usize>() + 160);
        out.extend_from_slice(b"{\"docs\":[");
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(d);
        }
        out.extend_from_slice(b"],\"bookmark\":");
        push_str(&mut out, &bookmark);
        if q.execution_stats {
            let stats = serde_json::json!({
                "total_keys_examined": keys_examined,
                "total_docs_examined": docs_examined,
                "total_quorum_docs_examined": 0,
                "results_returned": docs.len(),
                "execution_time_ms": started.elapsed().as_secs_f64() * 1000.0,
            });
            out.extend_from_slice(b",\"execution_stats\":");
            push_json(&mut out, &stats);
        }
        out.extend_from_slice(b",\"warning\":");
        push_str(&mut out, &q.warning());
        out.push(b'}');
        Ok(out)
    }
}

/// The documents `_find` walks: every document in id order, or the ones listed (read one by
/// one; those gone since are skipped).
enum Candidates<'a> {
    All(syncgate_storage::Docs<'a>),
    Ids(std::vec::IntoIter<String>),
}

impl Candidates<'_> {
    async fn next(
        &mut self,
        store: &dyn syncgate_storage::DatabaseStore,
    ) -> Option<syncgate_storage::Result<(String, DocMeta)>> {
        match self {
            Candidates::All(docs) => docs.next().await,
            Candidates::Ids(ids) => {
                for id in ids.by_ref() {
                    match store.doc_meta(&id).await {
                        Ok(Some(m)) => return Some(Ok((id, m))),
                        Ok(None) => continue,
                        Err(e) => return Some(Err(e)),
                    }
                }
                None
            }
        }
    }
}
