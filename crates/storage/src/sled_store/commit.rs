//! Durability: the group commit shared by every database of the store, and publishing a
//! database's sequences once the batches that carry them are on disk.

use std::sync::atomic::{AtomicU64, Ordering};

use super::SledDatabase;
use crate::{Result, StorageError, Ticket};

/// Shared group-commit state: writers take a ticket after their batch is applied; waiters flush
/// once for every ticket issued before the flush started.
pub(super) struct GroupCommit {
    written: AtomicU64,
    pub(super) flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub(super) fn new() -> GroupCommit {
        GroupCommit {
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    pub(super) async fn wait(&self, db: &sled::Db, ticket: Ticket) -> Result<()> {
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        let _leader = self.lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StorageError::Corrupt(format!("flush task failed: {e}")))??;
        self.flushed.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }
}

impl SledDatabase {
    /// Waits until the batch behind `ticket` is on disk, then publishes what became durable.
    pub(super) async fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        self.commit.wait(&self.db, ticket).await?;
        self.publish_durable();
        Ok(())
    }

    /// Publishes the sequences of every batch the group commit has flushed.
    fn publish_durable(&self) {
        let flushed = self.commit.flushed.load(Ordering::SeqCst);
        let mut newest = None;
        {
            let mut q = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
            while q.front().is_some_and(|(t, _)| t.0 <= flushed) {
                newest = q.pop_front().map(|(_, seq)| seq);
            }
        }
        if let Some(seq) = newest {
            if self.durable_seq.fetch_max(seq, Ordering::SeqCst) < seq {
                self.notify.send_if_modified(|v| {
                    let changed = *v < seq;
                    *v = (*v).max(seq);
                    changed
                });
            }
        }
    }
}
