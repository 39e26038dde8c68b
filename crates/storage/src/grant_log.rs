//! The recent history of the access index, kept in memory by a backend so that caches of
//! effective channels catch up by applying what changed (one entry per grant written) instead
//! of recomputing every principal from all of its grants after each write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::GrantChange;

/// How many grant changes the history keeps; a cache further behind starts over.
const CAPACITY: usize = 4096;

/// The grants version and the changes of the latest versions.
#[derive(Debug, Default)]
pub struct GrantLog {
    inner: Mutex<Inner>,
    /// `inner.version`, readable without the lock (every request's identity check reads it).
    current: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    version: u64,
    /// (version, what that version changed), oldest first.
    entries: VecDeque<(u64, Vec<GrantChange>)>,
    len: usize,
    /// The highest store sequence recorded with [`GrantLog::record_at`].
    last_seq: u64,
}

impl GrantLog {
    /// The current version: it changes with every [`GrantLog::record`].
    pub fn version(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Records the changes of one batch as the next version (call after the batch is
    /// applied, so a reader of the new version finds the new entries in the store).
    pub fn record(&self, changes: Vec<GrantChange>) {
        let mut g = self.lock();
        g.version += 1;
        let v = g.version;
        self.current.store(v, Ordering::SeqCst);
        g.len += changes.len();
        g.entries.push_back((v, changes));
        while g.len > CAPACITY && g.entries.len() > 1 {
            if let Some((_, old)) = g.entries.pop_front() {
                g.len -= old.len();
            }
        }
        if g.len > CAPACITY {
            // one batch larger than the history: nobody can catch up through it
            g.entries.clear();
            g.len = 0;
        }
    }

    /// Records the changes of a batch committed at store sequence `seq`, for a backend whose
    /// batches may finish committing out of order (several transactions in flight). Changes
    /// must be applied in commit order: a batch recorded after one with a later sequence
    /// (its changes might be older than what a cache already applied) is recorded as a
    /// [`GrantLog::reset`] instead.
    pub fn record_at(&self, seq: u64, changes: Vec<GrantChange>) {
        {
            let mut g = self.lock();
            if seq > g.last_seq {
                g.last_seq = seq;
                drop(g);
                self.record(changes);
                return;
            }
        }
        self.reset();
    }

    /// Moves the version on with changes this log does not know (made elsewhere): a cache
    /// behind it starts over.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.version += 1;
        let v = g.version;
        self.current.store(v, Ordering::SeqCst);
        g.entries.clear();
        g.len = 0;
    }

    /// The changes after version `since` and the version they lead to, or `None` when some
    /// of them are no longer kept.
    pub fn since(&self, since: u64) -> Option<(u64, Vec<GrantChange>)> {
        let g = self.lock();
        if since == g.version {
            return Some((since, Vec::new()));
        }
        if since > g.version {
            return None;
        }
        let oldest = g.entries.front().map(|(v, _)| *v)?;
        if oldest > since + 1 {
            return None;
        }
        let changes = g
            .entries
            .iter()
            .filter(|(v, _)| *v > since)
            .flat_map(|(_, c)| c.iter().cloned())
            .collect();
        Some((g.version, changes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrincipalKind;

    fn change(doc: &str) -> GrantChange {
        GrantChange {
            kind: PrincipalKind::User,
            name: "u".into(),
            doc: doc.into(),
            grant: None,
        }
    }

    #[test]
    fn catches_up_while_kept() {
        let log = GrantLog::default();
        assert_eq!(log.since(0), Some((0, vec![])));
        log.record(vec![change("a")]);
        log.record(vec![change("b"), change("c")]);
        assert_eq!(log.version(), 2);
        let (v, c) = log.since(0).unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            c.iter().map(|c| c.doc.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(log.since(1).unwrap().1.len(), 2);
        assert_eq!(log.since(3), None);
        for _ in 0..CAPACITY {
            log.record(vec![change("x")]);
        }
        assert_eq!(log.since(0), None, "the oldest changes are gone");
        assert_eq!(log.since(log.version() - 1).unwrap().1.len(), 1);
    }

    #[test]
    fn out_of_order_and_unknown_changes_make_caches_start_over() {
        let log = GrantLog::default();
        log.record_at(5, vec![change("a")]);
        log.record_at(9, vec![change("b")]);
        assert_eq!(log.since(0).unwrap().1.len(), 2);
        // a batch that committed before the last one recorded, recorded after it
        log.record_at(7, vec![change("c")]);
        assert_eq!(log.version(), 3);
        assert_eq!(log.since(2), None);
        assert_eq!(log.since(3), Some((3, vec![])));
        log.record_at(10, vec![change("d")]);
        assert_eq!(log.since(3).unwrap().1, vec![change("d")]);
        // changes made elsewhere
        log.reset();
        assert_eq!(log.since(4), None);
        assert_eq!(log.since(5), Some((5, vec![])));
    }
}
