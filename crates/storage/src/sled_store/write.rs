//! The write batch: the rules' operations ([`crate::rules::BatchBackend`]) turned into sled
//! keys, applied as one `apply_batch` under the database's write lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use sled::Batch;

use super::keys::*;
use super::SledDatabase;
use crate::combine::BatchResult;
use crate::model::*;
use crate::rules::{BatchBackend, DocBatch};
use crate::{PrincipalKind, Result, Ticket};

/// Longest revision id kept inline in a document's record (its length is a u16 there).
const MAX_INLINE_REV: usize = u16::MAX as usize;

/// Fewest superseded entries a write batch collects (when there are that many to collect).
const GC_PER_BATCH: usize = 1_000;

/// A sled batch being filled by the rules, reading the tree as it was before the batch.
///
/// Bodies: a document's `d` record holds one revision's body inline (the winner's when the
/// batch wrote it), so a new document is two keys (`d`, `s`), not three. Every other body
/// has its own `b` key. Bodies put by the batch wait in [`DocBodies`] until the document's
/// record is written ([`BatchBackend::put_doc`]), which places them.
pub(super) struct SledBatch<'a> {
    pub(super) db: &'a SledDatabase,
    pub(super) batch: Batch,
    /// Per document the batch read or wrote: where its bodies are.
    bodies: RefCell<HashMap<String, DocBodies>>,
}

/// A document's bodies as this batch leaves them.
#[derive(Default)]
struct DocBodies {
    /// The body its record holds (as the batch will write the record): revision, encoding.
    inline: Option<(String, Vec<u8>)>,
    /// Bodies put by the batch and not yet placed (inline or under `b`).
    pending: Vec<(String, Vec<u8>)>,
}

impl<'a> SledBatch<'a> {
    pub(super) fn new(db: &'a SledDatabase) -> Self {
        SledBatch {
            db,
            batch: Batch::default(),
            bodies: RefCell::new(HashMap::new()),
        }
    }

    /// The sled batch, with any body not placed yet under its `b` key (the rules always
    /// write the document after its body; this keeps a body from being lost if not).
    pub(super) fn into_batch(self) -> Batch {
        let mut batch = self.batch;
        for (id, b) in self.bodies.into_inner() {
            for (rev, bytes) in b.pending {
                batch.insert(body_key(&id, &rev), bytes);
            }
        }
        batch
    }

    /// Where a document's bodies are, read from its stored record on first use.
    fn doc_bodies<T>(&self, id: &str, f: impl FnOnce(&mut DocBodies) -> T) -> Result<T> {
        let mut map = self.bodies.borrow_mut();
        if !map.contains_key(id) {
            let inline = match self.db.load_doc_record(id)? {
                Some(v) => split_doc(id, &v)?
                    .inline
                    .map(|(r, b)| (r.to_string(), b.to_vec())),
                None => None,
            };
            map.insert(
                id.to_string(),
                DocBodies {
                    inline,
                    pending: Vec::new(),
                },
            );
        }
        Ok(f(map.get_mut(id).expect("inserted above")))
    }
}

impl BatchBackend for SledBatch<'_> {
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        let Some(v) = self.db.load_doc_record(id)? else {
            // no record, no inline body: noted so that placing its bodies reads nothing
            self.bodies.borrow_mut().entry(id.to_string()).or_default();
            return Ok(None);
        };
        self.db.docs_read.fetch_add(1, Ordering::Relaxed);
        let rec = split_doc(id, &v)?;
        let meta = decode_doc(id, &v)?;
        self.bodies
            .borrow_mut()
            .entry(id.to_string())
            .or_insert_with(|| DocBodies {
                inline: rec.inline.map(|(r, b)| (r.to_string(), b.to_vec())),
                pending: Vec::new(),
            });
        Ok(Some(meta))
    }

    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        self.db.load_body(id, rev)
    }

    fn attachment_len(&self, digest: &str) -> Result<Option<u64>> {
        Ok(self
            .db
            .tree
            .get(prefixed(b'a', digest))?
            .map(|v| v.len() as u64))
    }

    fn has_attachment(&self, digest: &str) -> Result<bool> {
        Ok(self.db.tree.contains_key(prefixed(b'a', digest))?)
    }

    fn load_grant(&self, kind: PrincipalKind, name: &str, doc: &str) -> Result<Option<DocGrant>> {
        match self.db.tree.get(grant_key(kind, name, doc))? {
            Some(v) => Ok(Some(decode("access index entry", &v)?)),
            None => Ok(None),
        }
    }

    fn put_attachment(&mut self, digest: &str, data: &[u8]) -> Result<()> {
        self.batch.insert(prefixed(b'a', digest), data);
        Ok(())
    }

    fn put_body(&mut self, id: &str, rev: &str, body: &StoredBody) -> Result<()> {
        let bytes = encode_body(id, rev, body)?;
        if rev.len() > MAX_INLINE_REV {
            self.batch.insert(body_key(id, rev), bytes);
            return Ok(());
        }
        self.doc_bodies(id, |b| {
            b.pending.retain(|(r, _)| r != rev);
            b.pending.push((rev.to_string(), bytes));
        })
    }

    fn remove_body(&mut self, id: &str, rev: &str) -> Result<()> {
        self.batch.remove(body_key(id, rev));
        self.doc_bodies(id, |b| {
            if b.inline.as_ref().is_some_and(|(r, _)| r == rev) {
                b.inline = None;
            }
            b.pending.retain(|(r, _)| r != rev);
        })
    }

    /// Places the bodies the batch put for the document: the winner's inline when it is among
    /// them (the body inline before moves to its `b` key), else the record keeps its inline
    /// body (or takes the newest put, when it has none); the rest go under `b`.
    fn put_doc(&mut self, id: &str, meta: &DocMeta, entry: &ChangeEntry) -> Result<()> {
        for ch in &meta.channel_history {
            self.batch.insert(channel_key(ch, meta.seq), &[] as &[u8]);
        }
        self.batch.insert(&seq_key(meta.seq), encode_change(entry));
        let winner = meta.tree.winner().map(|w| w.rev.as_str());
        let (record, moved) = self.doc_bodies(id, |b| {
            let mut pending = std::mem::take(&mut b.pending);
            let mut moved = Vec::new();
            let pick = pending
                .iter()
                .position(|(r, _)| Some(r.as_str()) == winner)
                .or_else(|| {
                    b.inline
                        .is_none()
                        .then(|| pending.len().checked_sub(1))
                        .flatten()
                });
            if let Some(i) = pick {
                let new = pending.remove(i);
                moved.extend(b.inline.replace(new));
            }
            moved.append(&mut pending);
            let inline = b.inline.as_ref().map(|(r, b)| (r.as_str(), b.as_slice()));
            (encode_doc(id, meta, inline), moved)
        })?;
        for (rev, bytes) in moved {
            self.batch.insert(body_key(id, &rev), bytes);
        }
        self.batch.insert(doc_key(id), record?);
        Ok(())
    }

    fn drop_entry(&mut self, seq: u64, channels: &[String]) -> Result<()> {
        self.batch.remove(&seq_key(seq));
        for ch in channels {
            self.batch.remove(channel_key(ch, seq));
        }
        Ok(())
    }

    /// Rewrites the entry with its `superseded` mark and records the pair under `g` for
    /// [`SledDatabase::collect_superseded`].
    fn supersede(&mut self, entry: &ChangeEntry, channel_history: &[String]) -> Result<()> {
        let next = entry.superseded.unwrap_or(entry.seq);
        self.batch.insert(&seq_key(entry.seq), encode_change(entry));
        self.batch.insert(
            &superseded_key(next, entry.seq),
            encode("superseded entry", &channel_history)?,
        );
        Ok(())
    }

    fn put_grant(
        &mut self,
        kind: PrincipalKind,
        name: &str,
        doc: &str,
        grant: &DocGrant,
    ) -> Result<()> {
        self.batch.insert(
            grant_key(kind, name, doc),
            encode("access index entry", grant)?,
        );
        Ok(())
    }

    fn remove_grant(&mut self, kind: PrincipalKind, name: &str, doc: &str) -> Result<()> {
        self.batch.remove(grant_key(kind, name, doc));
        Ok(())
    }
}

impl SledDatabase {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // a panic while holding the lock cannot leave sled half-written (batches are atomic)
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies write sets, in order, as one batch under the write lock: one result list per set,
    /// one ticket for all.
    pub(super) fn apply_writes(&self, sets: Vec<Vec<DocWrite>>) -> BatchResult {
        let _guard = self.lock();
        let writes: usize = sets.iter().map(Vec::len).sum();
        let mut st = DocBatch::new(SledBatch::new(self), self.assigned_seq() + 1);
        let results: Vec<Vec<Result<WriteOutcome>>> = sets
            .into_iter()
            .map(|writes| writes.into_iter().map(|w| st.apply(w)).collect())
            .collect();
        let (backend, summary) = st.finish()?;
        let mut batch = backend.into_batch();
        // collect at least as much as this batch supersedes, so garbage cannot outgrow writes
        self.collect_superseded(&mut batch, (2 * writes).max(GC_PER_BATCH))?;
        let ticket = self.finish(batch, summary.last_seq, summary.doc_delta)?;
        if summary.grants_changed {
            self.grants.record(summary.grant_changes);
        }
        Ok((results, ticket))
    }

    /// Applies restamps as one batch under the write lock.
    pub(super) fn apply_restamps(&self, docs: Vec<Restamp>) -> Result<(Vec<Option<u64>>, Ticket)> {
        let _guard = self.lock();
        let n = docs.len();
        let mut st = DocBatch::new(SledBatch::new(self), self.assigned_seq() + 1);
        let results = docs
            .into_iter()
            .map(|r| st.restamp(r))
            .collect::<Result<Vec<_>>>()?;
        let (backend, summary) = st.finish()?;
        let mut batch = backend.into_batch();
        self.collect_superseded(&mut batch, (2 * n).max(GC_PER_BATCH))?;
        let ticket = self.finish(batch, summary.last_seq, summary.doc_delta)?;
        if summary.grants_changed {
            self.grants.record(summary.grant_changes);
        }
        Ok((results, ticket))
    }

    /// Applies a batch and publishes the new last sequence. Call under the write lock.
    pub(super) fn finish(&self, mut batch: Batch, new_last: u64, doc_delta: i64) -> Result<Ticket> {
        let old_last = self.assigned_seq.load(Ordering::SeqCst);
        if new_last != old_last {
            batch.insert(META_LAST_SEQ, &new_last.to_be_bytes());
        }
        if doc_delta != 0 {
            let count = (read_u64(&self.tree, META_DOC_COUNT)? as i64 + doc_delta).max(0) as u64;
            batch.insert(META_DOC_COUNT, &count.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        let ticket = self.commit.ticket();
        if new_last != old_last {
            self.assigned_seq.store(new_last, Ordering::SeqCst);
            self.unpublished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((ticket, new_last));
        }
        Ok(ticket)
    }

    /// Last sequence assigned (writers number from here).
    pub(super) fn assigned_seq(&self) -> u64 {
        self.assigned_seq.load(Ordering::SeqCst)
    }
}
