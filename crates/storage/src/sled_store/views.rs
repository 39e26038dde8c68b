//! Change views (see the module documentation of `sled_store`): reading the by-sequence and
//! channel indexes at one durable sequence, and collecting superseded entries no view needs.

use std::sync::atomic::Ordering;

use sled::Batch;

use super::keys::*;
use super::SledDatabase;
use crate::model::ChangeEntry;
use crate::{ready, BoxFuture, ChangesView, Result, StorageError};

impl SledDatabase {
    /// Opens a change view at the durable sequence. Reading `durable_seq` and registering the
    /// view happen under one lock, which `gc_horizon` takes too: a view that registers after a
    /// horizon was computed sees a sequence at least that horizon.
    pub(super) fn open_view(&self) -> View<'_> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.durable_seq.load(Ordering::SeqCst);
        *views.entry(seq).or_default() += 1;
        View { db: self, seq }
    }

    fn close_view(&self, seq: u64) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = views.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                views.remove(&seq);
            }
        }
    }

    /// Entries superseded at or below this sequence are hidden from every open and future
    /// view: the oldest open view's sequence, or the durable one when none is open.
    fn gc_horizon(&self) -> u64 {
        let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let durable = self.durable_seq.load(Ordering::SeqCst);
        views.keys().next().map_or(durable, |v| (*v).min(durable))
    }

    /// Adds to `batch` the removal of up to `max` superseded entries no view can show (their
    /// `s` entry, channel index keys and `g` record). Call under the write lock.
    pub(super) fn collect_superseded(&self, batch: &mut Batch, max: usize) -> Result<usize> {
        let horizon = self.gc_horizon();
        let end = superseded_key(horizon.saturating_add(1), 0);
        let mut n = 0;
        for row in self.tree.range(b"g".to_vec()..end.to_vec()).take(max) {
            let (k, v) = row?;
            let old: [u8; 8] = k
                .get(9..17)
                .and_then(|t| t.try_into().ok())
                .ok_or_else(|| StorageError::Corrupt("superseded entry key".into()))?;
            let old = u64::from_be_bytes(old);
            let channels: Vec<String> = decode("superseded entry", &v)?;
            batch.remove(&seq_key(old));
            for ch in &channels {
                batch.remove(channel_key(ch, old));
            }
            batch.remove(k);
            n += 1;
        }
        Ok(n)
    }

    /// Every entry with sequence > `since` as stored, applied or not, superseded or not
    /// (views filter; compaction wants them all).
    pub(super) fn raw_changes(
        &self,
        since: u64,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let from = seq_key(since.saturating_add(1));
        let to = [b't'];
        let dec = move |r: sled::Result<(sled::IVec, sled::IVec)>| -> Result<ChangeEntry> {
            let (k, v) = r?;
            self.docs_read.fetch_add(1, Ordering::Relaxed);
            decode_change(&k, &v)
        };
        if descending {
            Box::new(self.tree.range(from.to_vec()..to.to_vec()).rev().map(dec))
        } else {
            Box::new(self.tree.range(from.to_vec()..to.to_vec()).map(dec))
        }
    }

    /// Every entry with sequence > `since` listed under one of `channels`, as stored.
    fn raw_channel_changes(
        &self,
        channels: &[String],
        since: u64,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let mut sources: Vec<Box<dyn Iterator<Item = Result<u64>> + '_>> = Vec::new();
        for ch in channels {
            if ch.contains('\0') {
                continue;
            }
            let from = channel_key(ch, since.saturating_add(1));
            let mut to = b"c".to_vec();
            to.extend_from_slice(ch.as_bytes());
            to.push(1);
            sources.push(Box::new(self.tree.range(from..to).map(|r| {
                let (k, _) = r?;
                let tail: [u8; 8] = k[k.len() - 8..]
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("channel index key".into()))?;
                Ok(u64::from_be_bytes(tail))
            })));
        }
        Box::new(ChannelMerge::new(sources).filter_map(move |seq| {
            let seq = match seq {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let key = seq_key(seq);
            match self.tree.get(key) {
                Ok(Some(v)) => {
                    self.docs_read.fetch_add(1, Ordering::Relaxed);
                    Some(decode_change(&key, &v))
                }
                // collected after its index key was read: it was superseded at or below the
                // oldest open view's sequence, so no view shows it
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        }))
    }
}

/// A change view: the sequence it is pinned at, released on drop.
pub(super) struct View<'a> {
    db: &'a SledDatabase,
    pub(super) seq: u64,
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        self.db.close_view(self.seq);
    }
}

impl View<'_> {
    /// Entries with sequence in (`since`, `seq`], ascending (or descending), as the view
    /// shows them.
    pub(super) fn since(
        &self,
        since: u64,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let view = self.seq;
        let rows = self.db.raw_changes(since, descending);
        if descending {
            Box::new(rows.filter(move |e| e.as_ref().map_or(true, |e| e.visible_at(view))))
        } else {
            // ascending: everything after the first entry above the view is above it too
            Box::new(
                rows.take_while(move |e| e.as_ref().map_or(true, |e| e.seq <= view))
                    .filter(move |e| e.as_ref().map_or(true, |e| e.visible_at(view))),
            )
        }
    }
}

/// Pages are read at once (sled answers without waiting); each page is a new range read, and
/// visibility is decided per entry, so pages agree (see the module documentation).
impl ChangesView for View<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn since_page(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<ChangeEntry>>> {
        ready(self.since(after, false).take(limit).collect())
    }

    fn since_page_desc(
        &self,
        since: u64,
        below: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChangeEntry>>> {
        let view = self.seq;
        let (from, to) = (seq_key(since.saturating_add(1)), seq_key(below));
        if from >= to {
            return ready(Ok(Vec::new()));
        }
        ready(
            self.db
                .tree
                .range(from.to_vec()..to.to_vec())
                .rev()
                .map(|r| {
                    let (k, v) = r?;
                    self.db.docs_read.fetch_add(1, Ordering::Relaxed);
                    decode_change(&k, &v)
                })
                .filter(move |e| e.as_ref().map_or(true, |e| e.visible_at(view)))
                .take(limit)
                .collect(),
        )
    }

    fn channels_page<'a>(
        &'a self,
        channels: &'a [String],
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ChangeEntry>>> {
        ready(self.in_channels(channels, after).take(limit).collect())
    }
}

impl View<'_> {
    /// Entries with sequence in (`since`, `seq`] in one of `channels`, ascending, as the view
    /// shows them.
    pub(super) fn in_channels(
        &self,
        channels: &[String],
        since: u64,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let view = self.seq;
        Box::new(
            self.db
                .raw_channel_changes(channels, since)
                .take_while(move |e| e.as_ref().map_or(true, |e| e.seq <= view))
                .filter(move |e| e.as_ref().map_or(true, |e| e.visible_at(view))),
        )
    }
}

/// Merges ascending sequence streams into one ascending stream without duplicates.
struct ChannelMerge<'a> {
    sources: Vec<std::iter::Peekable<Box<dyn Iterator<Item = Result<u64>> + 'a>>>,
    last: Option<u64>,
}

impl<'a> ChannelMerge<'a> {
    fn new(sources: Vec<Box<dyn Iterator<Item = Result<u64>> + 'a>>) -> Self {
        ChannelMerge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
            last: None,
        }
    }
}

impl Iterator for ChannelMerge<'_> {
    type Item = Result<u64>;

    fn next(&mut self) -> Option<Result<u64>> {
        loop {
            let mut best: Option<(usize, u64)> = None;
            for (i, src) in self.sources.iter_mut().enumerate() {
                match src.peek() {
                    Some(Err(_)) => return src.next(),
                    Some(Ok(seq)) if best.is_none_or(|(_, b)| *seq < b) => best = Some((i, *seq)),
                    _ => {}
                }
            }
            let (i, seq) = best?;
            self.sources[i].next();
            if self.last == Some(seq) {
                continue;
            }
            self.last = Some(seq);
            return Some(Ok(seq));
        }
    }
}
