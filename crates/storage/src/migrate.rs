//! Copies one database from a store to another (any backends: what `syncgate migrate` runs to
//! move a database from the embedded store to PostgreSQL), through the storage traits only.
//!
//! What is copied: every document with each leaf of its revision tree (tombstones included)
//! and that leaf's history, body, attachments, channels and grants — as a replicator would,
//! so bodies of non-leaf revisions are not carried (as after compaction); users and roles
//! (their records as stored: password hashes, channels, grants); sessions; the settings named
//! by the caller (the sync function set through the admin API). The target must be empty, and
//! its sequences start after the source's last one, so a client's checkpoint from the source
//! cannot skip a copied change: clients check every document once more after the move (and
//! transfer nothing they have). Not copied: `_local` documents (replication checkpoints: the
//! same once-more check), pending OpenID Connect logins, the channels a document was in before
//! its current ones (removal notices for changes older than the move).

use crate::model::{AttachmentInput, DocWrite};
use crate::{DatabaseStore, PrincipalKind, Result, StorageError, Ticket};

/// Documents written to the target per batch.
const BATCH: usize = 100;

/// What a copy moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub documents: u64,
    /// Leaf revisions written (a document with conflicts has several).
    pub revisions: u64,
    pub users: u64,
    pub roles: u64,
    pub sessions: u64,
    pub settings: u64,
}

/// Copies database `src` into the empty database `dst` (its sessions only with `sessions`:
/// they are keyed by a hash the target must share); `progress` is called after each batch of
/// documents with the number copied so far. Returns what was copied once it is durable.
pub async fn copy_database(
    src: &dyn DatabaseStore,
    dst: &dyn DatabaseStore,
    sessions: bool,
    settings: &[&str],
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<CopyStats> {
    if dst.last_seq() > 0 || dst.doc_count().await? > 0 {
        return Err(StorageError::Conflict(format!(
            "the target database \"{}\" is not empty: copy into a new, empty one",
            dst.name()
        )));
    }
    let mut stats = CopyStats::default();
    let mut last = dst.raise_seq(src.last_seq()).await?;
    for kind in [PrincipalKind::Role, PrincipalKind::User] {
        for name in src.list_principals(kind).await? {
            let Some(record) = src.get_principal(kind, &name).await? else {
                continue;
            };
            let (_, t) = dst
                .put_principal(kind, &name, &mut |_| Ok(record.clone()))
                .await?;
            last = last.max(t);
            match kind {
                PrincipalKind::User => stats.users += 1,
                PrincipalKind::Role => stats.roles += 1,
            }
        }
    }
    for (key, value) in if sessions {
        src.list_sessions().await?
    } else {
        Vec::new()
    } {
        last = last.max(dst.put_session(&key, value).await?);
        stats.sessions += 1;
    }
    for key in settings {
        if let Some(v) = src.get_setting(key).await? {
            last = last.max(dst.put_setting(key, Some(&v)).await?);
            stats.settings += 1;
        }
    }
    // documents in the source's sequence order, so the target's order of changes is the same
    let ids: Vec<String> = {
        let view = src.changes_view();
        let mut entries = view.since(0, false);
        let mut ids = Vec::new();
        while let Some(e) = entries.next().await {
            ids.push(e?.id);
        }
        ids
    };
    let mut writes = Vec::new();
    for id in ids {
        let Some(meta) = src.doc_meta(&id).await? else {
            continue; // removed since the view was read
        };
        stats.documents += 1;
        for leaf in meta.tree.leaves() {
            let body = src.rev_body(&id, &leaf.rev).await?.ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "document \"{}\" has no body for its leaf {}",
                    crate::revtree::truncate(&id, 100),
                    leaf.rev
                ))
            })?;
            let mut attachments = Vec::with_capacity(body.attachments.len());
            for (name, a) in body.attachments {
                let data = src.attachment(&a.digest).await?.ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "attachment {} of document \"{}\" has no data ({})",
                        name,
                        crate::revtree::truncate(&id, 100),
                        a.digest
                    ))
                })?;
                attachments.push((
                    name,
                    AttachmentInput::Data {
                        content_type: a.content_type,
                        data,
                        revpos: Some(a.revpos),
                    },
                ));
            }
            let history = meta.tree.history(&leaf.rev);
            writes.push(DocWrite::Replicate {
                id: id.clone(),
                revs_limit: history.len().max(20),
                history,
                deleted: leaf.deleted,
                body: body.json,
                attachments,
                channels: leaf.channels.clone(),
                access: leaf.access.clone(),
            });
            stats.revisions += 1;
        }
        if writes.len() >= BATCH {
            last = last.max(flush(dst, std::mem::take(&mut writes)).await?);
            progress(stats.documents);
        }
    }
    if !writes.is_empty() {
        last = last.max(flush(dst, writes).await?);
        progress(stats.documents);
    }
    dst.durable(last).await?;
    Ok(stats)
}

async fn flush(dst: &dyn DatabaseStore, writes: Vec<DocWrite>) -> Result<Ticket> {
    let (results, ticket) = dst.write_docs(writes).await?;
    for r in results {
        r?;
    }
    Ok(ticket)
}
