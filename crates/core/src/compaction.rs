//! Automatic compaction: a policy that runs [`Database::compact`] by itself, so an operator
//! never has to call `_compact` to keep the data directory bounded.
//!
//! One task per server (not per database: the trigger is the store's size on disk, which all
//! databases share, and compactions should not compete for the disk). Every `check_secs` it
//! looks at each database's sequence and at [`StoreServer::size_on_disk`]:
//!
//! - a database is *dirty* when its sequence moved since its last compaction (only writes
//!   that take a sequence leave old bodies and superseded change entries behind);
//! - **updates**: a database whose updates since its last compaction reach `updates_percent`
//!   % of its document count (and at least [`UPDATES_MIN`]) is compacted. Updates are the
//!   revisions written (the `docs_written` metric) less the documents added (the growth of the
//!   document count): a new document leaves nothing to reclaim, so a bulk load never triggers
//!   it. This is the trigger that bounds the disk under steady updates: what compaction frees
//!   is at most one old body per update, so the garbage stays below that share of the live
//!   data. A trigger on the store's size alone cannot: the embedded store reuses freed
//!   space rather than shrinking its file, so "grown since the last compaction" only fires
//!   once the garbage has outgrown the free space — later and later as the file grows;
//! - **growth**: when the store grew by at least `growth_mb` MiB *and* `growth_percent` % of
//!   its size after the last compaction, every dirty database is compacted (a safety net for
//!   what revision counts miss, such as attachments);
//! - **idle**: a dirty database whose sequence has not moved for `idle_secs` is compacted.
//!
//! Compactions run one at a time (this task awaits each), and [`Database::compact`] holds the
//! database's compaction lock, so an admin `_compact` never runs beside an automatic one.
//! Engine-neutral: a backend whose size is not on this node's disk reports 0 and only the
//! idle trigger applies. Each compaction is logged at info with what it reclaimed.
//!
//! [`StoreServer::size_on_disk`]: syncgate_storage::StoreServer::size_on_disk

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::database::Server;

/// The `auto_compact` block of the config file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AutoCompactConfig {
    /// `false` turns automatic compaction off (`POST /{db}/_compact` still works).
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Growth trigger: at least this many MiB since the last compaction ...
    #[serde(default = "default_growth_mb")]
    pub growth_mb: u64,
    /// ... and at least this share (%) of the size the last compaction left.
    #[serde(default = "default_growth_percent")]
    pub growth_percent: u64,
    /// Updates trigger: updates since the last compaction, as % of the document count
    /// (0 = off).
    #[serde(default = "default_updates_percent")]
    pub updates_percent: u64,
    /// Idle trigger: a database written to and then left alone this long (0 = off).
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u64,
    /// How often the triggers are checked.
    #[serde(default = "default_check_secs")]
    pub check_secs: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_growth_mb() -> u64 {
    64
}
fn default_growth_percent() -> u64 {
    50
}
fn default_updates_percent() -> u64 {
    100
}
fn default_idle_secs() -> u64 {
    600
}
fn default_check_secs() -> u64 {
    30
}

impl Default for AutoCompactConfig {
    fn default() -> Self {
        AutoCompactConfig {
            enabled: default_enabled(),
            growth_mb: default_growth_mb(),
            growth_percent: default_growth_percent(),
            updates_percent: default_updates_percent(),
            idle_secs: default_idle_secs(),
            check_secs: default_check_secs(),
        }
    }
}

impl AutoCompactConfig {
    pub fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.check_secs == 0 || self.check_secs > 86_400 {
            return Err(ConfigError(format!(
                "{at}.check_secs: must be between 1 and 86400"
            )));
        }
        if self.growth_mb > 1 << 30
            || self.growth_percent > 100_000
            || self.updates_percent > 100_000
        {
            return Err(ConfigError(format!(
                "{at}: growth_mb ≤ 1073741824, growth_percent and updates_percent ≤ 100000"
            )));
        }
        Ok(())
    }

    /// The growth (bytes) past `baseline` that triggers compaction.
    fn growth_threshold(&self, baseline: u64) -> u64 {
        (self.growth_mb << 20).max(baseline / 100 * self.growth_percent)
    }
}

/// The updates trigger never fires below this many updates (a small database would
/// otherwise be compacted every few writes).
pub const UPDATES_MIN: u64 = 1000;

/// Why a database is compacted (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Updates,
    Growth,
    Idle,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Updates => "updates",
            Trigger::Growth => "growth",
            Trigger::Idle => "idle",
        }
    }
}

/// What the policy remembers of one database.
struct DbState {
    /// The sequence its last compaction started at (0: none since the server started, so a
    /// database with any write is dirty once after a start).
    compacted_seq: u64,
    /// Revisions written (the `docs_written` metric) and documents when its last compaction
    /// started (or when the policy first saw it).
    compacted_written: u64,
    compacted_docs: u64,
    /// The sequence seen at the last check and since when it has not moved.
    seen_seq: u64,
    seen_since: Instant,
}

/// What a check sees of one database.
struct Seen {
    name: String,
    seq: u64,
    /// Revisions written since the server started.
    written: u64,
    doc_count: u64,
}

/// The policy's state between checks (a plain struct so the decision is testable without
/// a clock or a store).
struct Policy {
    config: AutoCompactConfig,
    /// The store's size after the last compaction (or at start).
    baseline: u64,
    dbs: HashMap<String, DbState>,
}

impl Policy {
    fn new(config: AutoCompactConfig, size: u64) -> Policy {
        Policy {
            config,
            baseline: size,
            dbs: HashMap::new(),
        }
    }

    /// Which databases to compact now, given what each one looks like and the store's size;
    /// forgets databases that are gone.
    fn due(&mut self, now: Instant, seen: &[Seen], size: u64) -> Vec<(String, Trigger)> {
        self.dbs
            .retain(|name, _| seen.iter().any(|s| &s.name == name));
        let grown = size
            >= self
                .baseline
                .saturating_add(self.config.growth_threshold(self.baseline));
        let idle = Duration::from_secs(self.config.idle_secs);
        let mut due = Vec::new();
        for Seen {
            name,
            seq,
            written,
            doc_count,
        } in seen
        {
            let st = self.dbs.entry(name.clone()).or_insert(DbState {
                compacted_seq: 0,
                // not seen at start: created since, empty
                compacted_written: 0,
                compacted_docs: 0,
                seen_seq: *seq,
                seen_since: now,
            });
            if st.seen_seq != *seq {
                st.seen_seq = *seq;
                st.seen_since = now;
            }
            if *seq == st.compacted_seq {
                continue; // nothing written since the last compaction
            }
            let added = doc_count.saturating_sub(st.compacted_docs);
            let updates = written
                .saturating_sub(st.compacted_written)
                .saturating_sub(added);
            let updates_due = self.config.updates_percent > 0
                && updates
                    >= UPDATES_MIN.max(doc_count.saturating_mul(self.config.updates_percent) / 100);
            if updates_due {
                due.push((name.clone(), Trigger::Updates));
            } else if grown {
                due.push((name.clone(), Trigger::Growth));
            } else if self.config.idle_secs > 0 && now.duration_since(st.seen_since) >= idle {
                due.push((name.clone(), Trigger::Idle));
            }
        }
        if grown && due.is_empty() {
            // grown by what no compaction can reclaim (sessions, `_local` documents, sled's
            // own log): measure the next growth from here
            self.baseline = size;
        }
        due
    }

    /// Notes a database open at start: its documents so far are not updates.
    fn seed(&mut self, name: &str, seq: u64, doc_count: u64, now: Instant) {
        self.dbs.insert(
            name.to_string(),
            DbState {
                compacted_seq: 0,
                compacted_written: 0,
                compacted_docs: doc_count,
                seen_seq: seq,
                seen_since: now,
            },
        );
    }

    /// Records a compaction of `name` that started at sequence `seq`, with `written`
    /// revisions written and `docs` documents by then.
    fn compacted(&mut self, name: &str, seq: u64, written: u64, docs: u64) {
        if let Some(st) = self.dbs.get_mut(name) {
            st.compacted_seq = seq;
            st.compacted_written = written;
            st.compacted_docs = docs;
        }
    }
}

/// Starts the policy for `server` (no task without a runtime, or when disabled). It ends when
/// the server shuts down or is dropped.
pub(crate) async fn spawn(server: &Arc<Server>) {
    let config = server.config.auto_compact.clone().unwrap_or_default();
    if !config.enabled {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Server> = Arc::downgrade(server);
    let mut shutdown = server.shutdown_signal();
    let mut policy = Policy::new(config.clone(), server.store_size());
    // before the listeners start: nothing written yet (`docs_written` is 0)
    for db in server.databases() {
        let docs = db.store.doc_count().await.unwrap_or(u64::MAX);
        policy.seed(&db.name, db.store.last_seq(), docs, Instant::now());
    }
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(config.check_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            let Some(server) = weak.upgrade() else { break };
            let mut seen: Vec<Seen> = Vec::new();
            for db in server.databases() {
                seen.push(Seen {
                    name: db.name.clone(),
                    seq: db.store.last_seq(),
                    written: db.metrics.docs_written.load(Ordering::Relaxed),
                    // unreadable: the updates trigger waits (the others still apply)
                    doc_count: db.store.doc_count().await.unwrap_or_else(|e| {
                        tracing::warn!(db = %db.name, "automatic compaction: no document count: {e}");
                        u64::MAX
                    }),
                });
            }
            let due = policy.due(Instant::now(), &seen, server.store_size());
            let mut compacted = false;
            for (name, trigger) in due {
                if *shutdown.borrow() {
                    break;
                }
                // deleted since the list was taken: skip it
                let Some(db) = server.db(&name) else { continue };
                let seq = db.store.last_seq();
                let written = db.metrics.docs_written.load(Ordering::Relaxed);
                let docs = db.store.doc_count().await.unwrap_or(u64::MAX);
                let before = server.store_size();
                let started = Instant::now();
                match db.compact_quietly().await {
                    Ok(stats) => {
                        policy.compacted(&name, seq, written, docs);
                        compacted = true;
                        let after = server.store_size();
                        tracing::info!(
                            db = %name,
                            trigger = trigger.label(),
                            bodies = stats.bodies_removed,
                            attachments = stats.attachments_removed,
                            store_bytes_before = before,
                            store_bytes_after = after,
                            ms = started.elapsed().as_millis() as u64,
                            "auto-compacted"
                        );
                    }
                    Err(e) => tracing::warn!(db = %name, "automatic compaction failed: {e}"),
                }
            }
            if compacted {
                policy.baseline = server.store_size();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(growth_mb: u64, growth_percent: u64, idle_secs: u64) -> AutoCompactConfig {
        AutoCompactConfig {
            enabled: true,
            growth_mb,
            growth_percent,
            updates_percent: 0,
            idle_secs,
            check_secs: 1,
        }
    }

    /// Databases by (name, seq), nothing counted as written.
    fn seqs(v: &[(&str, u64)]) -> Vec<Seen> {
        v.iter()
            .map(|(n, s)| Seen {
                name: n.to_string(),
                seq: *s,
                written: 0,
                doc_count: 0,
            })
            .collect()
    }

    const MB: u64 = 1 << 20;

    #[test]
    fn growth_compacts_every_dirty_database_and_only_those() {
        let mut p = Policy::new(cfg(10, 50, 0), 100 * MB);
        let t = Instant::now();
        // grown by 40 MiB: under 50 % of 100 MiB
        assert!(p.due(t, &seqs(&[("a", 5), ("b", 0)]), 140 * MB).is_empty());
        let due = p.due(t, &seqs(&[("a", 5), ("b", 0)]), 150 * MB);
        assert_eq!(due, vec![("a".to_string(), Trigger::Growth)]);
        p.compacted("a", 5, 0, 0);
        p.baseline = 120 * MB;
        // measured from the new baseline: 150 is not 50 % above 120
        assert!(p.due(t, &seqs(&[("a", 6)]), 150 * MB).is_empty());
        assert_eq!(p.baseline, 120 * MB);
        // grown, but nothing written since the compaction: nothing to do, and the next
        // growth is measured from here
        p.compacted("a", 6, 0, 0);
        assert!(p.due(t, &seqs(&[("a", 6)]), 185 * MB).is_empty());
        assert_eq!(p.baseline, 185 * MB);
    }

    #[test]
    fn growth_needs_both_the_absolute_and_the_relative_amount() {
        let mut p = Policy::new(cfg(64, 50, 0), 10 * MB);
        let t = Instant::now();
        assert!(p.due(t, &seqs(&[("a", 1)]), 70 * MB).is_empty());
        assert_eq!(p.due(t, &seqs(&[("a", 1)]), 74 * MB).len(), 1);
    }

    #[test]
    fn idle_compacts_a_database_left_alone_after_writes() {
        let mut p = Policy::new(cfg(1 << 20, 0, 60), 0);
        let t = Instant::now();
        assert!(p.due(t, &seqs(&[("a", 3)]), 0).is_empty());
        assert!(p
            .due(t + Duration::from_secs(30), &seqs(&[("a", 3)]), 0)
            .is_empty());
        // a write restarts the idle clock
        assert!(p
            .due(t + Duration::from_secs(61), &seqs(&[("a", 4)]), 0)
            .is_empty());
        let due = p.due(t + Duration::from_secs(122), &seqs(&[("a", 4)]), 0);
        assert_eq!(due, vec![("a".to_string(), Trigger::Idle)]);
        p.compacted("a", 4, 0, 0);
        assert!(p
            .due(t + Duration::from_secs(500), &seqs(&[("a", 4)]), 0)
            .is_empty());
        // idle off
        let mut p = Policy::new(cfg(1 << 20, 0, 0), 0);
        p.due(t, &seqs(&[("a", 3)]), 0);
        assert!(p
            .due(t + Duration::from_secs(10_000), &seqs(&[("a", 3)]), 0)
            .is_empty());
    }

    #[test]
    fn updates_compact_once_they_reach_the_share_of_documents() {
        let mut c = cfg(1 << 20, 0, 0);
        c.updates_percent = 100;
        let mut p = Policy::new(c, 0);
        let t = Instant::now();
        let db = |seq, written, doc_count| {
            vec![Seen {
                name: "a".into(),
                seq,
                written,
                doc_count,
            }]
        };
        // open at start with 5,000 documents
        p.seed("a", 5000, 5000, t);
        assert!(p.due(t, &db(5000, 0, 5000), 0).is_empty());
        // a bulk load of 20,000 new documents is no update
        assert!(p.due(t, &db(25000, 20000, 25000), 0).is_empty());
        // 24,999 updates are not enough, 25,000 are
        assert!(p.due(t, &db(49999, 44999, 25000), 0).is_empty());
        assert_eq!(
            p.due(t, &db(50000, 45000, 25000), 0),
            vec![("a".to_string(), Trigger::Updates)]
        );
        p.compacted("a", 50000, 45000, 25000);
        // counted from the compaction
        assert!(p.due(t, &db(74999, 69999, 25000), 0).is_empty());
        assert_eq!(p.due(t, &db(75000, 70000, 25000), 0).len(), 1);
        // created later (first seen with 10 documents and 1,009 revisions: 999 updates); a
        // small database waits for UPDATES_MIN updates
        let mut c = cfg(1 << 20, 0, 0);
        c.updates_percent = 100;
        let mut p = Policy::new(c, 0);
        assert!(p.due(t, &db(1009, 1009, 10), 0).is_empty());
        assert_eq!(p.due(t, &db(1010, 1010, 10), 0).len(), 1);
    }

    #[test]
    fn forgets_deleted_databases() {
        let mut p = Policy::new(cfg(1, 0, 0), 0);
        p.due(Instant::now(), &seqs(&[("a", 1), ("b", 1)]), 0);
        p.due(Instant::now(), &seqs(&[("b", 1)]), 0);
        assert!(!p.dbs.contains_key("a"));
    }
}
