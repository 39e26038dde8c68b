//! The CouchDB rules every backend shares, above the engine.
//!
//! A write batch is assembled here: [`DocBatch`] takes the [`DocWrite`]s (or the sync
//! function's [`Restamp`]s) of one batch in order
//! and decides, for each, conflict or acceptance, the new revision id and tree (pruned to
//! `revs_limit`, grants kept on leaves only), a tombstone's inherited channels, attachment
//! metadata (data stored once per digest, stubs resolved against the parent revision or by
//! digest), the document's channel history, its change entry and the grants it moves in the
//! access index. It reads what it needs through [`BatchBackend`] and hands what to store to
//! the same trait, in order, as domain operations (`put_doc`, `put_body`, `supersede`, …): the
//! engine only turns them into its own keys or rows and applies them atomically.
//!
//! Sequences: a batch numbers its changes from the `first_seq` it is given (the engine's last
//! assigned sequence + 1), one per accepted write; [`BatchSummary::last_seq`] is what the
//! engine records as its new last sequence.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::model::*;
use crate::revtree::{compute_rev, generation, parse_rev, truncate, RevNode, RevTree};
use crate::{PrincipalKind, Result, StorageError};

/// What a write batch needs from the engine: reads of the state before the batch, and the
/// writes the batch decides, in the order they must be applied (a later operation on the same
/// record replaces an earlier one). Nothing written here is visible to readers until the
/// engine applies the whole batch atomically.
pub trait BatchBackend {
    /// A document's metadata as stored before this batch.
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>>;
    /// A revision body as stored before this batch.
    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>>;
    /// The length of stored attachment data, `None` when the store does not have it.
    fn attachment_len(&self, digest: &str) -> Result<Option<u64>>;
    /// Whether the store has attachment data under `digest`.
    fn has_attachment(&self, digest: &str) -> Result<bool> {
        Ok(self.attachment_len(digest)?.is_some())
    }
    /// One access index entry: what document `doc` grants one user or role.
    fn load_grant(&self, kind: PrincipalKind, name: &str, doc: &str) -> Result<Option<DocGrant>>;

    /// Stores attachment data the store does not have yet (once per digest).
    fn put_attachment(&mut self, digest: &str, data: &[u8]) -> Result<()>;
    /// Stores a revision body.
    fn put_body(&mut self, id: &str, rev: &str, body: &StoredBody) -> Result<()>;
    /// Drops a revision body (pruned from the tree).
    fn remove_body(&mut self, id: &str, rev: &str) -> Result<()>;
    /// Stores a document's new state and its by-sequence entry at `meta.seq`, indexed under
    /// every channel of `meta.channel_history` (those it has left are `entry.removed`).
    fn put_doc(&mut self, id: &str, meta: &DocMeta, entry: &ChangeEntry) -> Result<()>;
    /// Drops the by-sequence entry at `seq` (and its channel index under `channels`): it was
    /// written earlier in this same batch, so no reader has seen it.
    fn drop_entry(&mut self, seq: u64, channels: &[String]) -> Result<()>;
    /// The document's entry from before this batch is superseded: `entry` is that entry as
    /// readers saw it, with `superseded` set to the document's sequence at the end of the
    /// batch; `channel_history` are the channels it is indexed under. Readers whose view
    /// predates the new sequence must still see the old entry (see the engine's documentation).
    fn supersede(&mut self, entry: &ChangeEntry, channel_history: &[String]) -> Result<()>;
    /// Stores an access index entry.
    fn put_grant(
        &mut self,
        kind: PrincipalKind,
        name: &str,
        doc: &str,
        grant: &DocGrant,
    ) -> Result<()>;
    /// Drops an access index entry.
    fn remove_grant(&mut self, kind: PrincipalKind, name: &str, doc: &str) -> Result<()>;
}

/// What a finished batch changed besides its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    /// The last sequence the batch assigned (the first sequence - 1 when it assigned none).
    pub last_seq: u64,
    /// Change of the number of live documents.
    pub doc_delta: i64,
    /// Whether the batch changed the access index.
    pub grants_changed: bool,
    /// The access-index entries the batch wrote, with their new state.
    pub grant_changes: Vec<GrantChange>,
}

/// One write batch being assembled: documents, bodies and attachments written earlier in the
/// batch are visible to its later writes.
pub struct DocBatch<B: BatchBackend> {
    backend: B,
    metas: HashMap<String, Option<DocMeta>>,
    bodies: HashMap<(String, String), StoredBody>,
    /// Attachment data written by this batch: digest → length.
    blobs: HashMap<String, u64>,
    /// First sequence of this batch: entries from here on are not applied yet.
    first_seq: u64,
    next_seq: u64,
    /// Access index entries read or written by this batch (`None`: absent or removed).
    grants: HashMap<(PrincipalKind, String, String), Option<DocGrant>>,
    grants_changed: bool,
    /// Documents updated in this batch, with their state before it.
    replaced: BTreeMap<String, DocMeta>,
    doc_delta: i64,
}

impl<B: BatchBackend> DocBatch<B> {
    /// A batch whose first change gets sequence `first_seq`.
    pub fn new(backend: B, first_seq: u64) -> Self {
        DocBatch {
            backend,
            metas: HashMap::new(),
            bodies: HashMap::new(),
            blobs: HashMap::new(),
            first_seq,
            next_seq: first_seq,
            grants: HashMap::new(),
            grants_changed: false,
            replaced: BTreeMap::new(),
            doc_delta: 0,
        }
    }

    /// Applies one write to the batch: its outcome, or the error that refuses it. A refused
    /// write adds nothing to the batch but, possibly, attachment data (harmless: deduplicated
    /// and collected by compaction).
    pub fn apply(&mut self, write: DocWrite) -> Result<WriteOutcome> {
        match write {
            DocWrite::Edit {
                id,
                parent,
                deleted,
                body,
                canonical,
                attachments,
                channels,
                access,
                revs_limit,
                must_exist,
            } => {
                let old = self.meta(&id)?;
                let parent_rev = edit_parent(old.as_ref(), parent, deleted, must_exist)?;
                let channels = tombstone_channels(
                    old.as_ref().map(|m| &m.tree),
                    deleted,
                    channels,
                    parent_rev.iter(),
                );
                let gen = parent_rev.as_deref().map(generation).unwrap_or(0) + 1;
                let atts = self.attachments(&id, parent_rev.as_deref(), gen, attachments)?;
                // digests in name order, as the first format's sorted map gave them
                let mut digests: Vec<(String, String)> = atts
                    .iter()
                    .map(|(k, m)| (k.clone(), m.digest.clone()))
                    .collect();
                digests.sort();
                let rev = compute_rev(parent_rev.as_deref(), &canonical, &digests);
                let body = StoredBody {
                    json: body,
                    attachments: atts,
                };
                let mut tree = old.as_ref().map(|m| m.tree.clone()).unwrap_or_default();
                tree.add(RevNode {
                    rev: rev.clone(),
                    parent: parent_rev,
                    deleted,
                    seq: 0,
                    has_body: true,
                    channels,
                    access,
                });
                let seq = self.commit_doc(&id, old, tree, Some((&rev, body)), revs_limit)?;
                Ok(WriteOutcome { id, rev, seq })
            }
            DocWrite::Replicate {
                id,
                history,
                deleted,
                body,
                attachments,
                channels,
                access,
                revs_limit,
            } => {
                let Some(rev) = history.first().cloned() else {
                    return Err(StorageError::BadRequest(
                        "Bad _revisions: empty history".into(),
                    ));
                };
                let old = self.meta(&id)?;
                let mut tree = old.as_ref().map(|m| m.tree.clone()).unwrap_or_default();
                if tree.contains(&rev) {
                    return Ok(WriteOutcome { id, rev, seq: 0 });
                }
                // the newest known ancestor with a body resolves stubs
                let base = history[1..]
                    .iter()
                    .find(|r| tree.get(r).is_some_and(|n| n.has_body))
                    .cloned();
                let atts = self.attachments(&id, base.as_deref(), generation(&rev), attachments)?;
                let body = StoredBody {
                    json: body,
                    attachments: atts,
                };
                let channels = tombstone_channels(Some(&tree), deleted, channels, &history[1..]);
                tree.graft(&history, deleted, 0, channels);
                if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == rev) {
                    n.access = access;
                }
                let seq = self.commit_doc(&id, old, tree, Some((&rev, body)), revs_limit)?;
                Ok(WriteOutcome { id, rev, seq })
            }
        }
    }

    /// New channels and grants for a document's winner (see [`Restamp`]): its new sequence,
    /// or `None` when `rev` no longer wins (or the document is gone) or nothing changed.
    pub fn restamp(&mut self, r: Restamp) -> Result<Option<u64>> {
        let Some(old) = self.meta(&r.id)? else {
            return Ok(None);
        };
        match old.tree.winner() {
            Some(w) if w.rev == r.rev => {
                if w.channels == r.channels && w.access == r.access {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
        let mut tree = old.tree.clone();
        if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == r.rev) {
            n.channels = r.channels;
            n.access = r.access;
        }
        let seq = self.commit_doc(&r.id, Some(old), tree, None, usize::MAX)?;
        Ok(Some(seq))
    }

    /// Ends the batch: marks the entries of documents updated in it as superseded, and
    /// returns the backend (holding every operation) with what the batch changed.
    pub fn finish(mut self) -> Result<(B, BatchSummary)> {
        for (id, old) in std::mem::take(&mut self.replaced) {
            let Some(Some(now)) = self.metas.get(&id) else {
                return Err(StorageError::Corrupt(format!(
                    "document \"{}\" replaced in a batch without a new state",
                    truncate(&id, 100)
                )));
            };
            let mut entry = change_entry(&id, &old);
            entry.superseded = Some(now.seq);
            self.backend.supersede(&entry, &old.channel_history)?;
        }
        let summary = BatchSummary {
            last_seq: self.next_seq - 1,
            doc_delta: self.doc_delta,
            grants_changed: self.grants_changed,
            grant_changes: self
                .grants
                .into_iter()
                .map(|((kind, name, doc), grant)| GrantChange {
                    kind,
                    name,
                    doc,
                    grant,
                })
                .collect(),
        };
        Ok((self.backend, summary))
    }

    fn meta(&mut self, id: &str) -> Result<Option<DocMeta>> {
        if let Some(m) = self.metas.get(id) {
            return Ok(m.clone());
        }
        let m = self.backend.load_meta(id)?;
        self.metas.insert(id.to_string(), m.clone());
        Ok(m)
    }

    fn body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        if let Some(b) = self.bodies.get(&(id.to_string(), rev.to_string())) {
            return Ok(Some(b.clone()));
        }
        self.backend.load_body(id, rev)
    }

    fn attachment_len(&self, digest: &str) -> Result<Option<u64>> {
        match self.blobs.get(digest) {
            Some(len) => Ok(Some(*len)),
            None => self.backend.attachment_len(digest),
        }
    }

    /// Moves a document's grants from the previous winner's to the new winner's at `seq`.
    fn update_grants(
        &mut self,
        id: &str,
        old: &RevAccess,
        new: &RevAccess,
        seq: u64,
    ) -> Result<()> {
        let principals: BTreeSet<&String> = old
            .channels
            .keys()
            .chain(new.channels.keys())
            .chain(old.roles.keys())
            .chain(new.roles.keys())
            .collect();
        let none = BTreeSet::new();
        for p in principals {
            let (kind, name) = match p.strip_prefix("role:") {
                Some(r) => (PrincipalKind::Role, r),
                None => (PrincipalKind::User, p.as_str()),
            };
            let key = (kind, name.to_string(), id.to_string());
            let mut g = match self.grants.get(&key) {
                Some(g) => g.clone().unwrap_or_default(),
                None => self.backend.load_grant(kind, name, id)?.unwrap_or_default(),
            };
            let want_channels = new.channels.get(p).unwrap_or(&none);
            let want_roles = new.roles.get(p).unwrap_or(&none);
            regrant(&mut g.channels, &mut g.revoked_channels, want_channels, seq);
            regrant(&mut g.roles, &mut g.revoked_roles, want_roles, seq);
            if g.is_empty() {
                self.backend.remove_grant(kind, name, id)?;
                self.grants.insert(key, None);
            } else {
                self.backend.put_grant(kind, name, id, &g)?;
                self.grants.insert(key, Some(g));
            }
            self.grants_changed = true;
        }
        Ok(())
    }

    /// Resolves attachment inputs into stored metadata, storing new data once per digest.
    fn attachments(
        &mut self,
        id: &str,
        parent_rev: Option<&str>,
        gen: u64,
        inputs: Vec<(String, AttachmentInput)>,
    ) -> Result<Vec<(String, AttachmentMeta)>> {
        // only stubs refer to the parent's attachments: an edit without any does not read the
        // parent's body (every update did, under the write lock)
        let stubs = inputs
            .iter()
            .any(|(_, i)| matches!(i, AttachmentInput::Stub { .. }));
        let parent_atts: Vec<(String, AttachmentMeta)> = match parent_rev {
            Some(p) if stubs => self.body(id, p)?.map(|b| b.attachments).unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut out: Vec<(String, AttachmentMeta)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let meta = match input {
                AttachmentInput::Data {
                    content_type,
                    data,
                    revpos,
                } => {
                    let digest = attachment_digest(&data);
                    if !self.blobs.contains_key(&digest) && !self.backend.has_attachment(&digest)? {
                        self.backend.put_attachment(&digest, &data)?;
                        self.blobs.insert(digest.clone(), data.len() as u64);
                    }
                    AttachmentMeta {
                        content_type,
                        digest,
                        length: data.len() as u64,
                        revpos: revpos.filter(|r| *r >= 1 && *r <= gen).unwrap_or(gen),
                        stub: true,
                    }
                }
                AttachmentInput::Stub {
                    digest,
                    revpos,
                    content_type,
                } => {
                    let from_parent = parent_atts
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, m)| m.clone())
                        .filter(|m| digest.as_ref().is_none_or(|d| *d == m.digest));
                    let by_digest = match (&from_parent, &digest) {
                        (None, Some(d)) => self.attachment_len(d)?,
                        _ => None,
                    };
                    match (from_parent, digest, by_digest) {
                        (Some(m), _, _) => m,
                        (None, Some(d), Some(length)) => AttachmentMeta {
                            content_type: content_type
                                .unwrap_or_else(|| "application/octet-stream".into()),
                            digest: d,
                            length,
                            revpos: revpos.filter(|r| *r >= 1 && *r <= gen).unwrap_or(gen),
                            stub: true,
                        },
                        _ => {
                            return Err(StorageError::PreconditionFailed(format!(
                                "attachment stub \"{}\" refers to data this server does not have",
                                truncate(&name, 100)
                            )))
                        }
                    }
                }
            };
            out.retain(|(n, _)| *n != name);
            out.push((name, meta));
        }
        Ok(out)
    }

    /// Stores a new revision's body (when there is one: a restamp has none) and the
    /// document's updated metadata and change entry.
    fn commit_doc(
        &mut self,
        id: &str,
        old: Option<DocMeta>,
        mut tree: RevTree,
        new: Option<(&str, StoredBody)>,
        revs_limit: usize,
    ) -> Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((new_rev, _)) = &new {
            if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == *new_rev) {
                n.seq = seq;
            }
        }
        let was_live = old.as_ref().is_some_and(|m| m.is_live());
        let mut history = old
            .as_ref()
            .map(|m| m.channel_history.clone())
            .unwrap_or_default();
        let old_access = old
            .as_ref()
            .and_then(|m| m.tree.winner())
            .map(|w| w.access.clone())
            .unwrap_or_default();
        if let Some(old) = old {
            if old.seq >= self.first_seq {
                // written earlier in this batch: no reader has seen it, nor can (the batch is
                // applied at once and views stop at a batch's end)
                self.backend.drop_entry(old.seq, &old.channel_history)?;
            } else {
                // visible to readers until this change is: superseded at the end of the
                // batch (see `finish`)
                self.replaced.entry(id.to_string()).or_insert(old);
            }
        }
        for removed in tree.prune(revs_limit.max(1)) {
            self.backend.remove_body(id, &removed)?;
        }
        keep_grants_on_leaves(&mut tree);
        let new_access = tree.winner().map(|w| w.access.clone()).unwrap_or_default();
        if old_access != new_access {
            self.update_grants(id, &old_access, &new_access, seq)?;
        }
        if let Some((new_rev, body)) = new {
            self.backend.put_body(id, new_rev, &body)?;
            self.bodies
                .insert((id.to_string(), new_rev.to_string()), body);
        }
        let winner_channels = tree
            .winner()
            .map(|w| w.channels.as_slice())
            .unwrap_or_default();
        for ch in winner_channels {
            if !ch.contains('\0') && !history.contains(ch) {
                history.push(ch.clone());
            }
        }
        history.sort();
        let meta = DocMeta {
            seq,
            tree,
            channel_history: history,
        };
        self.backend.put_doc(id, &meta, &change_entry(id, &meta))?;
        self.doc_delta += meta.is_live() as i64 - was_live as i64;
        self.metas.insert(id.to_string(), Some(meta));
        Ok(seq)
    }
}

/// The parent an interactive edit applies to, or why it is refused: the parent must be a
/// current leaf (not a tombstone being deleted again); without one, the document must be new
/// or its winner a tombstone (which becomes the parent).
fn edit_parent(
    old: Option<&DocMeta>,
    parent: Option<String>,
    deleted: bool,
    must_exist: bool,
) -> Result<Option<String>> {
    let conflict = || StorageError::Conflict("Document update conflict".into());
    match (old, parent) {
        (None, Some(_)) => Err(conflict()),
        (None, None) if must_exist => Err(StorageError::NotFound("missing".into())),
        (None, None) => Ok(None),
        (Some(m), None) => match m.winner() {
            Some((_, false)) => Err(conflict()),
            Some((_, true)) if must_exist => Err(StorageError::NotFound("deleted".into())),
            Some((w, true)) => Ok(Some(w.to_string())),
            None => Ok(None),
        },
        (Some(m), Some(p)) => {
            parse_rev(&p)?;
            if !m.tree.is_leaf(&p) {
                return Err(conflict());
            }
            if deleted && m.tree.get(&p).is_some_and(|n| n.deleted) {
                return Err(conflict());
            }
            Ok(Some(p))
        }
    }
}

/// A revision's channels: as given, except that a tombstone without channels stays in the
/// channels of its nearest known ancestor (the first of `ancestors` in `tree`), so the deletion
/// reaches that ancestor's readers.
fn tombstone_channels<'a>(
    tree: Option<&RevTree>,
    deleted: bool,
    channels: Vec<String>,
    ancestors: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    match tree {
        Some(tree) if deleted && channels.is_empty() => ancestors
            .into_iter()
            .find_map(|r| tree.get(r))
            .map(|n| n.channels.clone())
            .unwrap_or_default(),
        _ => channels,
    }
}

/// Grants stay on leaves only; the winner's are the document's.
fn keep_grants_on_leaves(tree: &mut RevTree) {
    let parents: HashSet<String> = tree.nodes.iter().filter_map(|n| n.parent.clone()).collect();
    for n in tree.nodes.iter_mut() {
        if !n.access.is_empty() && parents.contains(&n.rev) {
            n.access = RevAccess::default();
        }
    }
}

/// The by-sequence entry of a document in the state `meta` (the same function writes a new
/// entry and rewrites a superseded one, so the rewrite is what readers saw before).
pub fn change_entry(id: &str, meta: &DocMeta) -> ChangeEntry {
    let channels: Vec<String> = meta
        .tree
        .winner()
        .map(|w| w.channels.clone())
        .unwrap_or_default();
    let removed = meta
        .channel_history
        .iter()
        .filter(|c| !channels.contains(c))
        .cloned()
        .collect();
    let leaves = meta
        .tree
        .sorted_leaves()
        .iter()
        .map(|n| ChangeRev {
            rev: n.rev.clone(),
            deleted: n.deleted,
        })
        .collect();
    ChangeEntry {
        seq: meta.seq,
        id: id.to_string(),
        leaves,
        channels,
        removed,
        superseded: None,
    }
}

/// Applies a new grant list: kept entries keep their sequence, new ones get `seq`, dropped ones
/// are recorded as revoked at `seq`.
fn regrant(
    held: &mut BTreeMap<String, u64>,
    revoked: &mut BTreeMap<String, u64>,
    want: &BTreeSet<String>,
    seq: u64,
) {
    let lost: Vec<String> = held
        .keys()
        .filter(|c| !want.contains(*c))
        .cloned()
        .collect();
    for c in lost {
        held.remove(&c);
        revoked.insert(c, seq);
    }
    for c in want {
        held.entry(c.clone()).or_insert(seq);
        revoked.remove(c);
    }
}

/// The revision a `_local` document write gets (`0-N`): `rev` must name the stored one (none
/// for a new document).
pub fn next_local_rev(current: Option<&LocalDoc>, rev: Option<&str>) -> Result<String> {
    let next = match (current, rev) {
        (None, None) => 1,
        (None, Some(_)) => {
            return Err(StorageError::NotFound(
                "No previous revision to replace".into(),
            ))
        }
        (Some(c), Some(r)) if c.rev == r => local_gen(&c.rev) + 1,
        (Some(_), _) => return Err(StorageError::Conflict("Document update conflict".into())),
    };
    Ok(format!("0-{next}"))
}

/// Whether a `_local` document may be deleted: it exists and `rev` names it.
pub fn check_local_delete(current: Option<&LocalDoc>, rev: Option<&str>) -> Result<()> {
    match current {
        None => Err(StorageError::NotFound("missing".into())),
        Some(c) if Some(c.rev.as_str()) != rev => {
            Err(StorageError::Conflict("Document update conflict".into()))
        }
        Some(_) => Ok(()),
    }
}

fn local_gen(rev: &str) -> u64 {
    rev.strip_prefix("0-")
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// Whether compaction has bodies to drop in this document: non-leaf revisions with a body.
pub fn has_old_bodies(meta: &DocMeta) -> bool {
    let leaves: HashSet<&str> = meta.tree.leaves().iter().map(|n| n.rev.as_str()).collect();
    meta.tree
        .nodes
        .iter()
        .any(|n| n.has_body && !leaves.contains(n.rev.as_str()))
}

/// Compaction of one document: marks every non-leaf revision bodiless and returns the
/// revisions whose bodies to drop.
pub fn drop_old_bodies(meta: &mut DocMeta) -> Vec<String> {
    let leaves: HashSet<String> = meta.tree.leaves().iter().map(|n| n.rev.clone()).collect();
    let mut dropped = Vec::new();
    for n in meta.tree.nodes.iter_mut() {
        if n.has_body && !leaves.contains(&n.rev) {
            n.has_body = false;
            dropped.push(n.rev.clone());
        }
    }
    dropped
}
