//! Combining concurrent document writers into one batch (any backend).
//!
//! Each batch costs the engine a fixed price (sled 0.34 writes its log buffer out on every
//! `apply_batch`; a networked backend pays a round trip per transaction), so one batch per
//! request makes every PUT pay it. A writer that finds a batch being applied queues its writes
//! and waits; when the batch is done, leadership passes to the first queued writer, which
//! applies every queued write set, in arrival order, as one batch, and hands each writer its
//! own results. A failed write leaves nothing in the batch, so per-write errors stay
//! per-write; a batch that fails as a whole fails every writer in it.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::model::{DocWrite, WriteOutcome};
use crate::{Result, StorageError, Ticket};

/// Results of one write set and the ticket of the batch that carried it.
pub type WriteResult = Result<(Vec<Result<WriteOutcome>>, Ticket)>;

/// Results of several write sets applied as one batch: one result list per set, one ticket.
pub type BatchResult = Result<(Vec<Vec<Result<WriteOutcome>>>, Ticket)>;

/// Most writes one combined batch takes from the queue (bounds a leader's batch).
pub const MAX_COMBINED_WRITES: usize = 1_000;

/// What a queued writer is told: its results, or that it now leads (with its writes back).
enum Turn {
    Done(WriteResult),
    Lead(Vec<DocWrite>),
}

/// A writer waiting for the current batch to finish.
struct Queued {
    writes: Vec<DocWrite>,
    tx: tokio::sync::oneshot::Sender<Turn>,
}

#[derive(Default)]
struct WriteQueue {
    /// A writer is applying a batch (or has been handed the lead and not yet taken it).
    leading: bool,
    waiting: VecDeque<Queued>,
}

/// The queue of one database's document writers.
#[derive(Default)]
pub struct WriteCombiner {
    queue: Mutex<WriteQueue>,
}

impl WriteCombiner {
    /// Applies `writes` with the writes of every other caller queued meanwhile: `apply` gets the
    /// write sets in arrival order (this caller's first) and must apply them as one batch.
    /// `apply` should not be cancellable halfway (the sled backend's is synchronous; the
    /// PostgreSQL one runs its transaction in a task of its own): a leader dropped while its
    /// batch is applied leaves the queued writers without their results.
    pub async fn write<F, Fut>(&self, writes: Vec<DocWrite>, apply: F) -> WriteResult
    where
        F: FnOnce(Vec<Vec<DocWrite>>) -> Fut,
        Fut: std::future::Future<Output = BatchResult>,
    {
        let mut mine = writes;
        let rx = {
            let mut q = self.lock();
            if q.leading {
                let (tx, rx) = tokio::sync::oneshot::channel();
                q.waiting.push_back(Queued { writes: mine, tx });
                mine = Vec::new();
                Some(rx)
            } else {
                q.leading = true;
                None
            }
        };
        if let Some(rx) = rx {
            match rx.await {
                Ok(Turn::Done(r)) => return r,
                Ok(Turn::Lead(w)) => mine = w,
                Err(_) => {
                    return Err(StorageError::Corrupt(
                        "the batch carrying this write failed".into(),
                    ))
                }
            }
        }
        // leading: the lead passes on when this is done (or dropped)
        let _lead = LeadGuard(self);
        let others: Vec<Queued> = {
            let mut q = self.lock();
            let mut n = mine.len();
            let mut taken = Vec::new();
            while n < MAX_COMBINED_WRITES {
                let Some(next) = q.waiting.pop_front() else {
                    break;
                };
                n += next.writes.len();
                taken.push(next);
            }
            taken
        };
        let mut sets = Vec::with_capacity(others.len() + 1);
        sets.push(mine);
        let mut senders = Vec::with_capacity(others.len());
        for o in others {
            sets.push(o.writes);
            senders.push(o.tx);
        }
        match apply(sets).await {
            Ok((mut results, ticket)) => {
                let theirs = results.split_off(1);
                for (tx, r) in senders.into_iter().zip(theirs) {
                    // a writer that went away still had its writes applied, as before
                    let _ = tx.send(Turn::Done(Ok((r, ticket))));
                }
                Ok((results.pop().unwrap_or_default(), ticket))
            }
            Err(e) => {
                for tx in senders {
                    let _ = tx.send(Turn::Done(Err(e.clone())));
                }
                Err(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Test hook: pretends a batch is being applied, so every writer queues.
    #[cfg(test)]
    pub(crate) fn hold_lead(&self) {
        self.lock().leading = true;
    }

    /// Test hook: ends the batch [`WriteCombiner::hold_lead`] pretended.
    #[cfg(test)]
    pub(crate) fn release_lead(&self) {
        drop(LeadGuard(self));
    }

    /// Test hook: (whether a writer leads, how many wait).
    #[cfg(test)]
    pub(crate) fn state(&self) -> (bool, usize) {
        let q = self.lock();
        (q.leading, q.waiting.len())
    }
}

/// Held by the writer that leads: when it is done (or panics), the lead passes to the first
/// queued writer still waiting, or the queue goes idle.
struct LeadGuard<'a>(&'a WriteCombiner);

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        while let Some(next) = q.waiting.pop_front() {
            // a writer whose request was dropped while queued never had its writes applied
            // (nor acknowledged): skip it
            if next.tx.send(Turn::Lead(next.writes)).is_ok() {
                return;
            }
        }
        q.leading = false;
    }
}
