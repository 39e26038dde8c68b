//! Document handlers: CRUD, bulk operations, `_all_docs`, attachments and `_local` docs.
//!
//! Request bodies arrive as JSON text; this module validates them as documents, turns them
//! into storage writes, waits for durability and renders revisions back to CouchDB JSON.
//!
//! Fidelity: a document's own members travel as the client's JSON text (member order and every
//! number's digits kept, see `syncgate_storage::json`); a parsed `Value` view exists only where
//! a rule must look inside (channels, the revision id). Rendered documents are JSON text too,
//! written member by member in CouchDB's order (`_id`, `_rev`, `_deleted`, the body,
//! `_revisions`, `_revs_info`, `_conflicts`, `_deleted_conflicts`, `_attachments`).

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use syncgate_auth::Caller;
use syncgate_storage::json::{
    push_compact, push_json, push_key, push_members, push_str, RawMembers,
};
use syncgate_storage::{
    canonical_json, generation, parse_rev, AttachmentInput, AttachmentMeta, DocMeta, DocWrite,
    StorageError, StoredBody, WriteOutcome,
};

use crate::database::Database;
use crate::error::{Error, Result};
use crate::read_ahead::{revs_to_render, ReadAhead};

mod parse;
use parse::*;
pub use parse::{bad_json, channels_of, depth, new_doc_id, validate_doc_id};

/// Rows of `_all_docs?include_docs=true` whose bodies are read in one store call.
const READ_AHEAD: usize = 100;

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
    /// The document's JSON text.
    Doc(Vec<u8>),
    /// `open_revs`: `[{"ok":doc}|{"missing":rev}]`.
    OpenRevs(Vec<OpenRev>),
}

/// One `open_revs` entry.
pub enum OpenRev {
    /// A revision the caller may read (JSON text), or its `_removed` stub.
    Ok(Rendered),
    Missing(String),
}

/// A revision rendered as CouchDB JSON text.
pub struct Rendered {
    pub json: Vec<u8>,
    /// The caller may not read this revision: `json` is the `{"_id","_rev","_removed":true}`
    /// stub replicators learn removals from.
    pub removed: bool,
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
    /// With `include_docs`: attachment bodies inline (base64).
    pub attachments: bool,
}

impl Database {
    /// Turns a document body into a storage write.
    fn prepare(
        &self,
        id_hint: Option<&str>,
        doc: ParsedDoc,
        parent: Option<String>,
        new_edits: bool,
    ) -> Result<DocWrite> {
        let ParsedDoc {
            sp,
            json,
            channels,
            canonical,
        } = doc;
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
            let mut attachments = sp.attachments;
            for (_, a) in &mut attachments {
                // new data is new at this revision, whatever revpos the client kept (CouchDB);
                // otherwise `atts_since` would take the changed attachment for the old one
                if let AttachmentInput::Data { revpos, .. } = a {
                    *revpos = None;
                }
            }
            Ok(DocWrite::Edit {
                id,
                parent,
                deleted: sp.deleted,
                body: json,
                canonical,
                attachments,
                channels,
                access: Default::default(),
                revs_limit,
                must_exist: false,
            })
        } else {
            let history = history_from(
                sp.rev.as_deref().or(parent.as_deref()),
                sp.revisions.as_ref().filter(|v| !v.is_null()),
            )?;
            Ok(DocWrite::Replicate {
                id,
                history,
                deleted: sp.deleted,
                body: json,
                attachments: sp.attachments,
                channels,
                access: Default::default(),
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
        let stored = self.store.write_docs_shared(writes).await?;
        self.settle_stored(stored).await
    }

    /// What a store write answered, once durable: its results, counted as written.
    pub(crate) async fn settle_stored(
        &self,
        (results, ticket): (
            Vec<Result<WriteOutcome, StorageError>>,
            syncgate_storage::Ticket,
        ),
    ) -> Result<Vec<Result<WriteOutcome, StorageError>>> {
        self.store.durable(ticket).await?;
        self.note_written(
            results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|o| o.seq > 0))
                .count(),
        );
        Ok(results)
    }

    /// Runs the sync function (when configured), then writes.
    async fn write_one(&self, caller: &Caller, w: DocWrite) -> Result<WriteOutcome> {
        self.write_synced(caller, vec![w])
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("empty write result".into()))?
    }

    /// `PUT /{db}/{doc}` with the document's JSON text.
    pub async fn put_doc(
        &self,
        caller: &Caller,
        id: &str,
        body: &[u8],
        rev: Option<String>,
        new_edits: bool,
    ) -> Result<WriteOutcome> {
        let w = self.prepare(Some(id), parse_doc(body, new_edits)?, rev, new_edits)?;
        self.write_one(caller, w).await
    }

    /// `POST /{db}/` with the document's JSON text.
    pub async fn post_doc(&self, caller: &Caller, body: &[u8]) -> Result<WriteOutcome> {
        let doc = parse_doc(body, true)?;
        if doc.sp.rev.is_some() {
            return Err(Error::bad(
                "POST creates a new document: _rev is not allowed (use PUT)",
            ));
        }
        let w = self.prepare(None, doc, None, true)?;
        self.write_one(caller, w).await
    }

    /// `DELETE /{db}/{doc}?rev=`.
    pub async fn delete_doc(
        &self,
        caller: &Caller,
        id: &str,
        rev: Option<String>,
    ) -> Result<WriteOutcome> {
        validate_doc_id(id)?;
        if let Some(r) = &rev {
            parse_rev(r)?;
        }
        let meta = self.store.doc_meta(id).await?;
        if meta.is_none() {
            return Err(Error::not_found("missing"));
        }
        if rev.is_none() {
            return Err(Error::Conflict(
                "Document update conflict: DELETE needs ?rev=".into(),
            ));
        }
        self.write_one(
            caller,
            DocWrite::Edit {
                id: id.to_string(),
                parent: rev,
                deleted: true,
                body: b"{}".to_vec(),
                canonical: canonical(Map::new(), true),
                attachments: Vec::new(),
                channels: Vec::new(),
                access: Default::default(),
                revs_limit: self.config.revs_limit(),
                must_exist: true,
            },
        )
        .await
    }

    /// `POST /{db}/_bulk_docs` with the request's JSON text.
    pub async fn bulk_docs(&self, caller: &Caller, body: &[u8]) -> Result<Vec<BulkRow>> {
        let req = RawMembers::parse(body).map_err(|e| bad_json("_bulk_docs body", &e))?;
        let mut new_edits = true;
        let mut docs: Option<Vec<&RawValue>> = None;
        for (k, v) in &req.0 {
            match k.as_ref() {
                "new_edits" => {
                    new_edits =
                        special::<Option<bool>>(v, "new_edits must be a boolean")?.unwrap_or(true)
                }
                "docs" => {
                    docs = Some(
                        serde_json::from_str::<Vec<&RawValue>>(v.get()).map_err(|_| {
                            Error::bad("'docs' must be an array of documents (JSON objects)")
                        })?,
                    )
                }
                _ => {}
            }
        }
        let Some(docs) = docs else {
            return Err(Error::bad(
                "missing 'docs' property (an array of documents)",
            ));
        };
        if docs.iter().any(|d| !d.get().starts_with('{')) {
            return Err(Error::bad(
                "Document body must be JSON: every entry of 'docs' must be an object",
            ));
        }
        // Every document is validated before anything is written (as CouchDB does): one
        // malformed document rejects the whole request, so a batch is never half-applied
        // because of bad input. Conflicts stay per-document results.
        let mut results: Vec<Option<BulkRow>> = vec![None; docs.len()];
        let mut writes = Vec::new();
        let mut positions = Vec::new();
        let mut locals = Vec::new();
        for (i, raw) in docs.into_iter().enumerate() {
            let at = |e: Error| match e {
                Error::BadRequest(m) => Error::BadRequest(format!("docs[{i}]: {m}")),
                other => other,
            };
            let doc = parse_doc(raw.get().as_bytes(), new_edits).map_err(at)?;
            let id = doc.sp.id.clone();
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
                validate_local_id(local).map_err(in_doc)?;
                parse_local(raw.get().as_bytes()).map_err(in_doc)?;
                locals.push((i, local.to_string(), raw.get().as_bytes()));
                continue;
            }
            if !new_edits {
                // a revision history that cannot be read refuses this document only, so one
                // document never stalls a replicator (no history at all is a bad request)
                let rev = doc.sp.rev.as_deref();
                let revisions = doc.sp.revisions.as_ref().filter(|v| !v.is_null());
                if rev.is_some() || revisions.is_some() {
                    if let Err(e) = history_from(rev, revisions) {
                        results[i] = Some(BulkRow::error(id.as_deref(), &e));
                        continue;
                    }
                }
            }
            let w = self.prepare(None, doc, None, new_edits).map_err(in_doc)?;
            positions.push(i);
            writes.push(w);
        }
        // the sync function: a rejected document gets its own error entry, the others are written
        let ids: Vec<String> = writes.iter().map(|w| w.id().to_string()).collect();
        for ((pos, id), r) in positions
            .into_iter()
            .zip(ids)
            .zip(self.write_synced(caller, writes).await?)
        {
            results[pos] = Some(match r {
                Ok(o) => BulkRow::Ok {
                    ok: true,
                    id: o.id,
                    rev: o.rev,
                },
                Err(e) => BulkRow::error(Some(&id), &e),
            });
        }
        for (i, local, doc) in locals {
            let id = format!("_local/{local}");
            results[i] = Some(match self.put_local(&local, doc).await {
                Ok(rev) => BulkRow::Ok { ok: true, id, rev },
                Err(e) => BulkRow::error(Some(&id), &e),
            });
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.ok_or_else(|| Error::Internal(format!("_bulk_docs: docs[{i}] got no result")))
            })
            .collect()
    }

    /// Loads a document's metadata; 404 `missing` when absent.
    pub async fn meta(&self, id: &str) -> Result<DocMeta> {
        self.store
            .doc_meta(id)
            .await?
            .ok_or_else(|| Error::not_found("missing"))
    }

    /// `GET /{db}/{doc}`.
    pub async fn get_doc(&self, caller: &Caller, id: &str, opts: &GetOptions) -> Result<GetResult> {
        self.get_doc_in(caller, id, opts, &mut ReadAhead::default())
            .await
    }

    /// [`Database::get_doc`] with what a batch read ahead.
    async fn get_doc_in(
        &self,
        caller: &Caller,
        id: &str,
        opts: &GetOptions,
        ahead: &mut ReadAhead,
    ) -> Result<GetResult> {
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
            let meta = ahead
                .meta(&*self.store, id)
                .await?
                .ok_or_else(|| Error::not_found("missing"))?;
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
                match self.render_in(caller, id, &meta, &r, opts, ahead).await? {
                    Some(doc) => rows.push(OpenRev::Ok(doc)),
                    None => rows.push(OpenRev::Missing(r)),
                }
            }
            return Ok(GetResult::OpenRevs(rows));
        }
        // the document and (on the embedded store) its winner's body in one read
        ahead.load_metas_with_bodies(&*self.store, &[id]).await?;
        let meta = ahead
            .meta(&*self.store, id)
            .await?
            .ok_or_else(|| Error::not_found("missing"))?;
        let rev = match &opts.rev {
            // `latest` (CouchDB): the leaf of the requested revision's branch
            Some(r) if opts.latest && meta.tree.contains(r) && !meta.tree.is_leaf(r) => meta
                .tree
                .sorted_leaves()
                .iter()
                .find(|l| meta.tree.history(&l.rev).contains(r))
                .map(|l| l.rev.clone())
                .ok_or_else(|| Error::not_found("missing"))?,
            Some(r) => r.clone(),
            None => {
                let winner = live_winner(&meta)?;
                if !caller.can_read(&winner.channels) {
                    return Err(forbidden_doc());
                }
                winner.rev.clone()
            }
        };
        let doc = self
            .render_in(caller, id, &meta, &rev, opts, ahead)
            .await?
            .ok_or_else(|| Error::not_found("missing"))?;
        Ok(GetResult::Doc(doc.json))
    }

    /// Renders one revision as CouchDB JSON text; `None` when the tree or the store lacks it.
    /// A revision the caller may not read renders as a `_removed` stub (how replicators learn
    /// of channel removals).
    pub async fn render(
        &self,
        caller: &Caller,
        id: &str,
        meta: &DocMeta,
        rev: &str,
        opts: &GetOptions,
    ) -> Result<Option<Rendered>> {
        self.render_in(caller, id, meta, rev, opts, &mut ReadAhead::default())
            .await
    }

    /// [`Database::render`] with the body taken from what a batch read ahead.
    pub(crate) async fn render_in(
        &self,
        caller: &Caller,
        id: &str,
        meta: &DocMeta,
        rev: &str,
        opts: &GetOptions,
        ahead: &mut ReadAhead,
    ) -> Result<Option<Rendered>> {
        let Some(node) = meta.tree.get(rev) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"_id\":");
        push_str(&mut out, id);
        out.extend_from_slice(b",\"_rev\":");
        push_str(&mut out, rev);
        if !caller.can_read(&node.channels) {
            out.extend_from_slice(b",\"_removed\":true");
            if opts.revs {
                push_key(&mut out, "_revisions");
                push_revisions(&mut out, meta, rev);
            }
            out.push(b'}');
            return Ok(Some(Rendered {
                json: out,
                removed: true,
            }));
        }
        if !node.has_body {
            return Ok(None);
        }
        let Some(body) = ahead.body(&*self.store, id, rev).await? else {
            return Ok(None);
        };
        if node.deleted {
            out.extend_from_slice(b",\"_deleted\":true");
        }
        out.reserve(body.json.len() + 64);
        push_members(&mut out, &body.json);
        if opts.revs {
            push_key(&mut out, "_revisions");
            push_revisions(&mut out, meta, rev);
        }
        if opts.revs_info {
            push_key(&mut out, "_revs_info");
            out.push(b'[');
            for (i, r) in meta.tree.history(rev).into_iter().enumerate() {
                let status = match meta.tree.get(&r) {
                    Some(n) if n.deleted => "deleted",
                    Some(n) if n.has_body => "available",
                    _ => "missing",
                };
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"rev\":");
                push_str(&mut out, &r);
                out.extend_from_slice(b",\"status\":");
                push_str(&mut out, status);
                out.push(b'}');
            }
            out.push(b']');
        }
        let is_winner = meta.tree.winner().is_some_and(|w| w.rev == rev);
        for (wanted, deleted, key) in [
            (opts.conflicts, false, "_conflicts"),
            (opts.deleted_conflicts, true, "_deleted_conflicts"),
        ] {
            if !(wanted && is_winner) {
                continue;
            }
            let c: Vec<&str> = meta
                .tree
                .sorted_leaves()
                .iter()
                .filter(|l| l.deleted == deleted && l.rev != rev)
                .map(|l| l.rev.as_str())
                .collect();
            if !c.is_empty() {
                push_key(&mut out, key);
                push_json(&mut out, &c);
            }
        }
        if !body.attachments.is_empty() {
            push_key(&mut out, "_attachments");
            self.push_attachments(&mut out, meta, rev, &body, opts)
                .await?;
        }
        out.push(b'}');
        Ok(Some(Rendered {
            json: out,
            removed: false,
        }))
    }

    /// `_attachments` as CouchDB writes it: stubs, or the data inline when asked for.
    async fn push_attachments(
        &self,
        out: &mut Vec<u8>,
        meta: &DocMeta,
        rev: &str,
        body: &StoredBody,
        opts: &GetOptions,
    ) -> Result<()> {
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
        out.push(b'{');
        for (name, m) in &body.attachments {
            let include = match since_gen {
                Some(g) => m.revpos > g,
                None => opts.attachments,
            };
            push_key(out, name);
            out.extend_from_slice(b"{\"content_type\":");
            push_str(out, &m.content_type);
            out.extend_from_slice(format!(",\"revpos\":{},\"digest\":", m.revpos).as_bytes());
            push_str(out, &m.digest);
            out.extend_from_slice(format!(",\"length\":{}", m.length).as_bytes());
            if include {
                let data = self.store.attachment(&m.digest).await?.ok_or_else(|| {
                    Error::Internal(format!("attachment data {} missing", m.digest))
                })?;
                out.extend_from_slice(b",\"data\":\"");
                out.extend_from_slice(B64.encode(data).as_bytes());
                out.extend_from_slice(b"\"}");
            } else {
                out.extend_from_slice(b",\"stub\":true}");
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// `POST /{db}/_bulk_get` (CouchDB JSON form): `{"results":[{"id","docs":[...]}]}`, one
    /// result per requested entry, in order, as JSON text. A malformed request (not an object,
    /// `docs` not an array, an entry without a string `id`, a malformed `rev` or `atts_since`)
    /// is a 400 as a whole; a revision that does not exist is an `{"error":{...}}` entry.
    pub async fn bulk_get(
        &self,
        caller: &Caller,
        body: &Value,
        base: &GetOptions,
    ) -> Result<Vec<u8>> {
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
            if let Some(r) = &rev {
                opts.open_revs = Some(OpenRevs::List(vec![r.clone()]));
            }
            requests.push((id, rev, opts));
        }
        // the batch's documents, then the revisions it will render, each in one read
        let mut ahead = ReadAhead::default();
        let ids: Vec<&str> = requests.iter().map(|(id, _, _)| id.as_str()).collect();
        ahead.load_metas_with_bodies(&*self.store, &ids).await?;
        let wanted: Vec<(&str, String)> = requests
            .iter()
            .filter_map(|(id, rev, opts)| {
                let meta = ahead.cached_meta(id)?;
                Some(
                    revs_to_render(meta, rev.as_deref(), opts)
                        .into_iter()
                        .filter(|r| {
                            meta.tree
                                .get(r)
                                .is_some_and(|n| caller.can_read(&n.channels))
                        })
                        .map(move |r| (id.as_str(), r)),
                )
            })
            .flatten()
            .collect();
        let pairs: Vec<(&str, &str)> = wanted.iter().map(|(i, r)| (*i, r.as_str())).collect();
        ahead.load_bodies(&*self.store, &pairs).await?;
        let error_entry = |out: &mut Vec<u8>, id: &str, rev: &str, error: &str, reason: &str| {
            out.extend_from_slice(b"{\"error\":{\"id\":");
            push_str(out, id);
            out.extend_from_slice(b",\"rev\":");
            push_str(out, rev);
            out.extend_from_slice(b",\"error\":");
            push_str(out, error);
            out.extend_from_slice(b",\"reason\":");
            push_str(out, reason);
            out.extend_from_slice(b"}}");
        };
        let mut out = Vec::with_capacity(64 + requests.len() * 512);
        out.extend_from_slice(b"{\"results\":[");
        for (n, (id, rev, opts)) in requests.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            push_str(&mut out, id);
            out.extend_from_slice(b",\"docs\":[");
            let outcome = self.get_doc_in(caller, id, opts, &mut ahead);
            match outcome.await {
                Ok(GetResult::OpenRevs(rows)) => {
                    for (i, row) in rows.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        match row {
                            OpenRev::Missing(m) => {
                                error_entry(&mut out, id, &m, "not_found", "missing")
                            }
                            // a revision the caller may not read is its `_removed` stub,
                            // as for `open_revs` (Sync Gateway): an error entry would make
                            // PouchDB retry the batch forever and stall a live pull
                            OpenRev::Ok(doc) => {
                                out.extend_from_slice(b"{\"ok\":");
                                out.extend_from_slice(&doc.json);
                                out.push(b'}');
                            }
                        }
                    }
                }
                Ok(GetResult::Doc(doc)) => {
                    out.extend_from_slice(b"{\"ok\":");
                    out.extend_from_slice(&doc);
                    out.push(b'}');
                }
                Err(e) => {
                    let (_, name) = e.status();
                    error_entry(
                        &mut out,
                        id,
                        rev.as_deref().unwrap_or_default(),
                        name,
                        &e.to_string(),
                    );
                }
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// `POST /{db}/_revs_diff`.
    pub async fn revs_diff(&self, caller: &Caller, body: &Value) -> Result<Value> {
        let Value::Object(req) = body else {
            return Err(Error::bad(
                "_revs_diff expects an object of {docid: [revs]}",
            ));
        };
        let mut out = Map::new();
        // every document asked about, read in one call
        let ids: Vec<&str> = req
            .keys()
            .filter(|id| caller.is_admin() || !id.starts_with("_design/"))
            .map(String::as_str)
            .collect();
        let mut ahead = ReadAhead::default();
        ahead.load_metas(&*self.store, &ids).await?;
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
            let meta = ahead.cached_meta(id);
            let missing: Vec<&String> = list
                .iter()
                .filter(|r| !meta.as_ref().is_some_and(|m| m.tree.contains(r)))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let mut entry = json!({"missing": missing});
            if let Some(meta) = meta {
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

    /// `GET|POST /{db}/_all_docs` as JSON text, in CouchDB's member order. Each row is written
    /// into the body as soon as it is built, so a response over many documents never holds
    /// them as `Value` trees.
    pub async fn all_docs(&self, caller: &Caller, opts: &AllDocsOptions) -> Result<Vec<u8>> {
        let mut out = format!(
            "{{\"total_rows\":{},\"offset\":{},\"rows\":[",
            self.store.doc_count().await?,
            opts.skip
        )
        .into_bytes();
        let mut rows = 0usize;
        let get_opts = GetOptions {
            conflicts: opts.conflicts,
            attachments: opts.attachments,
            ..Default::default()
        };
        // `{"id":…,"key":…,"value":{"rev":…[,"deleted":true]}[,"doc":…]}`
        let row = |out: &mut Vec<u8>, rows: &mut usize, id: &str, rev: &str, deleted: bool| {
            if *rows > 0 {
                out.push(b',');
            }
            *rows += 1;
            out.extend_from_slice(b"{\"id\":");
            push_str(out, id);
            out.extend_from_slice(b",\"key\":");
            push_str(out, id);
            out.extend_from_slice(b",\"value\":{\"rev\":");
            push_str(out, rev);
            if deleted {
                out.extend_from_slice(b",\"deleted\":true");
            }
            out.push(b'}');
        };
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut skipped = 0;
        let mut ahead = ReadAhead::default();
        if let Some(keys) = &opts.keys {
            // the keys' documents, then (include_docs) their winners' bodies, in one read each
            let asked: Vec<&str> = keys
                .iter()
                .skip(opts.skip)
                .take(limit)
                .map(String::as_str)
                .collect();
            if opts.include_docs {
                ahead.load_metas_with_bodies(&*self.store, &asked).await?;
            } else {
                ahead.load_metas(&*self.store, &asked).await?;
            }
            if opts.include_docs {
                let winners: Vec<(&str, String)> = asked
                    .iter()
                    .filter_map(|k| {
                        let w = ahead.cached_meta(k)?.tree.winner()?;
                        (!w.deleted && w.has_body && caller.can_read(&w.channels))
                            .then(|| (*k, w.rev.clone()))
                    })
                    .collect();
                let pairs: Vec<(&str, &str)> =
                    winners.iter().map(|(k, r)| (*k, r.as_str())).collect();
                ahead.load_bodies(&*self.store, &pairs).await?;
            }
            for key in keys {
                if rows >= limit {
                    break;
                }
                if skipped < opts.skip {
                    skipped += 1;
                    continue;
                }
                let meta = ahead.meta(&*self.store, key).await?;
                let winner = meta.as_ref().and_then(|m| m.tree.winner());
                match winner {
                    Some(w) if caller.can_read(&w.channels) => {
                        row(&mut out, &mut rows, key, &w.rev, w.deleted);
                        if w.deleted {
                            if opts.include_docs {
                                out.extend_from_slice(b",\"doc\":null");
                            }
                        } else if let (true, Some(meta)) = (opts.include_docs, &meta) {
                            out.extend_from_slice(b",\"doc\":");
                            match self
                                .render_in(caller, key, meta, &w.rev, &get_opts, &mut ahead)
                                .await?
                            {
                                Some(doc) => out.extend_from_slice(&doc.json),
                                None => out.extend_from_slice(b"null"),
                            }
                        }
                        out.push(b'}');
                    }
                    found => {
                        if rows > 0 {
                            out.push(b',');
                        }
                        rows += 1;
                        out.extend_from_slice(b"{\"key\":");
                        push_str(&mut out, key);
                        out.extend_from_slice(if found.is_some() {
                            b",\"error\":\"forbidden\"}".as_slice()
                        } else {
                            b",\"error\":\"not_found\"}".as_slice()
                        });
                    }
                }
            }
        } else {
            // include_docs: rows wait in chunks, whose winners' bodies are read in one call
            let mut pending: Vec<(String, DocMeta)> = Vec::new();
            let mut flush = async |out: &mut Vec<u8>,
                                   rows: &mut usize,
                                   pending: &mut Vec<(String, DocMeta)>|
                   -> Result<()> {
                let revs: Vec<(&str, &str)> = pending
                    .iter()
                    .filter_map(|(id, m)| Some((id.as_str(), m.tree.winner()?.rev.as_str())))
                    .collect();
                ahead.load_bodies(&*self.store, &revs).await?;
                for (id, meta) in pending.drain(..) {
                    let Some(w) = meta.tree.winner() else {
                        continue;
                    };
                    row(out, rows, &id, &w.rev, false);
                    out.extend_from_slice(b",\"doc\":");
                    match self
                        .render_in(caller, &id, &meta, &w.rev, &get_opts, &mut ahead)
                        .await?
                    {
                        Some(doc) => out.extend_from_slice(&doc.json),
                        None => out.extend_from_slice(b"null"),
                    }
                    out.push(b'}');
                }
                Ok(())
            };
            let start = opts.start.clone().unwrap_or_default();
            let mut docs = self
                .store
                .docs_from(&start, opts.descending)
                .first_page(limit.saturating_add(opts.skip));
            while let Some(item) = docs.next().await {
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
                if rows + pending.len() >= limit {
                    break;
                }
                if opts.include_docs {
                    pending.push((id, meta));
                    if pending.len() >= READ_AHEAD {
                        flush(&mut out, &mut rows, &mut pending).await?;
                    }
                    continue;
                }
                row(&mut out, &mut rows, &id, &w.rev, false);
                out.push(b'}');
            }
            flush(&mut out, &mut rows, &mut pending).await?;
        }
        out.push(b']');
        if opts.update_seq {
            out.extend_from_slice(format!(",\"update_seq\":{}", self.store.last_seq()).as_bytes());
        }
        out.push(b'}');
        Ok(out)
    }

    // --- attachments ----------------------------------------------------------------------------

    /// `GET /{db}/{doc}/{att}`: metadata and bytes.
    pub async fn get_attachment(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        rev: Option<&str>,
    ) -> Result<(AttachmentMeta, Vec<u8>)> {
        validate_doc_id(id)?;
        let meta = self.meta(id).await?;
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
            .rev_body(id, &node.rev)
            .await?
            .ok_or_else(|| Error::not_found("missing"))?;
        let att = body.attachment(name).cloned().ok_or_else(|| {
            Error::not_found(format!("missing attachment \"{}\"", crate::short(name)))
        })?;
        let data =
            self.store.attachment(&att.digest).await?.ok_or_else(|| {
                Error::Internal(format!("attachment data {} missing", att.digest))
            })?;
        Ok((att, data))
    }

    /// `PUT /{db}/{doc}/{att}?rev=`: a new revision with the attachment added or replaced.
    pub async fn put_attachment(
        &self,
        caller: &Caller,
        id: &str,
        name: &str,
        rev: Option<String>,
        content_type: String,
        data: Vec<u8>,
    ) -> Result<WriteOutcome> {
        validate_doc_id(id)?;
        parse_attachment_name(name)?;
        let (body, mut atts) = self.current_for_attachment_edit(id, rev.as_deref()).await?;
        atts.retain(|(n, _)| n != name);
        atts.push((
            name.to_string(),
            AttachmentInput::Data {
                content_type,
                data,
                revpos: None,
            },
        ));
        let w = self.attachment_edit(id, rev, body, atts, false)?;
        self.write_one(caller, w).await
    }

    /// The new revision of an attachment `PUT`/`DELETE`: the current body with `atts`.
    fn attachment_edit(
        &self,
        id: &str,
        rev: Option<String>,
        body: Vec<u8>,
        atts: Attachments,
        must_exist: bool,
    ) -> Result<DocWrite> {
        let view = body_view(id, &body)?;
        let channels = channels_of(&view);
        Ok(DocWrite::Edit {
            id: id.to_string(),
            parent: rev,
            deleted: false,
            canonical: canonical(view, false),
            body,
            attachments: atts,
            channels,
            access: Default::default(),
            revs_limit: self.config.revs_limit(),
            must_exist,
        })
    }

    /// `DELETE /{db}/{doc}/{att}?rev=`.
    pub async fn delete_attachment(
        &self,
        caller: &Caller,
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
            .doc_meta(id)
            .await?
            .ok_or_else(|| Error::not_found("Document specified is not found"))?;
        if !meta.tree.is_leaf(&r) {
            return Err(Error::Conflict("Document update conflict".into()));
        }
        let (body, mut atts) = self.current_for_attachment_edit(id, Some(&r)).await?;
        let before = atts.len();
        atts.retain(|(n, _)| n != name);
        if atts.len() == before {
            return Err(Error::not_found(format!(
                "Attachment \"{}\" is not found",
                crate::short(name)
            )));
        }
        let w = self.attachment_edit(id, rev, body, atts, true)?;
        self.write_one(caller, w).await
    }

    /// The body's JSON text (without `_attachments`) and attachment stubs of the revision
    /// being edited.
    async fn current_for_attachment_edit(
        &self,
        id: &str,
        rev: Option<&str>,
    ) -> Result<(Vec<u8>, Attachments)> {
        let meta = self.store.doc_meta(id).await?;
        let (meta, rev) = match (meta, rev) {
            (None, None) => return Ok((b"{}".to_vec(), Vec::new())),
            (None, Some(_)) => return Err(Error::Conflict("Document update conflict".into())),
            (Some(m), Some(r)) => {
                parse_rev(r)?;
                (m, r.to_string())
            }
            (Some(m), None) if !m.is_live() => return Ok((b"{}".to_vec(), Vec::new())),
            (Some(_), None) => {
                return Err(Error::Conflict(
                    "Cannot modify attachments without a specific rev ID".into(),
                ))
            }
        };
        if !meta.tree.is_leaf(&rev) {
            return Err(Error::Conflict("Document update conflict".into()));
        }
        let body = self.store.rev_body(id, &rev).await?.ok_or_else(|| {
            Error::Conflict("The revision being edited has no body (it was compacted)".into())
        })?;
        let atts = body
            .attachments
            .into_iter()
            .map(|(n, m)| {
                (
                    n,
                    AttachmentInput::Stub {
                        digest: Some(m.digest),
                        revpos: None,
                        content_type: None,
                    },
                )
            })
            .collect();
        Ok((body.json, atts))
    }

    // --- local documents ------------------------------------------------------------------------

    /// A `_local` doc as JSON text: `_id`, `_rev`, then its members as the client sent them.
    pub async fn get_local(&self, id: &str) -> Result<Vec<u8>> {
        validate_local_id(id)?;
        let doc = self
            .store
            .get_local(id)
            .await?
            .ok_or_else(|| Error::not_found("missing"))?;
        let mut out = Vec::with_capacity(doc.body.get().len() + id.len() + 40);
        out.push(b'{');
        push_key(&mut out, "_id");
        push_str(&mut out, &format!("_local/{id}"));
        push_key(&mut out, "_rev");
        push_str(&mut out, &doc.rev);
        push_members(&mut out, doc.body.get().as_bytes());
        out.push(b'}');
        Ok(out)
    }

    /// Stores a `_local` doc from its JSON text; the body's `_rev` must match the stored one.
    /// Its own members are kept as sent (member order, number digits); an unknown `_` member is
    /// a 400, as for any document.
    pub async fn put_local(&self, id: &str, text: &[u8]) -> Result<String> {
        validate_local_id(id)?;
        let local = parse_local(text)?;
        if local.deleted {
            // a local doc written as deleted is deleted (CouchDB): its rev is then "0-0"
            self.delete_local(id, local.rev.as_deref()).await?;
            return Ok(LOCAL_DELETED_REV.to_string());
        }
        let (rev, ticket) = self
            .store
            .put_local(id, local.rev.as_deref(), local.body)
            .await?;
        self.store.durable(ticket).await?;
        Ok(rev)
    }

    /// Deletes a `_local` doc: `rev` must be its current one (409 otherwise); missing → 404.
    pub async fn delete_local(&self, id: &str, rev: Option<&str>) -> Result<()> {
        validate_local_id(id)?;
        let ticket = self.store.delete_local(id, rev).await?;
        self.store.durable(ticket).await?;
        Ok(())
    }
}

/// The rev CouchDB answers for a deleted `_local` doc.
pub const LOCAL_DELETED_REV: &str = "0-0";
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

/// The parsed view of a stored body's own members (for the rules that look inside).
fn body_view(id: &str, json: &[u8]) -> Result<Map<String, Value>> {
    serde_json::from_slice(json).map_err(|e| {
        Error::Internal(format!(
            "stored body of \"{}\" does not parse: {e}",
            crate::short(id)
        ))
    })
}

fn forbidden_doc() -> Error {
    Error::Forbidden("You are not allowed to see this document".into())
}

/// `{"start":N,"ids":[…]}` (CouchDB's member order).
fn push_revisions(out: &mut Vec<u8>, meta: &DocMeta, rev: &str) {
    let hist = meta.tree.history(rev);
    let ids: Vec<&str> = hist
        .iter()
        .map(|r| r.split_once('-').map(|(_, h)| h).unwrap_or(r))
        .collect();
    out.extend_from_slice(format!("{{\"start\":{},\"ids\":", generation(rev)).as_bytes());
    push_json(out, &ids);
    out.push(b'}');
}

/// One row of a `_bulk_docs` answer, serialized as CouchDB writes it (without building a
/// `Value` per document).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum BulkRow {
    /// `{"ok":true,"id","rev"}`
    Ok { ok: bool, id: String, rev: String },
    /// `{"id","error","reason","status"}`
    Error {
        id: Option<String>,
        error: &'static str,
        reason: String,
        status: u16,
    },
}

impl BulkRow {
    fn error(id: Option<&str>, e: &Error) -> BulkRow {
        let (status, error) = e.status();
        BulkRow::Error {
            id: id.map(str::to_string),
            error,
            // a row of a 201 answer: an internal error's detail stays in the log
            reason: e.public_reason(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `_bulk_docs` row is part of a 201 answer: an internal error's detail (paths, engine
    /// messages) stays in the log like in an error response; other reasons are shown.
    #[test]
    fn bulk_rows_keep_internal_details_out() {
        let row = BulkRow::error(Some("d"), &Error::Internal("sled: /var/lib/x: I/O".into()));
        let text = serde_json::to_string(&row).unwrap();
        assert!(!text.contains("/var/lib"), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"id": "d", "error": "internal_server_error", "reason": "The server hit an internal error; it has been logged", "status": 500})
        );
        let row = BulkRow::error(
            Some("d"),
            &Error::Conflict("Document update conflict".into()),
        );
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            json!({"id": "d", "error": "conflict", "reason": "Document update conflict", "status": 409})
        );
        let ok = BulkRow::Ok {
            ok: true,
            id: "d".into(),
            rev: "1-a".into(),
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":true,"id":"d","rev":"1-a"}"#
        );
    }
}
