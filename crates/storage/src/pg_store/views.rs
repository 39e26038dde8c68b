//! Change views on PostgreSQL: pinned at a committed sequence V, read in pages by sequence,
//! showing a row at S only if S <= V < superseded (see the module documentation).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::db::{PgDatabase, PAGE};
use super::write::{p, Param};
use super::{decode, decode_body, pg_err, pool_err};
use crate::model::{ChangeEntry, DocMeta, StoredBody};
use crate::{ChangesView, Result};
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
    fn page(
        &self,
        sql: &'static str,
        since: u64,
        extra: Option<super::write::Param>,
    ) -> Result<Vec<ChangeEntry>> {
        let mut params = vec![p(since as i64), p(self.seq as i64), p(PAGE)];
        params.extend(extra);
        let rows = self.db.rows(sql, params)?;
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

impl ChangesView for PgView<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn since(
        &self,
        since: u64,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let mut more = true;
        if descending {
            let mut below = self.seq.saturating_add(1);
            Box::new(Pages::new(move || {
                if !more {
                    return Ok(None);
                }
                let rows = self.page(SINCE_DESC, since, Some(p(below as i64)))?;
                more = rows.len() as i64 == PAGE;
                if let Some(last) = rows.last() {
                    below = last.seq;
                }
                Ok(Some(rows))
            }))
        } else {
            let mut after = since;
            Box::new(Pages::new(move || {
                if !more {
                    return Ok(None);
                }
                let rows = self.page(SINCE_ASC, after, None)?;
                more = rows.len() as i64 == PAGE;
                if let Some(last) = rows.last() {
                    after = last.seq;
                }
                Ok(Some(rows))
            }))
        }
    }

    fn in_channels(
        &self,
        channels: &[String],
        since: u64,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let channels: Vec<Vec<u8>> = channels
            .iter()
            .filter(|c| !c.contains('\0'))
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let mut more = !channels.is_empty();
        let mut after = since;
        Box::new(Pages::new(move || {
            if !more {
                return Ok(None);
            }
            let rows = self.page(IN_CHANNELS, after, Some(p(channels.clone())))?;
            more = rows.len() as i64 == PAGE;
            if let Some(last) = rows.last() {
                after = last.seq;
            }
            Ok(Some(rows))
        }))
    }
}

/// An iterator over pages fetched on demand: `fetch` returns the next page, or `None` when
/// there is none.
pub(super) struct Pages<T, F> {
    fetch: F,
    page: std::vec::IntoIter<T>,
    done: bool,
}

impl<T, F: FnMut() -> Result<Option<Vec<T>>>> Pages<T, F> {
    pub(super) fn new(fetch: F) -> Self {
        Pages {
            fetch,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl<T, F: FnMut() -> Result<Option<Vec<T>>>> Iterator for Pages<T, F> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(x) = self.page.next() {
                return Some(Ok(x));
            }
            if self.done {
                return None;
            }
            match (self.fetch)() {
                Ok(Some(page)) if !page.is_empty() => self.page = page.into_iter(),
                Ok(_) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
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
const BODIES: &str =
    "SELECT k.id, k.rev, b.body FROM unnest($2::bytea[], $3::bytea[]) AS k(id, rev) \
     CROSS JOIN LATERAL (SELECT body FROM syncgate_bodies \
         WHERE db = $1 AND id = k.id AND rev = k.rev LIMIT 1) b";

/// Batched document reads: one statement for any number of documents or revisions (what
/// `_bulk_get`, `_revs_diff` and `include_docs` read through [`crate::DatabaseStore::doc_metas`]
/// and [`crate::DatabaseStore::rev_bodies`]).
impl PgDatabase {
    pub(super) fn metas_of(&self, ids: &[&str]) -> Result<Vec<Option<DocMeta>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = unique(ids.iter().map(|i| i.as_bytes().to_vec()));
        let rows = self.planned_rows(METAS, vec![(p(keys), Type::BYTEA_ARRAY)])?;
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

    pub(super) fn bodies_of(&self, revs: &[(&str, &str)]) -> Result<Vec<Option<StoredBody>>> {
        if revs.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = unique(
            revs.iter()
                .map(|(i, r)| (i.as_bytes().to_vec(), r.as_bytes().to_vec())),
        );
        let (ids, rs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = pairs.into_iter().unzip();
        let rows = self.planned_rows(
            BODIES,
            vec![(p(ids), Type::BYTEA_ARRAY), (p(rs), Type::BYTEA_ARRAY)],
        )?;
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
    fn planned_rows(&self, sql: &'static str, params: Vec<(Param, Type)>) -> Result<Vec<Row>> {
        let pool = self.pool.clone();
        let db = self.name.clone();
        self.bridge.run(async move {
            let c = pool.get().await.map_err(pool_err)?;
            let mut typed: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&db, Type::TEXT)];
            typed.extend(
                params
                    .iter()
                    .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone())),
            );
            c.query_typed(sql, &typed).await.map_err(pg_err)
        })
    }
}

/// The distinct values, first occurrence first.
fn unique<T: Clone + Eq + std::hash::Hash>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.filter(|x| seen.insert(x.clone())).collect()
}
