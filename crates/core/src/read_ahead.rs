//! Documents and revision bodies read ahead for a batch request (`_bulk_get`, `_all_docs` and
//! `_changes` with `include_docs`): one store call for the batch's metadata and one for its
//! bodies ([`DatabaseStore::doc_metas`], [`DatabaseStore::rev_bodies`]) instead of one per
//! document — on a networked store, two round trips instead of two hundred; on the embedded
//! store the metadata read brings the winner's body along ([`ReadAhead::load_metas_with_bodies`]).
//! Rendering takes what was read ahead and reads anything else (a revision the guess missed)
//! on its own.

use std::collections::HashMap;

use syncgate_storage::{DatabaseStore, DocMeta, StoredBody};

use crate::docs::{GetOptions, OpenRevs};
use crate::error::Result;

#[derive(Default)]
pub(crate) struct ReadAhead {
    metas: HashMap<String, Option<DocMeta>>,
    /// `None`: the store has no such body.
    bodies: HashMap<(String, String), Option<StoredBody>>,
}

impl ReadAhead {
    /// Reads the metadata of `ids` not read yet, in one call.
    pub(crate) async fn load_metas(
        &mut self,
        store: &dyn DatabaseStore,
        ids: &[&str],
    ) -> Result<()> {
        self.load(store, ids, false).await
    }

    /// [`ReadAhead::load_metas`] for readers that render the documents: with each the body
    /// the store keeps beside its metadata ([`DatabaseStore::doc_metas_with_bodies`]; the
    /// embedded store's winner), so rendering the winner reads nothing more.
    pub(crate) async fn load_metas_with_bodies(
        &mut self,
        store: &dyn DatabaseStore,
        ids: &[&str],
    ) -> Result<()> {
        self.load(store, ids, true).await
    }

    async fn load(&mut self, store: &dyn DatabaseStore, ids: &[&str], bodies: bool) -> Result<()> {
        let mut todo: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.metas.contains_key(*id))
            .collect();
        todo.sort_unstable();
        todo.dedup();
        if todo.is_empty() {
            return Ok(());
        }
        let read = if bodies {
            store.doc_metas_with_bodies(&todo).await?
        } else {
            let metas = store.doc_metas(&todo).await?;
            metas.into_iter().map(|m| m.map(|m| (m, None))).collect()
        };
        for (id, read) in todo.iter().zip(read) {
            let meta = read.map(|(meta, body)| {
                if let Some((rev, body)) = body {
                    self.bodies.insert((id.to_string(), rev), Some(body));
                }
                meta
            });
            self.metas.insert(id.to_string(), meta);
        }
        Ok(())
    }

    /// Reads the bodies of `revs` (document id, revision) not read yet, in one call.
    pub(crate) async fn load_bodies(
        &mut self,
        store: &dyn DatabaseStore,
        revs: &[(&str, &str)],
    ) -> Result<()> {
        let mut todo: Vec<(&str, &str)> = revs
            .iter()
            .copied()
            .filter(|(id, rev)| !self.bodies.contains_key(&(id.to_string(), rev.to_string())))
            .collect();
        todo.sort_unstable();
        todo.dedup();
        if todo.is_empty() {
            return Ok(());
        }
        for ((id, rev), body) in todo.iter().zip(store.rev_bodies(&todo).await?) {
            self.bodies.insert((id.to_string(), rev.to_string()), body);
        }
        Ok(())
    }

    /// A document's metadata: as read ahead, or read now.
    pub(crate) async fn meta(
        &self,
        store: &dyn DatabaseStore,
        id: &str,
    ) -> Result<Option<DocMeta>> {
        match self.metas.get(id) {
            Some(m) => Ok(m.clone()),
            None => Ok(store.doc_meta(id).await?),
        }
    }

    /// Metadata read ahead (`None`: not read ahead, or no such document).
    pub(crate) fn cached_meta(&self, id: &str) -> Option<&DocMeta> {
        self.metas.get(id).and_then(Option::as_ref)
    }

    /// A revision's body: as read ahead (taken: each is rendered once), or read now.
    pub(crate) async fn body(
        &mut self,
        store: &dyn DatabaseStore,
        id: &str,
        rev: &str,
    ) -> Result<Option<StoredBody>> {
        match self.bodies.remove(&(id.to_string(), rev.to_string())) {
            Some(b) => Ok(b),
            None => Ok(store.rev_body(id, rev).await?),
        }
    }
}

/// The revisions a `GET` with `opts` (and `rev`) would render of a document: what to read
/// ahead. A guess for reading only: the handler decides again (and reads what it missed).
pub(crate) fn revs_to_render(meta: &DocMeta, rev: Option<&str>, opts: &GetOptions) -> Vec<String> {
    let tree = &meta.tree;
    let leaves_above = |r: &str| -> Vec<String> {
        if opts.latest && tree.contains(r) && !tree.is_leaf(r) {
            tree.sorted_leaves()
                .iter()
                .filter(|l| tree.history(&l.rev).iter().any(|h| h == r))
                .map(|l| l.rev.clone())
                .collect()
        } else {
            vec![r.to_string()]
        }
    };
    let revs = match (&opts.open_revs, rev) {
        (Some(OpenRevs::All), _) => tree.sorted_leaves().iter().map(|n| n.rev.clone()).collect(),
        (Some(OpenRevs::List(l)), _) => l.iter().flat_map(|r| leaves_above(r)).collect(),
        (None, Some(r)) => leaves_above(r),
        (None, None) => tree
            .winner()
            .map(|w| vec![w.rev.clone()])
            .unwrap_or_default(),
    };
    revs.into_iter()
        .filter(|r| tree.get(r).is_some_and(|n| n.has_body))
        .collect()
}
