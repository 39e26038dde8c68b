//! Mango over stored documents: the JSON a selector is matched against, the
//! `_changes?filter=_selector` test of one change, and `POST /{db}/_find`.
//!
//! Documents are turned into `serde_json::Value` here and only here ([`Database::mango_doc`],
//! [`Database::find_doc`]), so a change of how bodies are stored or rendered touches these two
//! functions.

use serde_json::{Map, Value};
use syncgate_auth::Caller;
use syncgate_storage::ChangeEntry;

use crate::database::Database;
use crate::error::Result;
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
    pub(crate) fn mango_doc(&self, id: &str, rev: &str, deleted: bool) -> Result<Option<Value>> {
        let body = match self.store.rev_body(id, rev)? {
            Some(b) => b,
            None if deleted => Map::new(),
            None => return Ok(None),
        };
        let mut out = Map::new();
        out.insert("_id".into(), Value::String(id.to_string()));
        out.insert("_rev".into(), Value::String(rev.to_string()));
        if deleted {
            out.insert("_deleted".into(), Value::Bool(true));
        }
        for (k, mut v) in body {
            if k == "_attachments" {
                if let Value::Object(atts) = &mut v {
                    for a in atts.values_mut() {
                        if let Value::Object(a) = a {
                            a.insert("stub".into(), Value::Bool(true));
                        }
                    }
                }
            }
            out.insert(k, v);
        }
        Ok(Some(Value::Object(out)))
    }

    /// The leaves of a change that pass a `_selector` filter (CouchDB's `couch_changes`):
    /// the winner alone, or with `style=all_docs` every leaf the caller may read, each matched
    /// against its own body. Empty when none passes: the change is left out of the feed.
    pub(crate) fn selector_leaves(
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
                    .mango_doc(&e.id, &w.rev, w.deleted)?
                    .is_some_and(|d| selector.matches(&d))
                {
                    out.push(w.rev.clone());
                }
            }
            return Ok(out);
        }
        let Some(meta) = self.store.doc_meta(&e.id)? else {
            return Ok(out);
        };
        for leaf in &e.leaves {
            let readable = meta
                .tree
                .get(&leaf.rev)
                .is_some_and(|n| caller.can_read(&n.channels));
            if readable
                && self
                    .mango_doc(&e.id, &leaf.rev, leaf.deleted)?
                    .is_some_and(|d| selector.matches(&d))
            {
                out.push(leaf.rev.clone());
            }
        }
        Ok(out)
    }
}
