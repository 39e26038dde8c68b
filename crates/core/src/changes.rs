//! The changes feed: rows since a sequence, filtered for the caller, and the wake-up used by
//! longpoll/continuous feeds.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use syncgate_auth::identity::{ALL_CHANNELS, PUBLIC_CHANNEL};
use syncgate_auth::Caller;
use syncgate_storage::ChangeEntry;

use crate::database::Database;
use crate::docs::GetOptions;
use crate::error::{Error, Result};

/// A position in the feed. `backfill` is the grant sequence of a compound `"G:S"` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Since {
    pub seq: u64,
    pub backfill: Option<u64>,
}

impl Since {
    /// Parses an integer, a numeric string, a compound `"G:S"` or `now` (given the current seq).
    pub fn parse(v: &Value, now: u64) -> Result<Since> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .map(|seq| Since {
                    seq,
                    backfill: None,
                })
                .ok_or_else(|| Error::bad(format!("Invalid sequence: {n}"))),
            Value::String(s) => Self::parse_str(s, now),
            Value::Null => Ok(Since::default()),
            other => Err(Error::bad(format!("Invalid sequence: {other}"))),
        }
    }

    pub fn parse_str(s: &str, now: u64) -> Result<Since> {
        let bad = || Error::bad(format!("Invalid sequence: \"{}\"", crate::short(s)));
        let t = s.trim().trim_matches('"');
        if t == "now" {
            return Ok(Since {
                seq: now,
                backfill: None,
            });
        }
        if t.is_empty() {
            return Ok(Since::default());
        }
        let num = |x: &str| -> Result<u64> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        match t.split(':').collect::<Vec<_>>().as_slice() {
            [n] => Ok(Since {
                seq: num(n)?,
                backfill: None,
            }),
            [g, n] => Ok(Since {
                seq: num(n)?,
                backfill: Some(num(g)?),
            }),
            // SG's low-water form L:G:S; L may be empty
            [_, g, n] => Ok(Since {
                seq: num(n)?,
                backfill: if g.is_empty() { None } else { Some(num(g)?) },
            }),
            _ => Err(bad()),
        }
    }
}

/// Options of one `_changes` request.
#[derive(Debug, Clone, Default)]
pub struct ChangesOptions {
    pub since: Since,
    pub limit: Option<usize>,
    pub descending: bool,
    pub include_docs: bool,
    /// With `include_docs`: attachment bodies inline (base64).
    pub attachments: bool,
    pub conflicts: bool,
    /// `style=all_docs`: every leaf in `changes`.
    pub all_docs: bool,
    pub active_only: bool,
    /// `filter=_doc_ids`.
    pub doc_ids: Option<HashSet<String>>,
    /// `filter=sync_gateway/bychannel`.
    pub channels: Option<HashSet<String>>,
}

/// One batch of the feed.
pub struct ChangesBatch {
    pub rows: Vec<Value>,
    /// Where the next batch starts.
    pub last_seq: u64,
}

/// Which channels a feed shows: everything, or documents in (or removed from) a set.
enum Scope {
    All,
    Channels(HashSet<String>),
}

impl Scope {
    fn of(caller: &Caller, filter: Option<&HashSet<String>>) -> Scope {
        let filter = filter.filter(|f| !f.contains(ALL_CHANNELS));
        let user = caller
            .user()
            .filter(|u| !u.channels.contains_key(ALL_CHANNELS))
            .map(|u| {
                let mut s: HashSet<String> = u.channels.keys().cloned().collect();
                s.insert(PUBLIC_CHANNEL.to_string());
                s
            });
        match (user, filter) {
            (None, None) => Scope::All,
            (Some(u), None) => Scope::Channels(u),
            (None, Some(f)) => Scope::Channels(f.clone()),
            (Some(u), Some(f)) => Scope::Channels(u.intersection(f).cloned().collect()),
        }
    }
}

impl Database {
    /// Rows after `opts.since`, up to the current sequence, filtered for the caller. A caller
    /// limited to some channels reads through the channel index, so unrelated documents are
    /// never read; a document that left those channels comes once with `"removed"`.
    pub fn changes(&self, caller: &Caller, opts: &ChangesOptions) -> Result<ChangesBatch> {
        let end = self.store.last_seq();
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let mut last_seq = if opts.descending {
            0
        } else {
            end.max(opts.since.seq)
        };
        let since = if opts.descending { 0 } else { opts.since.seq };
        let scope = Scope::of(caller, opts.channels.as_ref());
        let entries = match &scope {
            Scope::Channels(chs) if !opts.descending => {
                let mut list: Vec<String> = chs.iter().cloned().collect();
                list.sort();
                self.store.changes_in_channels(&list, since)
            }
            _ => self.store.changes_since(since, opts.descending),
        };
        for entry in entries {
            let entry = entry?;
            if entry.seq > end {
                if opts.descending {
                    continue;
                }
                break;
            }
            if rows.len() >= limit {
                break;
            }
            if let Some(row) = self.change_row(caller, &scope, opts, &entry)? {
                rows.push(row);
                if rows.len() >= limit {
                    last_seq = entry.seq;
                }
            }
        }
        if opts.descending {
            last_seq = rows.last().and_then(|r| r["seq"].as_u64()).unwrap_or(end);
        }
        Ok(ChangesBatch { rows, last_seq })
    }

    fn change_row(
        &self,
        caller: &Caller,
        scope: &Scope,
        opts: &ChangesOptions,
        e: &ChangeEntry,
    ) -> Result<Option<Value>> {
        if let Some(ids) = &opts.doc_ids {
            if !ids.contains(&e.id) {
                return Ok(None);
            }
        }
        let (visible, removed): (bool, Vec<&String>) = match scope {
            Scope::All => (true, Vec::new()),
            Scope::Channels(chs) => (
                e.channels.iter().any(|c| chs.contains(c)),
                e.removed.iter().filter(|c| chs.contains(*c)).collect(),
            ),
        };
        if !visible && removed.is_empty() {
            return Ok(None);
        }
        let deleted = e.deleted();
        if opts.active_only && (deleted || !visible) {
            return Ok(None);
        }
        let winner = e.leaves.first().map(|l| l.rev.clone()).unwrap_or_default();
        if !visible {
            let mut row =
                json!({"seq": e.seq, "id": e.id, "removed": removed, "changes": [{"rev": winner}]});
            if opts.include_docs {
                row["doc"] = json!({"_id": e.id, "_rev": winner, "_removed": true});
            }
            return Ok(Some(row));
        }
        let changes: Vec<Value> = if opts.all_docs {
            e.leaves.iter().map(|l| json!({"rev": l.rev})).collect()
        } else {
            vec![json!({"rev": winner})]
        };
        let mut row = json!({"seq": e.seq, "id": e.id, "changes": changes});
        if deleted {
            row["deleted"] = Value::Bool(true);
        }
        if opts.include_docs {
            if let Some(meta) = self.store.doc_meta(&e.id)? {
                let get = GetOptions {
                    conflicts: opts.conflicts,
                    attachments: opts.attachments,
                    ..Default::default()
                };
                row["doc"] = self
                    .render(caller, &e.id, &meta, &winner, &get)?
                    .unwrap_or(Value::Null);
            }
        }
        Ok(Some(row))
    }

    /// Waits until the sequence passes `seq`, `timeout` elapses or the server shuts down.
    /// Returns true when there may be new changes.
    pub async fn wait_for_change(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.store.subscribe();
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        let wait = async {
            loop {
                if *rx.borrow_and_update() > seq {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            r = wait => r,
            _ = tokio::time::sleep(timeout) => false,
            _ = shutdown.changed() => false,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        assert_eq!(Since::parse(&json!(5), 9).unwrap().seq, 5);
        assert_eq!(Since::parse(&json!("7"), 9).unwrap().seq, 7);
        assert_eq!(Since::parse(&json!("now"), 9).unwrap().seq, 9);
        assert_eq!(
            Since::parse(&json!("20:7"), 9).unwrap(),
            Since {
                seq: 7,
                backfill: Some(20)
            }
        );
        assert_eq!(Since::parse(&json!("\"3\""), 9).unwrap().seq, 3);
        for bad in [
            json!("x"),
            json!("-1"),
            json!(-1),
            json!("1:2:3:4"),
            json!([1]),
            json!("1.5"),
        ] {
            assert!(Since::parse(&bad, 9).is_err(), "{bad}");
        }
    }
}
