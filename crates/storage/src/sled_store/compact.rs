//! Compaction: non-leaf bodies, unreferenced attachment data and superseded change entries.

use std::collections::HashSet;

use sled::Batch;

use super::keys::*;
use super::SledDatabase;
use crate::model::{CompactStats, DocMeta};
use crate::rules::{drop_old_bodies, has_old_bodies};
use crate::Result;

impl SledDatabase {
    /// Adds the attachment digests of a document's leaf revisions to `out`, given its stored
    /// record (whose inline body is one of them or none).
    fn leaf_digests(&self, id: &str, record: &[u8], out: &mut HashSet<String>) -> Result<DocMeta> {
        let inline = split_doc(id, record)?.inline;
        let meta = decode_doc(id, record)?;
        for leaf in meta.tree.leaves() {
            let body = match inline {
                Some((r, b)) if r == leaf.rev => decode_body(id, r, b)?,
                _ => match self.tree.get(body_key(id, &leaf.rev))? {
                    Some(b) => decode_body(id, &leaf.rev, &b)?,
                    None => continue,
                },
            };
            for (_, a) in body.attachments {
                out.insert(a.digest);
            }
        }
        Ok(meta)
    }

    /// Compaction runs beside writers: it takes the write lock only in short steps, so a
    /// large database keeps accepting writes (and the threads that wait on the lock are
    /// released quickly).
    ///
    /// 1. Scan documents without the lock, noting those with non-leaf bodies and every digest
    ///    a leaf refers to, and scan attachment keys for unreferenced candidates.
    /// 2. Under the lock, a few hundred documents at a time: reload each noted document and
    ///    drop its non-leaf bodies.
    /// 3. Under the lock: add the digests of every document written since the scan began (a
    ///    write may have referred to a candidate by digest), then delete what is still
    ///    unreferenced. Writers check and use blobs under the same lock, so none can slip
    ///    between.
    /// 4. Under the lock, a few thousand at a time: drop every superseded change entry no open
    ///    view needs.
    pub(super) fn compact_now(&self) -> Result<CompactStats> {
        const STEP: usize = 256;
        const GC_STEP: usize = 2_048;
        let mut stats = CompactStats::default();
        let mut referenced: HashSet<String> = HashSet::new();
        let mut with_old_bodies: Vec<String> = Vec::new();
        // a database without attachment data has nothing to collect there: its documents'
        // bodies are not decoded for digests (a full scan of every body costs memory too).
        // Both read under the lock: every batch up to `scan_start` is applied, so attachment
        // data stored later belongs to a write after it (re-checked in step 3).
        let (scan_start, any_attachments) = {
            let _guard = self.lock();
            (
                self.assigned_seq(),
                self.scan(b'a').next().transpose()?.is_some(),
            )
        };
        for row in self.scan(b'd') {
            let (k, v) = row?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let meta = if any_attachments {
                self.leaf_digests(&id, &v, &mut referenced)?
            } else {
                decode_doc(&id, &v)?
            };
            if has_old_bodies(&meta) {
                with_old_bodies.push(id);
            }
        }
        let mut candidates: Vec<sled::IVec> = Vec::new();
        for row in self.scan(b'a') {
            let (k, _) = row?;
            if !referenced.contains(String::from_utf8_lossy(&k[1..]).as_ref()) {
                candidates.push(k);
            }
        }
        for chunk in with_old_bodies.chunks(STEP) {
            let _guard = self.lock();
            let mut batch = Batch::default();
            for id in chunk {
                let Some(v) = self.tree.get(doc_key(id))? else {
                    continue;
                };
                let mut meta = decode_doc(id, &v)?;
                let dropped = drop_old_bodies(&mut meta);
                for rev in &dropped {
                    batch.remove(body_key(id, rev));
                }
                stats.bodies_removed += dropped.len() as u64;
                if !dropped.is_empty() {
                    let inline = split_doc(id, &v)?
                        .inline
                        .filter(|(r, _)| !dropped.iter().any(|d| d == r));
                    batch.insert(doc_key(id), encode_doc(id, &meta, inline)?);
                }
            }
            self.tree.apply_batch(batch)?;
        }
        {
            let _guard = self.lock();
            // attachment data stored since the scan began is not a candidate: only the
            // candidates' digests need checking against what was written since
            if !candidates.is_empty() {
                for entry in self.raw_changes(scan_start, false) {
                    let entry = entry?;
                    if let Some(v) = self.tree.get(doc_key(&entry.id))? {
                        self.leaf_digests(&entry.id, &v, &mut referenced)?;
                    }
                }
            }
            let mut batch = Batch::default();
            for k in candidates {
                if !referenced.contains(String::from_utf8_lossy(&k[1..]).as_ref()) {
                    batch.remove(k);
                    stats.attachments_removed += 1;
                }
            }
            self.tree.apply_batch(batch)?;
        }
        // 4. Every superseded change entry no view needs any more, in steps: one batch is
        //    applied under one epoch of sled's, which keeps every node it replaced until the
        //    batch ends (a single batch of 60,000 removals held about 100 MB).
        loop {
            let _guard = self.lock();
            let mut batch = Batch::default();
            let n = self.collect_superseded(&mut batch, GC_STEP)?;
            self.tree.apply_batch(batch)?;
            if n < GC_STEP {
                break;
            }
        }
        self.db.flush()?;
        Ok(stats)
    }
}
