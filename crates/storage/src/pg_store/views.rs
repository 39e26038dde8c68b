//! Change views on PostgreSQL: pinned at a committed sequence V, read in pages by sequence,
//! showing a row at S only if S <= V < superseded (see the module documentation).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::bridge::timed;
use super::db::PgDatabase;
use super::write::{p, Param};
use super::{decode, decode_body, pg_err, pool_err};
use crate::model::{ChangeEntry, DocMeta, StoredBody};
use crate::{BoxFuture, ChangesView, Result};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

const SINCE_ASC: &str = "SELECT seq, entry FROM syncgate_changes \
     WHERE db = $1 AND seq > $2 AND seq <= $3 AND (superseded IS NULL OR superseded > $3) \
     ORDER BY seq LIMIT $4";
const SINCE_DESC: &str = "SELECT seq, entry FROM syncgate_changes \
     WHERE db = $1 AND seq > $2 AND seq < $5 AND seq <= $3 \
     AND (superseded IS NULL OR superseded > $3) ORDER BY seq DESC LIMIT $4";
/// Only the channel index rows of the asked channels, then their change rows.
const IN_CHANNELS: &str = "SELECT seq, entry FROM syncgate_changes \
     WHERE db = $1 AND seq IN (SELECT seq FROM syncgate_channels \
         WHERE db = $1 AND channel = ANY($5) AND seq > $2 AND seq <= $3) \
     AND (superseded IS NULL OR superseded > $3) ORDER BY seq LIMIT $4";

/// A change view of one handle; registered while it lives (compaction's horizon).
pub(super) struct PgView<'a> {
    db: &'a PgDatabase,
    seq: u64,
}

impl<'a> PgView<'a> {
    pub(super) fn open(db: &'a PgDatabase) -> PgView<'a> {
        let mut views = db.views.lock().unwrap_or_else(|e| e.into_inner());
        let seq = db.live.last_seq.load(Ordering::SeqCst);
        *views.entry(seq).or_default() += 1;
        PgView { db, seq }
    }

    /// One page of entries: `sql` with ($since, $view, $limit, $extra).
    async fn page(
        &self,
        sql: &'static str,
        since: u64,
        limit: usize,
        extra: Option<Param>,
    ) -> Result<Vec<ChangeEntry>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let mut params = vec![p(since as i64), p(self.seq as i64), p(limit)];
        params.extend(extra);
        let rows = self.db.rows(sql, params).await?;
        self.db
            .docs_read
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        rows.iter().map(|r| decode("change", r.get(1))).collect()
    }
}

impl Drop for PgView<'_> {
    fn drop(&mut self) {
        let mut views = self.db.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = views.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                views.remove(&self.seq);
            }
        }
    }
}

/// Each page is one statement (its own snapshot); the visibility rule makes them agree.
impl ChangesView for PgView<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn since_page(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<ChangeEntry>>> {
        Box::pin(self.page(SINCE_ASC, after, limit, None))
    }

    fn since_page_desc(
        &self,
        since: u64,
        below: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChangeEntry>>> {
        let below = below.min(i64::MAX as u64) as i64;
        Box::pin(self.page(SINCE_DESC, since, limit, Some(p(below))))
    }

    fn channels_page<'a>(
        &'a self,
        channels: &'a [String],
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ChangeEntry>>> {
        let channels: Vec<Vec<u8>> = channels
            .iter()
            .filter(|c| !c.contains('\0'))
            .map(|c| c.as_bytes().to_vec())
            .collect();
        if channels.is_empty() {
            return crate::ready(Ok(Vec::new()));
        }
        Box::pin(self.page(IN_CHANNELS, after, limit, Some(p(channels))))
    }
}

/// The metadata of the documents `$2` (ids; `$1`: the database): one primary-key lookup per
/// id, as a single-document read makes. Written so that no estimate can turn it into a scan:
/// `id = ANY($2)` is planned, on a table not analyzed yet (a fresh database filling up),
/// as a scan of the database's whole key range filtering the ids (the planner guesses that
/// `db = $1` selects 0.5 % of the rows, when every row has it); a subquery with `LIMIT` is
/// never merged into a join, so each id gets its own index lookup.
pub(super) const METAS: &str = "SELECT k.id, d.meta FROM unnest($2::bytea[]) AS k(id) \
     CROSS JOIN LATERAL (SELECT meta FROM syncgate_docs \
         WHERE db = $1 AND id = k.id LIMIT 1) d";
/// The bodies of the (id, revision) pairs `$2`, `$3`: one primary-key lookup each (see
/// [`METAS`]).
pub(super) const BODIES: &str =
    "SELECT k.id, k.rev, b.body FROM unnest($2::bytea[], $3::bytea[]) AS k(id, rev) \
     CROSS JOIN LATERAL (SELECT body FROM syncgate_bodies \
         WHERE db = $1 AND id = k.id AND rev = k.rev LIMIT 1) b";

/// Batched document reads: one statement for any number of documents or revisions (what
/// `_bulk_get`, `_revs_diff` and `include_docs` read through [`crate::DatabaseStore::doc_metas`]
/// and [`crate::DatabaseStore::rev_bodies`]).
impl PgDatabase {
    pub(super) async fn metas_of(&self, ids: &[&str]) -> Result<Vec<Option<DocMeta>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = unique(ids.iter().map(|i| i.as_bytes().to_vec()));
        let rows = self
            .planned_rows(METAS, vec![(p(keys), Type::BYTEA_ARRAY)])
            .await?;
        let mut found: HashMap<Vec<u8>, DocMeta> = HashMap::with_capacity(rows.len());
        for r in &rows {
            found.insert(r.get::<_, Vec<u8>>(0), decode("document", r.get(1))?);
        }
        self.docs_read
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        Ok(ids
            .iter()
            .map(|i| found.get(i.as_bytes()).cloned())
            .collect())
    }

    pub(super) async fn bodies_of(&self, revs: &[(&str, &str)]) -> Result<Vec<Option<StoredBody>>> {
        if revs.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = unique(
            revs.iter()
                .map(|(i, r)| (i.as_bytes().to_vec(), r.as_bytes().to_vec())),
        );
        let (ids, rs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = pairs.into_iter().unzip();
        let rows = self
            .planned_rows(
                BODIES,
                vec![(p(ids), Type::BYTEA_ARRAY), (p(rs), Type::BYTEA_ARRAY)],
            )
            .await?;
        let mut found: HashMap<(Vec<u8>, Vec<u8>), Vec<u8>> = HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert((r.get(0), r.get(1)), r.get(2));
        }
        self.docs_read
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        revs.iter()
            .map(
                |(id, rev)| match found.get(&(id.as_bytes().to_vec(), rev.as_bytes().to_vec())) {
                    Some(bytes) => Ok(Some(decode_body(id, rev, bytes)?)),
                    None => Ok(None),
                },
            )
            .collect()
    }
}

impl PgDatabase {
    /// Runs one statement unprepared (the database name is `$1`; the other parameters with
    /// their types), so it is planned for these parameters and the tables' current size:
    /// a cached generic plan of a list lookup may be a sequential scan chosen while the
    /// tables were small (see `write::Stmt`). One round trip all the same.
    async fn planned_rows(
        &self,
        sql: &'static str,
        params: Vec<(Param, Type)>,
    ) -> Result<Vec<Row>> {
        let db = &self.name;
        timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let mut typed: Vec<(&(dyn ToSql + Sync), Type)> = vec![(db, Type::TEXT)];
            typed.extend(
                params
                    .iter()
                    .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone())),
            );
            c.query_typed(sql, &typed).await.map_err(pg_err)
        })
        .await
    }
}

/// The distinct values, first occurrence first.
fn unique<T: Clone + Eq + std::hash::Hash>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.filter(|x| seen.insert(x.clone())).collect()
}
