//! Document handlers: CRUD, bulk operations, `_all_docs`, attachments and `_local` docs.
//!
//! Request bodies arrive as parsed JSON; this module validates them as documents, turns them
//! into storage writes, waits for durability and renders revisions back to CouchDB JSON.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{json, Map, Value};
use syncgate_auth::Caller;
use syncgate_storage::{
    generation, parse_rev, AttachmentInput, AttachmentMeta, DocMeta, DocWrite, StorageError,
    WriteOutcome,
};

use crate::database::Database;
use crate::error::{Error, Result};

/// Longest document id, in bytes.
pub const MAX_DOC_ID: usize = 1024;
/// Deepest JSON nesting accepted in a document.
pub const MAX_DEPTH: usize = 64;

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Named attachment inputs of one write.
type Attachments = Vec<(String, AttachmentInput)>;

/// Options of `GET /{db}/{doc}` (and of each `_bulk_get` entry).
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub rev: Option<String>,
    pub revs: bool,
    pub revs_info: bool,
    pub conflicts: bool,
    pub deleted_conflicts: bool,
    pub latest: bool,
    pub open_revs: Option<OpenRevs>,
    pub attachments: bool,
    pub atts_since: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub enum OpenRevs {
    All,
    List(Vec<String>),
}

/// What a document GET returns.
pub enum GetResult {
    Doc(Value),
    /// `open_revs`: `[{"ok":doc}|{"missing":rev}]`.
    OpenRevs(Vec<Value>),
}

/// Options of `_all_docs`.
#[derive(Debug, Clone, Default)]
pub struct AllDocsOptions {
    pub keys: Option<Vec<String>>,
    pub include_docs: bool,
    pub conflicts: bool,
    pub start: Option<String>,
    pub end: Option<String>,
    pub inclusive_end: bool,
    pub limit: Option<usize>,
    pub skip: usize,
    pub descending: bool,
    pub update_seq: bool,
}

/// Checks a document id (not `_local/`).
pub fn validate_doc_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::bad("Document id must not be empty"));
    }
    if id.len() > MAX_DOC_ID {
        return Err(Error::bad(format!(
            "Document id is longer than {MAX_DOC_ID} bytes"
        )));
    }
    if id.starts_with('_') && !id.starts_with("_design/") {
        return Err(Error::bad(format!(
            "Invalid doc ID \"{}\": ids starting with '_' are reserved",
            crate::short(id)
        )));
    }
    Ok(())
}

/// Nesting depth of a JSON value (scalars are 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A 128-bit random id, 32 hex digits.
pub fn new_doc_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Special members, split from a document body.
struct Specials {
    id: Option<String>,
    rev: Option<String>,
    deleted: bool,
    revisions: Option<Value>,
    attachments: Vec<(String, AttachmentInput)>,
}

fn split_body(mut body: Map<String, Value>) -> Result<(Specials, Map<String, Value>)> {
    if depth(&Value::Object(body.clone())) > MAX_DEPTH {
        return Err(Error::bad(format!(
            "Document is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let id = match body.remove("_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Error::bad("_id must be a string")),
    };
    let rev = match body.remove("_rev") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(Error::bad("_rev must be a string")),
    };
    let deleted = match body.remove("_deleted") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(Error::bad("_deleted must be a boolean")),
    };
    let revisions = body.remove("_revisions");
    let attachments = match body.remove("_attachments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => parse_attachments(m)?,
        Some(_) => return Err(Error::bad("_attachments must be an object")),
    };
    for ignored in [
        "_conflicts",
        "_deleted_conflicts",
        "_revs_info",
        "_local_seq",
        "_exp",
    ] {
        body.remove(ignored);
    }
    if let Some(k) = body.keys().find(|k| k.starts_with('_')) {
        return Err(Error::bad(format!(
            "Bad special document member: {}",
            crate::short(k)
        )));
    }
    Ok((
        Specials {
            id,
            rev,
            deleted,
            revisions,
            attachments,
        },
        body,
    ))
}

fn parse_attachments(m: Map<String, Value>) -> Result<Vec<(String, AttachmentInput)>> {
    let mut out = Vec::with_capacity(m.len());
    for (name, v) in m {
        if name.is_empty() || name.starts_with('_') || name.len() > MAX_DOC_ID {
            return Err(Error::bad(format!(
                "Invalid attachment name \"{}\": must be non-empty and not start with '_'",
                crate::short(&name)
            )));
        }
        let Value::Object(a) = v else {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" must be an object"
            )));
        };
        let content_type = match a.get("content_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(Error::bad(format!(
                    "content_type of attachment \"{name}\" must be a string"
                )))
            }
        };
        let revpos = a.get("revpos").and_then(Value::as_u64);
        let input = if a.get("stub").and_then(Value::as_bool) == Some(true) {
            let digest = match a.get("digest") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Err(Error::bad(format!(
                        "digest of attachment \"{name}\" must be a string"
                    )))
                }
            };
            AttachmentInput::Stub {
                digest,
                revpos,
                content_type,
            }
        } else if let Some(data) = a.get("data") {
            let Value::String(data) = data else {
                return Err(Error::bad(format!(
                    "data of attachment \"{name}\" must be a base64 string"
                )));
            };
            let data = B64.decode(data.as_bytes()).map_err(|_| {
                Error::bad(format!("data of attachment \"{name}\" is not valid base64"))
            })?;
            if let Some(Value::String(d)) = a.get("digest") {
                if d.starts_with("md5-") && *d != syncgate_storage::attachment_digest(&data) {
                    return Err(Error::bad(format!(
                        "digest of attachment \"{name}\" does not match its data"
                    )));
                }
            }
            AttachmentInput::Data {
                content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
                data,
                revpos,
            }
        } else if a.get("follows").and_then(Value::as_bool) == Some(true) {
            return Err(Error::bad(format!(
                "Attachment \"{name}\" uses multipart 'follows'; send the data inline as base64"
            )));
        } else {
            return Err(Error::bad(format!("Missing data of attachment \"{name}\"")));
        };
        out.push((name, input));
    }
    Ok(out)
}

/// The channels a revision is routed to: its `channels` property (string or array of strings).
pub fn channels_of(body: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = match body.get("channels") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    out.retain(|c| !c.is_empty() && !c.contains('\0') && c.len() <= 250);
    out.sort();
    out.dedup();
    out
}

/// History of a replicated revision from `_revisions` (or `_rev` alone), newest first.
fn history_from(rev: Option<&str>, revisions: Option<&Value>) -> Result<Vec<String>> {
    let bad = || Error::bad("Bad _revisions: expected {\"start\":N,\"ids\":[...]} matching _rev");
    let Some(revs) = revisions else {
        let rev = rev.ok_or_else(bad)?;
        parse_rev(rev)?;
        return Ok(vec![rev.to_string()]);
    };
    let start = revs.get("start").and_then(Value::as_u64).ok_or_else(bad)?;
    let ids = revs.get("ids").and_then(Value::as_array).ok_or_else(bad)?;
    if ids.is_empty() || start < ids.len() as u64 || ids.len() > 100_000 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let s = id.as_str().ok_or_else(bad)?;
        let r = format!("{}-{}", start - i as u64, s);
        parse_rev(&r)?;
        out.push(r);
    }
    if let Some(rev) = rev {
        if rev != out[0] {
            return Err(Error::bad(
                "Bad _revisions: the first id does not match _rev",
            ));
        }
    }
    Ok(out)
}

impl Database {
    /// Turns a document body into a storage write.
    fn prepare(
        &self,
        id_hint: Option<&str>,
        body: Value,
        parent: Option<String>,
        new_edits: bool,
    ) -> Result<DocWrite> {
        let Value::Object(body) = body else {
            return Err(Error::bad("Document body must be a JSON object"));
        };
        let (sp, body) = split_body(body)?;
        let id = match (id_hint, &sp.id) {
            (Some(path), Some(b)) if path != b => {
                return Err(Error::bad(
                    "The document ID in the body does not match the document ID in the path",
                ))
            }
            (Some(path), _) => path.to_string(),
            (None, Some(b)) => b.clone(),
            (None, None) if new_edits => new_doc_id(),
            (None, None) => {
                return Err(Error::bad(
                    "Document must have an _id when new_edits is false",
                ))
            }
        };
        validate_doc_id(&id)?;
        let channels = channels_of(&body);
        let revs_limit = self.config.revs_limit();
        if new_edits {
            let parent = match (parent, sp.rev) {
                (Some(a), Some(b)) if a != b => {
                    return Err(Error::bad("Revision IDs provided do not match"))
                }
                (a, b) => a.or(b),
            };
            if let Some(p) = &parent {
                parse_rev(p)?;
            }
            Ok(DocWrite::Edit {
                id,
                parent,
                deleted: sp.deleted,
                body,
                attachments: sp.attachments,
                channels,
                revs_limit,
                must_exist: false,
            })
        } else {
            let history = history_from(
                sp.rev.as_deref().or(parent.as_deref()),
                sp.revisions.as_ref(),
            )?;
            Ok(DocWrite::Replicate {
                id,
                history,
                deleted: sp.deleted,
                body,
                attachments: sp.attachments,
                channels,
                revs_limit,
            })
        }
    }

    /// Writes, waits for durability, counts.
    pub async fn write(
        &self,
        writes: Vec<DocWrite>,
    ) -> Result<Vec<Result<WriteOutcome, StorageError>>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let (results, ticket) = self.store.write_docs_shared(writes).await?;
        self.store.durable(ticket).await?;
        self.note_written(
            results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|o| o.seq > 0))
                .count(),
        );
        Ok(results)
    }

    async fn write_one(&self, w: DocWrite) -> Result<WriteOutcome> {
        let mut r = self.write(vec![w]).await?;
        Ok(r.pop()
            .ok_or_else(|| Error::Internal("empty write result".into()))??)
    }

    /// `PUT /{db}/{doc}`.
    pub async fn put_doc(
        &self,
        id: &str,
        body: Value,
        rev: Option<String>,
        new_edits: bool,
    ) -> Result<WriteOutcome> {
        let w = self.prepare(Some(id), body, rev, new_edits)?;
        self.write_one(w).await
    }

    /// `POST /{db}/`.
    pub async fn post_doc(&self, body: Value) -> Result<WriteOutcome> {
        if body.get("_rev").is_some_and(|r| !r.is_null()) {
            return Err(Error::bad(
                "POST creates a new document: _rev is not allowed (use PUT)",
            ));
        }
        let w = self.prepare(None, body, None, true)?;
        self.write_one(w).await
    }

    /// `DELETE /{db}/{doc}?rev=`.
    pub async fn delete_doc(&self, id: &str, rev: Option<String>) -> Result<WriteOutcome> {
        validate_doc_id(id)?;
        if let Some(r) = &rev {
            parse_rev(r)?;
        }
        let meta = self.store.doc_meta(id)?;
        if meta.is_none() {
            return Err(Error::not_found("missing"));
        }
        if rev.is_none() {
            return Err(Error::Conflict(
                "Document update conflict: DELETE needs ?rev=".into(),
            ));
        }
        self.write_one(DocWrite::Edit {
            id: id.to_string(),
            parent: rev,
            deleted: true,
            body: Map::new(),
            attachments: Vec::new(),
            channels: Vec::new(),
            revs_limit: self.config.revs_limit(),
            must_exist: true,
        })
        .await
    }

    /// `POST /{db}/_bulk_docs`.
    pub async fn bulk_docs(&self, body: Value) -> Result<Vec<Value>> {
        let Value::Object(mut req) = body else {
            return Err(Error::bad(
                "Request body must be a JSON object with a 'docs' array",
            ));
        };
        let new_edits = match req.get("new_edits") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::bad("new_edits must be a boolean")),
        };
        let Some(Value::Array(docs)) = req.remove("docs") else {
            return Err(Error::bad(
                "missing 'docs' property (an array of documents)",
            ));
        };
        if docs.iter().any(|d| !d.is_object()) {
            return Err(Error::bad(
                "Document body must be JSON: every entry of 'docs' must be an object",
            ));
        }
        // Every document is validated before anything is written (as CouchDB does): one
        // malformed document rejects the whole request, so a batch is never half-applied
        // because of bad input. Conflicts stay per-document results.
        let mut results: Vec<Option<Value>> = vec![None; docs.len()];
        let mut writes = Vec::new();
        let mut positions = Vec::new();
        let mut locals = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            let id = doc.get("_id").and_then(Value::as_str).map(str::to_string);
            let in_doc = |e: Error| match e {
                Error::BadRequest(m) => Error::BadRequest(format!(
                    "docs[{i}]{}: {m}",
                    id.as_deref()
                        .map(|d| format!(" (\"{}\")", crate::short(d)))
                        .unwrap_or_default()
                )),
                other => other,
            };
            if let Some(local) = id.as_deref().and_then(|s| s.strip_prefix("_local/")) {
                validate_local_doc(local, &doc).map_err(in_doc)?;
                locals.push((i, local.to_string(), doc));
                continue;
            }
            let w = self.prepare(None, doc, None, new_edits).map_err(in_doc)?;
            positions.push(i);
            writes.push(w);
        }
        let ids: Vec<String> = writes.iter().map(|w| w.id().to_string()).collect();
        for ((pos, id), r) in positions
            .into_iter()
            .zip(ids)
            .zip(self.write(writes).await?)
        {
            results[pos] = Some(match r {
                Ok(o) => json!({"ok": true, "id": o.id, "rev": o.rev}),
                Err(e) => error_row(Some(&id), &e.into()),
            });
        }
        for (i, local, doc) in locals {
            results[i] = Some(match self.put_local(&local, doc).await {
                Ok(rev) => json!({"ok": true, "id": format!("_local/{local}"), "rev": rev}),
                Err(e) => error_row(Some(&format!("_local/{local}")), &e),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Value::Null))
            .collect())
    }

    /// Loads a document's metadata; 404 `missing` when absent.
    pub fn meta(&self, id: &str) -> Result<DocMeta> {
        self.store
            .doc_meta(id)?
            .ok_or_else(|| Error::not_found("missing"))
    }

    /// `GET /{db}/{doc}`.
    pub fn get_doc(&self, caller: &Caller, id: &str, opts: &GetOptions) -> Result<GetResult> {
        if opts.rev.is_some() && opts.open_revs.is_some() {
            return Err(Error::bad(
                "cannot specify both 'rev' and 'open_revs' query parameters",
            ));
        }
        validate_doc_id(id)?;
        if let Some(r) = &opts.rev {
            parse_rev(r)?;
        }
        if let Some(open) = &opts.open_revs {
            let meta = self.meta(id)?;
            let revs: Vec<String> = match open {
                OpenRevs::All => meta
                    .tree
                    .sorted_leaves()
                    .iter()
                    .map(|n| n.rev.clone())
                    .collect(),
                OpenRevs::List(l) => {
                    let mut out = Vec::new();
                    for r in l {
                        parse_rev(r)?;
                        if opts.latest && meta.tree.contains(r) && !meta.tree.is_leaf(r) {
                            for leaf in meta.tree.sorted_leaves() {
                                if meta.tree.history(&leaf.rev).contains(r)
                                    && !out.contains(&leaf.rev)
                                {
                                    out.push(leaf.rev.clone());
                                }
                            }
                        } else if !out.contains(r) {
                            out.push(r.clone());
                        }
                    }
                    out
                }
            };
            let mut rows = Vec::with_capacity(revs.len());
            for r in revs {
                match self.render(caller, id, &meta, &r, opts)? {
                    Some(doc) => rows.push(json!({"ok": doc})),
                    None => rows.push(json!({"missing": r})),
                }
            }
            return Ok(GetResult::OpenRevs(rows));
        }
        let meta = self.meta(id)?;
        let rev = match &opts.rev {
            Some(r) => {
                parse_rev(r)?;
                r.clone()
            }
            None => {
                let winner = live_winner(&meta)?;
                if !caller.can_read(&winner.channels) {
                    return Err(forbidden_doc());
                }
                winner.rev.clone()
            }
        };
        let doc = self
            .render(caller, id, &meta, &rev, opts)?
            .ok_or_else(|| Error::not_found("missing"))?;
        Ok(GetResult::Doc(doc))
    }

    /// Renders one revision as CouchDB JSON; `None` when the tree or the store lacks it.
    /// A revision the caller may not read renders as a `_removed` stub (how replicators learn
    /// of channel removals).
    pub fn render(
        &self,
        caller: &Caller,
        id: &str,
        meta: &DocMeta,
        rev: &str,
        opts: &GetOptions,
    ) -> Result<Option<Value>> {
        let Some(node) = meta.tree.get(rev) else {
            return Ok(None);
        };
        let mut out = Map::new();
        out.insert("_id".into(), Value::String(id.to_string()));
        out.insert("_rev".into(), Value::String(rev.to_string()));
        if !caller.can_read(&node.channels) {
            out.insert("_removed".into(), Value::Bool(true));
            if opts.revs {
                out.insert("_revisions".into(), revisions_json(meta, rev));
            }
            return Ok(Some(Value::Object(out)));
        }
        if !node.has_body {
            return Ok(None);
        }
        let Some(mut body) = self.store.rev_body(id, rev)? else {
            return Ok(None);
        };
        if node.deleted {
            out.insert("_deleted".into(), Value::Bool(true));
        }
        let atts = body.remove("_attachments");
        out.extend(body);
        if let Some(Value::Object(atts)) = atts {
            out.insert(
                "_attachments".into(),
                Value::Object(self.render_attachments(meta, rev, atts, opts)?),
            );
        }
        if opts.revs {
            out.insert("_revisions".into(), revisions_json(meta, rev));
        }
        if opts.revs_info {
            let info: Vec<Value> = meta
                .tree
                .history(rev)
                .into_iter()
                .map(|r| {
                    let n = meta.tree.get(&r);
                    let status = match n {
                        Some(n) if n.deleted => "deleted",
                        Some(n) if n.has_body => "available",
                        _ => "missing",
                    };
                    json!({"rev": r, "status": status})
                })
                .collect();
            out.insert("_revs_info".into(), Value::Array(info));
        }
        let is_winner = meta.tree.winner().is_some_and(|w| w.rev == rev);
        if opts.conflicts && is_winner {
            let c: Vec<Value> = meta
                .tree
                .sorted_leaves()
                .iter()
                .filter(|l| !l.deleted && l.rev != rev)
                .map(|l| Value::String(l.rev.clone()))
                .collect();
            if !c.is_empty() {
                out.insert("_conflicts".into(), Value::Array(c));
            }
        }
        if opts.deleted_conflicts && is_winner {
            let c: Vec<Value> = meta
                .tree
                .sorted_leaves()
                .iter()
                .filter(|l| l.deleted && l.rev != rev)
                .map(|l| Value::String(l.rev.clone()))
                .collect();
            if !c.is_empty() {
                out.insert("_deleted_conflicts".into(), Value::Array(c));
            }
        }
        Ok(Some(Value::Object(out)))
    }

    fn render_attachments(
        &self,
        meta: &DocMeta,
        rev: &str,
        atts: Map<String, Value>,
        opts: &GetOptions,
    ) -> Result<Map<String, Value>> {
        // `atts_since` (CouchDB): inline the bodies of attachments changed after the newest
        // listed revision that is an ancestor of this one; it implies `attachments=true`.
        let since_gen = opts.atts_since.as_ref().map(|since| {
            let history = meta.tree.history(rev);
            since
                .iter()
                .filter(|r| history.contains(r))
                .map(|r| generation(r))
                .max()
                .unwrap_or(0)
        });
        let mut out = Map::new();
        for (name, v) in atts {
            let Ok(m) = serde_json::from_value::<AttachmentMeta>(v) else {
                continue;
            };
            let include = match since_gen {
                Some(g) => m.revpos > g,
                None => opts.attachments,
            };
            let mut a = json!({
                "content_type": m.content_type,
                "digest": m.digest,
                "length": m.length,
                "revpos": m.revpos,
            });
            if include {
                let data = self.store.attachment(&m.digest)?.ok_or_else(|| {
                    Error::Internal(format!("attachment data {} missing", m.digest))
                })?;
                a["data"] = Value::String(B64.encode(data));
            } else {
                a["stub"] = Value::Bool(true);
            }
            out.insert(name, a);
        }
        Ok(out)
    }

    /// `POST /{db}/_bulk_get` (CouchDB JSON form): `{"results":[{"id","docs":[...]}]}`, one
    /// result per requested entry, in order. A malformed request (not an object, `docs` not an
    /// array, an entry without a string `id`, a malformed `rev` or `atts_since`) is a 400 as a
    /// whole; a revision that does not exist is an `{"error":{...}}` entry.
    pub fn bulk_get(&self, caller: &Caller, body: &Value, base: &GetOptions) -> Result<Value> {
        let docs = body
            .get("docs")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::bad("missing 'docs' property (an array of {id, rev})"))?;
        let mut requests = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let bad = |what: &str| Error::bad(format!("_bulk_get docs[{i}]: {what}"));
            let Value::Object(d) = d else {
                return Err(bad("each entry must be an object {\"id\", \"rev\"}"));
            };
            let id = match d.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return Err(bad("'id' must be a non-empty string")),
            };
            let rev = match d.get("rev") {
                None | Some(Value::Null) => None,
                Some(Value::String(r)) => {
                    parse_rev(r).map_err(|e| bad(&e.to_string()))?;
                    Some(r.clone())
                }
                Some(_) => return Err(bad("'rev' must be a string")),
            };
            let mut opts = base.clone();
            opts.revs = true;
            match d.get("atts_since") {
                None | Some(Value::Null) => {}
                Some(Value::Array(since)) => {
                    let mut list = Vec::with_capacity(since.len());
                    for r in since {
                        let r = r
                            .as_str()
                            .ok_or_else(|| bad("'atts_since' must be an array of revisions"))?;
                        parse_rev(r).map_err(|e| bad(&e.to_string()))?;
                        list.push(r.to_string());
                    }
                    opts.atts_since = Some(list);
                }
                Some(_) => return Err(bad("'atts_since' must be an array of revisions")),
            }
            requests.push((id, rev, opts));
        }
        let mut results = Vec::with_capacity(requests.len());
        for (id, rev, mut opts) in requests {
            let outcome = match &rev {
                Some(r) => {
                    opts.open_revs = Some(OpenRevs::List(vec![r.clone()]));
                    self.get_doc(caller, &id, &opts)
                }
                None => self.get_doc(caller, &id, &opts),
            };
            let entries: Vec<Value> = match outcome {
                Ok(GetResult::OpenRevs(rows)) => rows
                    .into_iter()
                    .map(|row| match row.get("missing") {
                        Some(m) => json!({"error": {"id": id, "rev": m, "error": "not_found", "reason": "missing"}}),
                        None => {
                            let doc = &row["ok"];
                            if doc.get("_removed").is_some() {
                                json!({"error": {"id": id, "rev": doc["_rev"], "error": "forbidden",
                                    "reason": "You are not allowed to see this revision"}})
                            } else {
                                row
                            }
                        }
                    })
                    .collect(),
                Ok(GetResult::Doc(doc)) => vec![json!({"ok": doc})],
                Err(e) => {
                    let (_, name) = e.status();
                    vec![json!({"error": {"id": id, "rev": rev.clone().unwrap_or_default(), "error": name, "reason": e.to_string()}})]
                }
            };
            results.push(json!({"id": id, "docs": entries}));
        }
        Ok(json!({"results": results}))
    }

    /// `POST /{db}/_revs_diff`.
    pub fn revs_diff(&self, caller: &Caller, body: &Value) -> Result<Value> {
        let Value::Object(req) = body else {
            return Err(Error::bad(
                "_revs_diff expects an object of {docid: [revs]}",
            ));
        };
        let mut out = Map::new();
        for (id, revs) in req {
            let Some(revs) = revs.as_array() else {
                return Err(Error::bad(format!(
                    "_revs_diff: the value for \"{id}\" must be an array of revisions"
                )));
            };
            let mut list = Vec::with_capacity(revs.len());
            for r in revs {
                let r = r
                    .as_str()
                    .ok_or_else(|| Error::bad("_revs_diff: revisions must be strings"))?;
                parse_rev(r)?;
                list.push(r.to_string());
            }
            if !caller.is_admin() && id.starts_with("_design/") {
                continue;
            }
            let meta = self.store.doc_meta(id)?;
            let missing: Vec<&String> = list
                .iter()
                .filter(|r| !meta.as_ref().is_some_and(|m| m.tree.contains(r)))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut entry = json!({"missing": missing});
            if let Some(meta) = &meta {
                let max_gen = missing.iter().map(|r| generation(r)).max().unwrap_or(0);
                let anc: Vec<String> = meta
                    .tree
                    .leaves()
                    .iter()
                    .filter(|l| generation(&l.rev) < max_gen)
                    .map(|l| l.rev.clone())
                    .collect();
                if !anc.is_empty() {
                    entry["possible_ancestors"] = json!(anc);
                }
            }
            out.insert(id.clone(), entry);
        }
        Ok(Value::Object(out))
    }

    /// `GET|POST /{db}/_all_docs`.
    /// `_all_docs` as JSON text. Each row is serialized into the body as soon as it is built, so
    /// a response over many documents never holds them all as `Value` trees.
    pub fn all_docs(&self, caller: &Caller, opts: &AllDocsOptions) -> Result<String> {
        // keys in the order serde_json writes an object: offset, rows, total_rows, update_seq
        let mut out = format!("{{\"offset\":{},\"rows\":[", opts.skip);
        let mut rows = 0usize;
        let push = |out: &mut String, rows: &mut usize, row: &Value| {
            if *rows > 0 {
                out.push(',');
            }
            *rows += 1;
            // writing to a String cannot fail
            let _ = std::fmt::Write::write_fmt(out, format_args!("{row}"));
        };
        let get_opts = GetOptions {
            conflicts: opts.conflicts,
            ..Default::default()
        };
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut skipped = 0;
        if let Some(keys) = &opts.keys {
            for key in keys {
                if rows >= limit {
                    break;
                }
                let row = match self.store.doc_meta(key)? {
                    None => json!({"key": key, "error": "not_found"}),
                    Some(meta) => {
                        let Some(w) = meta.tree.winner() else {
                            continue;
                        };
                        if !caller.can_read(&w.channels) {
                            json!({"key": key, "error": "forbidden"})
                        } else if w.deleted {
                            json!({"id": key, "key": key, "value": {"rev": w.rev, "deleted": true}, "doc": Value::Null})
                        } else {
                            let mut row = json!({"id": key, "key": key, "value": {"rev": w.rev}});
                            if opts.include_docs {
                                row["doc"] = self
                                    .render(caller, key, &meta, &w.rev, &get_opts)?
                                    .unwrap_or(Value::Null);
                            }
                            row
                        }
                    }
                };
                if skipped < opts.skip {
                    skipped += 1;
                    continue;
                }
                push(&mut out, &mut rows, &row);
            }
        } else {
            let start = opts.start.clone().unwrap_or_default();
            for item in self.store.docs_from(&start, opts.descending) {
                let (id, meta) = item?;
                if let Some(end) = &opts.end {
                    let past = if opts.descending {
                        if opts.inclusive_end {
                            id < *end
                        } else {
                            id <= *end
                        }
                    } else if opts.inclusive_end {
                        id > *end
                    } else {
                        id >= *end
                    };
                    if past {
                        break;
                    }
                }
                let Some(w) = meta.tree.winner() else {
                    continue;
                };
                if w.deleted || !caller.can_read(&w.channels) {
                    continue;
                }
                if skipped < opts.skip {
                    skipped += 1;
                    continue;
                }
                if rows >= limit {
                    break;
                }
                let mut row = json!({"id": id, "key": id, "value": {"rev": w.rev}});
                if opts.include_docs {
                    row["doc"] = self
                        .render(caller, &id, &meta, &w.rev, &get_opts)?
                        .unwrap_or(Value::Null);
                }
                push(&mut out, &mut rows, &row);
            }
        }
        out.push_str(&format!("],\"total_rows\":{}", self.store.doc_count()?));
        if opts.update_seq {
            out.push_str(&format!(",\"update_seq\":{}", self.store.last_seq()));
        }
        out.push('}');
        Ok(out)
    }

    // --- attachments ----------------------------------------------------------------------------

    /// `GET /{db}/{doc}/{att}`: metadata and bytes.
    pub fn get_attachment(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        rev: Option<&str>,
    ) -> Result<(AttachmentMeta, Vec<u8>)> {
        validate_doc_id(id)?;
        let meta = self.meta(id)?;
        let node = match rev {
            Some(r) => {
                parse_rev(r)?;
                meta.tree
                    .get(r)
                    .ok_or_else(|| Error::not_found("missing"))?
            }
            None => live_winner(&meta)?,
        };
        if !caller.can_read(&node.channels) {
            return Err(forbidden_doc());
        }
        let body = self
            .store
            .rev_body(id, &node.rev)?
            .ok_or_else(|| Error::not_found("missing"))?;
        let att = body
            .get("_attachments")
            .and_then(|a| a.get(name))
            .and_then(|v| serde_json::from_value::<AttachmentMeta>(v.clone()).ok())
            .ok_or_else(|| {
                Error::not_found(format!("missing attachment \"{}\"", crate::short(name)))
            })?;
        let data = self
            .store
            .attachment(&att.digest)?
            .ok_or_else(|| Error::Internal(format!("attachment data {} missing", att.digest)))?;
        Ok((att, data))
    }

    /// `PUT /{db}/{doc}/{att}?rev=`: a new revision with the attachment added or replaced.
    pub async fn put_attachment(
        &self,
        id: &str,
        name: &str,
        rev: Option<String>,
        content_type: String,
        data: Vec<u8>,
    ) -> Result<WriteOutcome> {
        validate_doc_id(id)?;
        parse_attachment_name(name)?;
        let (body, mut atts) = self.current_for_attachment_edit(id, rev.as_deref())?;
        atts.retain(|(n, _)| n != name);
        atts.push((
            name.to_string(),
            AttachmentInput::Data {
                content_type,
                data,
                revpos: None,
            },
        ));
        let channels = channels_of(&body);
        self.write_one(DocWrite::Edit {
            id: id.to_string(),
            parent: rev,
            deleted: false,
            body,
            attachments: atts,
            channels,
            revs_limit: self.config.revs_limit(),
            must_exist: false,
        })
        .await
    }

    /// `DELETE /{db}/{doc}/{att}?rev=`.
    pub async fn delete_attachment(
        &self,
        id: &str,
        name: &str,
        rev: Option<String>,
    ) -> Result<WriteOutcome> {
        validate_doc_id(id)?;
        let Some(r) = rev.clone() else {
            return Err(Error::Conflict(
                "Cannot modify attachments without a specific rev ID".into(),
            ));
        };
        let meta = self
            .store
            .doc_meta(id)?
            .ok_or_else(|| Error::not_found("Document specified is not found"))?;
        if !meta.tree.is_leaf(&r) {
            return Err(Error::Conflict("Document update conflict".into()));
        }
        let (body, mut atts) = self.current_for_attachment_edit(id, Some(&r))?;
        let before = atts.len();
        atts.retain(|(n, _)| n != name);
        if atts.len() == before {
            return Err(Error::not_found(format!(
                "Attachment \"{}\" is not found",
                crate::short(name)
            )));
        }
        let channels = channels_of(&body);
        self.write_one(DocWrite::Edit {
            id: id.to_string(),
            parent: rev,
            deleted: false,
            body,
            attachments: atts,
            channels,
            revs_limit: self.config.revs_limit(),
            must_exist: true,
        })
        .await
    }

    /// The body (without `_attachments`) and attachment stubs of the revision being edited.
    fn current_for_attachment_edit(
        &self,
        id: &str,
        rev: Option<&str>,
    ) -> Result<(Map<String, Value>, Attachments)> {
        let meta = self.store.doc_meta(id)?;
        let (meta, rev) = match (meta, rev) {
            (None, None) => return Ok((Map::new(), Vec::new())),
            (None, Some(_)) => return Err(Error::Conflict("Document update conflict".into())),
            (Some(m), Some(r)) => {
                parse_rev(r)?;
                (m, r.to_string())
            }
            (Some(m), None) if !m.is_live() => return Ok((Map::new(), Vec::new())),
            (Some(_), None) => {
                return Err(Error::Conflict(
                    "Cannot modify attachments without a specific rev ID".into(),
                ))
            }
        };
        if !meta.tree.is_leaf(&rev) {
            return Err(Error::Conflict("Document update conflict".into()));
        }
        let mut body = self.store.rev_body(id, &rev)?.unwrap_or_default();
        let atts = match body.remove("_attachments") {
            Some(Value::Object(m)) => m
                .into_iter()
                .map(|(n, v)| {
                    let digest = v.get("digest").and_then(Value::as_str).map(str::to_string);
                    (
                        n,
                        AttachmentInput::Stub {
                            digest,
                            revpos: None,
                            content_type: None,
                        },
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok((body, atts))
    }

    // --- local documents ------------------------------------------------------------------------

    pub fn get_local(&self, id: &str) -> Result<Value> {
        validate_local_id(id)?;
        let doc = self
            .store
            .get_local(id)?
            .ok_or_else(|| Error::not_found("missing"))?;
        let mut out = Map::new();
        out.insert("_id".into(), Value::String(format!("_local/{id}")));
        out.insert("_rev".into(), Value::String(doc.rev));
        out.extend(doc.body);
        Ok(Value::Object(out))
    }

    /// Stores a `_local` doc; the body's `_rev` must match the stored one.
    pub async fn put_local(&self, id: &str, body: Value) -> Result<String> {
        validate_local_id(id)?;
        let Value::Object(mut body) = body else {
            return Err(Error::bad("Document body must be a JSON object"));
        };
        if depth(&Value::Object(body.clone())) > MAX_DEPTH {
            return Err(Error::bad(format!(
                "Document is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let rev = match body.remove("_rev") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(Error::bad("_rev must be a string")),
        };
        body.retain(|k, _| !k.starts_with('_'));
        let (rev, ticket) = self.store.put_local(id, rev.as_deref(), body)?;
        self.store.durable(ticket).await?;
        Ok(rev)
    }

    pub async fn delete_local(&self, id: &str, rev: Option<&str>) -> Result<()> {
        validate_local_id(id)?;
        let ticket = self.store.delete_local(id, rev)?;
        self.store.durable(ticket).await?;
        Ok(())
    }
}

fn parse_attachment_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('_') || name.len() > MAX_DOC_ID {
        return Err(Error::bad(
            "Invalid attachment name: must be non-empty and not start with '_'",
        ));
    }
    Ok(())
}

/// Checks a `_local` document before any write of a batch happens.
fn validate_local_doc(id: &str, doc: &Value) -> Result<()> {
    validate_local_id(id)?;
    if depth(doc) > MAX_DEPTH {
        return Err(Error::bad(format!(
            "Document is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match doc.get("_rev") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(Error::bad("_rev must be a string")),
    }
}

fn validate_local_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_DOC_ID {
        return Err(Error::bad("Invalid _local document id"));
    }
    Ok(())
}

/// The winning revision of a document that is not deleted (404 `missing`/`deleted` otherwise).
fn live_winner(meta: &DocMeta) -> Result<&syncgate_storage::RevNode> {
    let w = meta
        .tree
        .winner()
        .ok_or_else(|| Error::not_found("missing"))?;
    if w.deleted {
        return Err(Error::not_found("deleted"));
    }
    Ok(w)
}

fn forbidden_doc() -> Error {
    Error::Forbidden("You are not allowed to see this document".into())
}

fn revisions_json(meta: &DocMeta, rev: &str) -> Value {
    let hist = meta.tree.history(rev);
    let ids: Vec<&str> = hist
        .iter()
        .map(|r| r.split_once('-').map(|(_, h)| h).unwrap_or(r))
        .collect();
    json!({"start": generation(rev), "ids": ids})
}

fn error_row(id: Option<&str>, e: &Error) -> Value {
    let (status, name) = e.status();
    json!({"id": id, "error": name, "reason": e.to_string(), "status": status})
}
