//! One database on PostgreSQL: the [`DatabaseStore`] methods.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::bridge::timed;
use super::views::PgView;
use super::write::{p, pipeline, stmt, write_tx, Param, LOCK_COUNTER, NOTIFY, SET_COUNTERS};
use super::{decode, decode_body, encode, kind_code, pg_err, pool_err, utf8, Live, CHANNEL};
use crate::combine::{BatchResult, WriteCombiner, WriteResult};
use crate::model::*;
use crate::rules::{check_local_delete, drop_old_bodies, has_old_bodies, next_local_rev};
use crate::{
    BoxFuture, BuildRecord, ChangesView, DatabaseStore, PrincipalKind, Result, StorageError, Ticket,
};

/// Rows a paged read of compaction fetches per statement.
const PAGE: i64 = crate::PAGE as i64;

/// Sequences whose superseded by-sequence rows one compaction statement removes.
const SUPERSEDED_CHUNK: i64 = 10_000;

/// One database in PostgreSQL.
pub struct PgDatabase {
    pub(super) name: String,
    pub(super) pool: Pool,
    pub(super) live: Arc<Live>,
    combiner: WriteCombiner,
    pub(super) docs_read: Arc<AtomicU64>,
    /// Open change views of this handle by sequence (compaction keeps what they may show).
    pub(super) views: Mutex<BTreeMap<u64, usize>>,
}

impl PgDatabase {
    pub(super) fn new(name: &str, pool: Pool, live: Arc<Live>) -> PgDatabase {
        PgDatabase {
            name: name.to_string(),
            pool,
            live,
            combiner: WriteCombiner::default(),
            docs_read: Arc::new(AtomicU64::new(0)),
            views: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs one statement (the database name is `$1`) and returns its rows.
    pub(super) async fn rows(&self, sql: &'static str, params: Vec<Param>) -> Result<Vec<Row>> {
        let mut params = params;
        params.insert(0, p(self.name.clone()));
        timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let st = c.prepare_cached(sql).await.map_err(pg_err)?;
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            c.query(&st, &refs).await.map_err(pg_err)
        })
        .await
    }

    /// The first column of the first row, as bytes.
    async fn bytes(&self, sql: &'static str, params: Vec<Param>) -> Result<Option<Vec<u8>>> {
        Ok(self.rows(sql, params).await?.first().map(|r| r.get(0)))
    }

    async fn exec(&self, sql: &'static str, params: Vec<Param>) -> Result<()> {
        self.rows(sql, params).await.map(|_| ())
    }

    /// Runs `f` with a pooled connection, at most [`CALL_TIMEOUT`](super::bridge::CALL_TIMEOUT).
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Object, String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            f(c, self.name.clone()).await
        })
        .await
    }

    /// Applies write sets, in order, as one transaction: one result list per set. The
    /// transaction runs in a task of its own, so a caller that goes away (a client that
    /// disconnects, or the leader of combined writers) does not cut it short; after
    /// [`CALL_TIMEOUT`](super::bridge::CALL_TIMEOUT) the caller is told PostgreSQL is
    /// unavailable (the transaction may still finish: like any lost answer, the outcome is
    /// then unknown to the client).
    async fn apply_writes(&self, sets: Vec<Vec<DocWrite>>) -> BatchResult {
        let ids: Vec<String> = {
            let mut seen = HashSet::new();
            sets.iter()
                .flatten()
                .map(|w| w.id().to_string())
                .filter(|id| seen.insert(id.clone()))
                .collect()
        };
        let (pool, name, docs_read) =
            (self.pool.clone(), self.name.clone(), self.docs_read.clone());
        let live = self.live.clone();
        let task = tokio::spawn(async move {
            // run again from the start when the transaction is retried (or needs more reads)
            write_tx(&pool, &name, &live, ids, &docs_read, |st| {
                Ok(sets
                    .iter()
                    .map(|writes| writes.iter().map(|w| st.apply(w.clone())).collect())
                    .collect::<Vec<Vec<Result<WriteOutcome>>>>())
            })
            .await
        });
        let (results, summary) = timed(joined(task)).await?;
        self.published(
            summary.last_seq,
            summary.grants_changed,
            summary.grant_changes,
        );
        Ok((results, Ticket(summary.last_seq)))
    }

    /// A committed write moved the sequence to `seq` (and maybe the access index).
    fn published(&self, seq: u64, grants_changed: bool, changes: Vec<GrantChange>) {
        self.live.committed(seq, grants_changed.then_some(changes));
    }

    /// A principal write (`record`: `Some` to store, `None` to delete) under a new sequence;
    /// with `expected`, only if the stored record is still that (`None` when it is not:
    /// nothing written).
    async fn principal_tx(
        &self,
        kind: PrincipalKind,
        name: &str,
        expected: Option<Option<&[u8]>>,
        build: Option<BuildRecord<'_>>,
    ) -> Result<Option<u64>> {
        let seq = timed(self.principal_tx_untimed(kind, name, expected, build)).await?;
        if let Some(seq) = seq {
            self.published(seq, false, Vec::new());
        }
        Ok(seq)
    }

    async fn principal_tx_untimed(
        &self,
        kind: PrincipalKind,
        name: &str,
        expected: Option<Option<&[u8]>>,
        build: Option<BuildRecord<'_>>,
    ) -> Result<Option<u64>> {
        // step 1: open the transaction and take the counter row (the record needs its seq);
        // every principal write takes it, so the record read after it cannot change before
        // this transaction commits
        let db = &self.name;
        let key = (kind_code(kind), name.as_bytes().to_vec());
        let mut tx = OpenTx(Some(self.pool.get().await.map_err(pool_err)?));
        tx.client()?.batch_execute("BEGIN").await.map_err(pg_err)?;
        let last: i64 = tx
            .client()?
            .query_one(LOCK_COUNTER, &[db])
            .await
            .map_err(pg_err)?
            .get(0);
        if let Some(expected) = expected {
            let current: Option<Vec<u8>> = tx
                .client()?
                .query_opt(
                    "SELECT record FROM syncgate_principals WHERE db = $1 AND kind = $2 AND name = $3",
                    &[db, &key.0, &key.1],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
            if current.as_deref() != expected {
                // changed since the caller read it: end the transaction, write nothing
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let seq = last as u64 + 1;
        let record = match build {
            Some(build) => Some(build(seq).map_err(|e| {
                StorageError::Corrupt(format!(
                    "cannot encode principal \"{}\": {e}",
                    crate::revtree::truncate(name, 100)
                ))
            })?),
            None => None,
        };
        // step 2: write, move the counter, notify, commit
        let mut stmts = vec![match record {
            Some(r) => stmt(
                db,
                "INSERT INTO syncgate_principals (db, kind, name, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (db, kind, name) DO UPDATE SET record = EXCLUDED.record",
                vec![p(key.0), p(key.1), p(r)],
            ),
            None => stmt(
                db,
                "DELETE FROM syncgate_principals WHERE db = $1 AND kind = $2 AND name = $3",
                vec![p(key.0), p(key.1)],
            ),
        }];
        stmts.push(stmt(db, SET_COUNTERS, vec![p(seq as i64), p(0i64)]));
        if self.live.notifies {
            stmts.push(super::write::Stmt::new(
                NOTIFY,
                vec![p(CHANNEL.to_string()), p(format!("{seq} {db}"))],
            ));
        }
        self.live.committing(seq);
        if let Err(e) = tx.pipeline_and_commit(&stmts).await {
            self.live.abandoned(seq);
            return Err(e);
        }
        Ok(Some(seq))
    }
}

/// The result of a task running a transaction (a task that panicked returns none).
async fn joined<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await.unwrap_or_else(|_| {
        Err(StorageError::Engine(
            "a PostgreSQL storage task failed".into(),
        ))
    })
}

/// A pooled connection inside a transaction opened by hand (`BEGIN`). If it is dropped before
/// committing or rolling back (an error, a caller that went away), the connection is closed
/// rather than returned to the pool mid-transaction.
pub(super) struct OpenTx(pub(super) Option<Object>);

impl OpenTx {
    pub(super) fn client(&self) -> Result<&Object> {
        self.0
            .as_ref()
            .ok_or_else(|| StorageError::Engine("transaction already ended".into()))
    }

    /// Ends the transaction without writing and returns the connection to the pool.
    pub(super) async fn rollback(&mut self) -> Result<()> {
        self.client()?
            .batch_execute("ROLLBACK")
            .await
            .map_err(pg_err)?;
        self.0.take();
        Ok(())
    }

    /// The transaction ended (committed): the connection goes back to the pool.
    pub(super) fn release(&mut self) {
        self.0.take();
    }

    async fn pipeline_and_commit(&mut self, stmts: &[super::write::Stmt]) -> Result<()> {
        let c = self.client()?;
        pipeline(c, stmts).await?;
        c.batch_execute("COMMIT").await.map_err(pg_err)?;
        self.release();
        Ok(())
    }
}

impl Drop for OpenTx {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(Object::take(c));
        }
    }
}

impl DatabaseStore for PgDatabase {
    fn name(&self) -> &str {
        &self.name
    }

    fn doc_meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DocMeta>>> {
        Box::pin(async move {
            match self
                .bytes(
                    "SELECT meta FROM syncgate_docs WHERE db = $1 AND id = $2",
                    vec![p(id.as_bytes().to_vec())],
                )
                .await?
            {
                Some(v) => {
                    self.docs_read.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(decode("document", &v)?))
                }
                None => Ok(None),
            }
        })
    }

    fn rev_body<'a>(
        &'a self,
        id: &'a str,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredBody>>> {
        Box::pin(async move {
            match self
                .bytes(
                    "SELECT body FROM syncgate_bodies WHERE db = $1 AND id = $2 AND rev = $3",
                    vec![p(id.as_bytes().to_vec()), p(rev.as_bytes().to_vec())],
                )
                .await?
            {
                Some(v) => {
                    self.docs_read.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(decode_body(id, rev, &v)?))
                }
                None => Ok(None),
            }
        })
    }

    /// One statement (`id = ANY($2)`): see `views`.
    fn doc_metas<'a>(&'a self, ids: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<DocMeta>>>> {
        Box::pin(async move { self.metas_of(ids).await })
    }

    /// One statement (a join with the asked pairs): see `views`.
    fn rev_bodies<'a>(
        &'a self,
        revs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredBody>>>> {
        Box::pin(async move { self.bodies_of(revs).await })
    }

    fn write_docs(&self, writes: Vec<DocWrite>) -> BoxFuture<'_, WriteResult> {
        Box::pin(async move {
            let (mut results, ticket) = self.apply_writes(vec![writes]).await?;
            Ok((results.pop().unwrap_or_default(), ticket))
        })
    }

    fn write_docs_shared(&self, writes: Vec<DocWrite>) -> BoxFuture<'_, WriteResult> {
        Box::pin(self.combiner.write(writes, |sets| self.apply_writes(sets)))
    }

    fn doc_count(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let rows = self
                .rows(
                    "SELECT doc_count FROM syncgate_counters WHERE db = $1",
                    vec![],
                )
                .await?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
        })
    }

    fn docs_page<'a>(
        &'a self,
        start: &'a str,
        inclusive: bool,
        descending: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, DocMeta)>>> {
        Box::pin(async move {
            let sql = match (descending, inclusive, start.is_empty()) {
                (false, true, _) => {
                    "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id >= $2 ORDER BY id LIMIT $3"
                }
                (false, false, _) => {
                    "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id > $2 ORDER BY id LIMIT $3"
                }
                (true, true, true) => {
                    "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND $2::bytea IS NOT NULL \
                     ORDER BY id DESC LIMIT $3"
                }
                (true, true, false) => {
                    "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id <= $2 ORDER BY id DESC LIMIT $3"
                }
                (true, false, _) => {
                    "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
                }
            };
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = self
                .rows(sql, vec![p(start.as_bytes().to_vec()), p(limit)])
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let id: Vec<u8> = r.get(0);
                out.push((utf8("document id", id)?, decode("document", r.get(1))?));
            }
            Ok(out)
        })
    }

    fn last_seq(&self) -> u64 {
        self.live.last_seq.load(Ordering::SeqCst)
    }

    fn changes_view(&self) -> Box<dyn ChangesView + '_> {
        Box::new(PgView::open(self))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.live.notify.subscribe()
    }

    fn doc_grants<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DocGrant)>>> {
        Box::pin(async move {
            self.rows(
                "SELECT doc, grant_entry FROM syncgate_grants WHERE db = $1 AND kind = $2 AND name = $3 \
                 ORDER BY doc",
                vec![p(kind_code(kind)), p(name.as_bytes().to_vec())],
            ).await?
            .into_iter()
            .map(|r| {
                Ok((
                    utf8("granting document id", r.get(0))?,
                    decode("access index entry", r.get(1))?,
                ))
            })
            .collect()
        })
    }

    fn grants_version(&self) -> u64 {
        self.live.grants.version()
    }

    fn grant_changes_since(&self, since: u64) -> Option<(u64, Vec<GrantChange>)> {
        self.live.grants.since(since)
    }

    fn restamp_docs(
        &self,
        docs: Vec<Restamp>,
    ) -> BoxFuture<'_, Result<(Vec<Option<u64>>, Ticket)>> {
        Box::pin(async move {
            let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
            let (pool, name, docs_read) =
                (self.pool.clone(), self.name.clone(), self.docs_read.clone());
            let live = self.live.clone();
            let task = tokio::spawn(async move {
                write_tx(&pool, &name, &live, ids, &docs_read, |st| {
                    docs.iter()
                        .map(|r| st.restamp(r.clone()))
                        .collect::<Result<Vec<_>>>()
                })
                .await
            });
            let (results, summary) = timed(joined(task)).await?;
            self.published(
                summary.last_seq,
                summary.grants_changed,
                summary.grant_changes,
            );
            Ok((results, Ticket(summary.last_seq)))
        })
    }

    fn get_setting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.bytes(
                "SELECT value FROM syncgate_settings WHERE db = $1 AND key = $2",
                vec![p(key.as_bytes().to_vec())],
            )
            .await
        })
    }

    /// Moves the database's settings version in the same transaction and notifies it, so the
    /// other nodes reload the setting (see the module documentation).
    fn put_setting<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            let key = key.as_bytes().to_vec();
            let value = value.map(<[u8]>::to_vec);
            let notifies = self.live.notifies;
            let version = self
                .with_client(move |mut c, db| async move {
                    let tx = c.transaction().await.map_err(pg_err)?;
                    match value {
                    Some(v) => {
                        tx.execute(
                            "INSERT INTO syncgate_settings (db, key, value) VALUES ($1, $2, $3) \
                             ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value",
                            &[&db, &key, &v],
                        )
                        .await
                    }
                    None => {
                        tx.execute(
                            "DELETE FROM syncgate_settings WHERE db = $1 AND key = $2",
                            &[&db, &key],
                        )
                        .await
                    }
                }
                .map_err(pg_err)?;
                    let version: i64 = tx
                        .query_one(
                            "UPDATE syncgate_counters SET settings_version = settings_version + 1 \
                         WHERE db = $1 RETURNING settings_version",
                            &[&db],
                        )
                        .await
                        .map_err(pg_err)?
                        .get(0);
                    if notifies {
                        tx.execute(NOTIFY, &[&CHANNEL, &format!("settings {version} {db}")])
                            .await
                            .map_err(pg_err)?;
                    }
                    tx.commit().await.map_err(pg_err)?;
                    Ok(version as u64)
                })
                .await?;
            self.live.settings_moved(version, false);
            Ok(Ticket(0))
        })
    }

    /// One round trip (`SELECT`) on a pooled connection.
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.exec("SELECT $1::text", vec![]).await })
    }

    fn settings_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.live.settings.subscribe())
    }

    fn attachment<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.bytes(
                "SELECT data FROM syncgate_attachments WHERE db = $1 AND digest = $2",
                vec![p(digest.as_bytes().to_vec())],
            )
            .await
        })
    }

    fn get_local<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<LocalDoc>>> {
        Box::pin(async move {
            match self
                .bytes(
                    "SELECT doc FROM syncgate_local WHERE db = $1 AND id = $2",
                    vec![p(id.as_bytes().to_vec())],
                )
                .await?
            {
                Some(v) => Ok(Some(decode("local document", &v)?)),
                None => Ok(None),
            }
        })
    }

    /// Two statements, no transaction: read the current document, then write the new one
    /// only if the row still holds exactly what was read (an update compares the stored
    /// bytes, which carry the revision; a first write loses on the primary key to a
    /// concurrent one): a concurrent writer makes this one a conflict, as the revision check
    /// would have. Replicators' checkpoints are written here, once per batch.
    fn put_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
        body: Box<serde_json::value::RawValue>,
    ) -> BoxFuture<'a, Result<(String, Ticket)>> {
        Box::pin(async move {
            let id = id.as_bytes().to_vec();
            let rev = rev.map(str::to_string);
            let new_rev = self
                .with_client(move |c, db| async move {
                    let read = c
                        .prepare_cached("SELECT doc FROM syncgate_local WHERE db = $1 AND id = $2")
                        .await
                        .map_err(pg_err)?;
                    let stored: Option<Vec<u8>> = c
                        .query_opt(&read, &[&db, &id])
                        .await
                        .map_err(pg_err)?
                        .map(|r| r.get(0));
                    let current: Option<LocalDoc> = match &stored {
                        Some(v) => Some(decode("local document", v)?),
                        None => None,
                    };
                    let doc = LocalDoc {
                        rev: next_local_rev(current.as_ref(), rev.as_deref())?,
                        body,
                    };
                    let bytes = encode("local document", &doc)?;
                    let n = match &stored {
                        Some(old) => {
                            let st = c
                                .prepare_cached(
                                    "UPDATE syncgate_local SET doc = $3 \
                                 WHERE db = $1 AND id = $2 AND doc = $4",
                                )
                                .await
                                .map_err(pg_err)?;
                            c.execute(&st, &[&db, &id, &bytes, old]).await
                        }
                        None => {
                            let st = c
                                .prepare_cached(
                                    "INSERT INTO syncgate_local (db, id, doc) VALUES ($1, $2, $3) \
                                 ON CONFLICT (db, id) DO NOTHING",
                                )
                                .await
                                .map_err(pg_err)?;
                            c.execute(&st, &[&db, &id, &bytes]).await
                        }
                    }
                    .map_err(pg_err)?;
                    if n != 1 {
                        return Err(StorageError::Conflict("Document update conflict".into()));
                    }
                    Ok(doc.rev)
                })
                .await?;
            Ok((new_rev, Ticket(0)))
        })
    }

    fn delete_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            let id = id.as_bytes().to_vec();
            let rev = rev.map(str::to_string);
            self.with_client(move |mut c, db| async move {
                let tx = c.transaction().await.map_err(pg_err)?;
                let current: Option<LocalDoc> = match tx
                    .query_opt(
                        "SELECT doc FROM syncgate_local WHERE db = $1 AND id = $2 FOR UPDATE",
                        &[&db, &id],
                    )
                    .await
                    .map_err(pg_err)?
                {
                    Some(r) => Some(decode("local document", r.get(0))?),
                    None => None,
                };
                check_local_delete(current.as_ref(), rev.as_deref())?;
                tx.execute(
                    "DELETE FROM syncgate_local WHERE db = $1 AND id = $2",
                    &[&db, &id],
                )
                .await
                .map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)
            })
            .await?;
            Ok(Ticket(0))
        })
    }

    fn get_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.bytes(
                "SELECT record FROM syncgate_principals WHERE db = $1 AND kind = $2 AND name = $3",
                vec![p(kind_code(kind)), p(name.as_bytes().to_vec())],
            )
            .await
        })
    }

    fn raise_seq(&self, seq: u64) -> BoxFuture<'_, Result<Ticket>> {
        Box::pin(async move {
            let (db, live) = (&self.name, &self.live);
            let (last, raised) = timed(async move {
                let c = self.pool.get().await.map_err(pool_err)?;
                let mut tx = OpenTx(Some(c));
                tx.client()?.batch_execute("BEGIN").await.map_err(pg_err)?;
                let last: i64 = tx
                    .client()?
                    .query_one(LOCK_COUNTER, &[db])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                let last = last as u64;
                if last >= seq {
                    tx.pipeline_and_commit(&[]).await?;
                    return Ok((last, false));
                }
                let mut stmts = vec![stmt(db, SET_COUNTERS, vec![p(seq as i64), p(0i64)])];
                if live.notifies {
                    stmts.push(super::write::Stmt::new(
                        NOTIFY,
                        vec![p(CHANNEL.to_string()), p(format!("{seq} {db}"))],
                    ));
                }
                live.committing(seq);
                if let Err(e) = tx.pipeline_and_commit(&stmts).await {
                    live.abandoned(seq);
                    return Err(e);
                }
                Ok((seq, true))
            })
            .await?;
            if raised {
                self.published(last, false, Vec::new());
            }
            Ok(Ticket(last))
        })
    }

    fn put_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<(u64, Ticket)>> {
        Box::pin(async move {
            let seq = self.principal_tx(kind, name, None, Some(build)).await?;
            Ok((seq.unwrap_or_default(), Ticket(seq.unwrap_or_default())))
        })
    }

    fn put_principal_if<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        expected: Option<&'a [u8]>,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<Option<(u64, Ticket)>>> {
        Box::pin(async move {
            let seq = self
                .principal_tx(kind, name, Some(expected), Some(build))
                .await?;
            Ok(seq.map(|s| (s, Ticket(s))))
        })
    }

    fn delete_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            let seq = self.principal_tx(kind, name, None, None).await?;
            Ok(Ticket(seq.unwrap_or_default()))
        })
    }

    fn list_principals(&self, kind: PrincipalKind) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            self.rows(
                "SELECT name FROM syncgate_principals WHERE db = $1 AND kind = $2 ORDER BY name",
                vec![p(kind_code(kind))],
            )
            .await?
            .into_iter()
            .map(|r| utf8("principal name", r.get(0)))
            .collect()
        })
    }

    fn get_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.bytes(
                "SELECT value FROM syncgate_sessions WHERE db = $1 AND key = $2",
                vec![p(key.as_bytes().to_vec())],
            )
            .await
        })
    }

    fn put_session<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            self.exec(
                "INSERT INTO syncgate_sessions (db, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value",
                vec![p(key.as_bytes().to_vec()), p(value)],
            )
            .await?;
            Ok(Ticket(0))
        })
    }

    fn delete_sessions<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
            self.exec(
                "DELETE FROM syncgate_sessions WHERE db = $1 AND key = ANY($2)",
                vec![p(keys)],
            )
            .await?;
            Ok(Ticket(0))
        })
    }

    fn list_sessions(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        Box::pin(async move {
            self.rows(
                "SELECT key, value FROM syncgate_sessions WHERE db = $1 ORDER BY key",
                vec![],
            )
            .await?
            .into_iter()
            .map(|r| Ok((utf8("session key", r.get(0))?, r.get(1))))
            .collect()
        })
    }

    fn put_login<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            self.exec(
                "INSERT INTO syncgate_logins (db, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (db, key) DO UPDATE SET value = EXCLUDED.value",
                vec![p(key.as_bytes().to_vec()), p(value)],
            )
            .await?;
            Ok(Ticket(0))
        })
    }

    /// `DELETE … RETURNING`: of two callers, one gets the row.
    fn take_login<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            self.bytes(
                "DELETE FROM syncgate_logins WHERE db = $1 AND key = $2 RETURNING value",
                vec![p(key.as_bytes().to_vec())],
            )
            .await
        })
    }

    fn list_logins(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        Box::pin(async move {
            self.rows(
                "SELECT key, value FROM syncgate_logins WHERE db = $1 ORDER BY key",
                vec![],
            )
            .await?
            .into_iter()
            .map(|r| Ok((utf8("login key", r.get(0))?, r.get(1))))
            .collect()
        })
    }

    fn delete_logins<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>> {
        Box::pin(async move {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
            self.exec(
                "DELETE FROM syncgate_logins WHERE db = $1 AND key = ANY($2)",
                vec![p(keys)],
            )
            .await?;
            Ok(Ticket(0))
        })
    }

    /// In chunks, so memory stays bounded and writers wait for one chunk at most (the
    /// counter row is held only while a page of documents is rewritten and while unreferenced
    /// attachments are deleted): drops non-leaf bodies, attachment data no remaining body
    /// refers to, and superseded change rows at or below the oldest change view open on this
    /// handle (or the last sequence). Views open on other nodes are not known here: one older than that horizon
    /// may miss a document updated meanwhile (it shows at its new sequence in the next view).
    fn compact(&self) -> BoxFuture<'_, Result<CompactStats>> {
        Box::pin(async move {
            let horizon = {
                let views = self.views.lock().unwrap_or_else(|e| e.into_inner());
                let last = self.last_seq();
                views.keys().next().map_or(last, |v| (*v).min(last))
            };
            let db = &self.name;
            {
                let mut c = self.pool.get().await.map_err(pool_err)?;
                let mut stats = CompactStats::default();
                // 1. bodies of non-leaf revisions: a page of documents at a time, read without a
                // lock; the page's documents that have some are re-read and rewritten in a short
                // transaction under the counter lock (as a write), so no writer changes them
                // meanwhile and writers wait for one page at most
                let mut after: Vec<u8> = Vec::new();
                loop {
                    let page = c
                        .query(
                            "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id > $2 \
                             ORDER BY id LIMIT $3",
                            &[&db, &after, &PAGE],
                        )
                        .await
                        .map_err(pg_err)?;
                    let Some(last) = page.last() else { break };
                    after = last.get(0);
                    let mut candidates: Vec<Vec<u8>> = Vec::new();
                    for r in &page {
                        let meta: DocMeta = decode("document", r.get(1))?;
                        if has_old_bodies(&meta) {
                            candidates.push(r.get(0));
                        }
                    }
                    if !candidates.is_empty() {
                        let tx = c.transaction().await.map_err(pg_err)?;
                        tx.query_one(LOCK_COUNTER, &[&db]).await.map_err(pg_err)?;
                        let docs = tx
                            .query(
                                "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id = ANY($2)",
                                &[&db, &candidates],
                            )
                            .await
                            .map_err(pg_err)?;
                        for r in docs {
                            let id: Vec<u8> = r.get(0);
                            let mut meta: DocMeta = decode("document", r.get(1))?;
                            if !has_old_bodies(&meta) {
                                continue;
                            }
                            let dropped: Vec<Vec<u8>> = drop_old_bodies(&mut meta)
                                .into_iter()
                                .map(String::into_bytes)
                                .collect();
                            stats.bodies_removed += dropped.len() as u64;
                            tx.execute(
                                "DELETE FROM syncgate_bodies WHERE db = $1 AND id = $2 AND rev = ANY($3)",
                                &[&db, &id, &dropped],
                            )
                            .await
                            .map_err(pg_err)?;
                            tx.execute(
                                "UPDATE syncgate_docs SET meta = $3 WHERE db = $1 AND id = $2",
                                &[&db, &id, &encode("document", &meta)?],
                            )
                            .await
                            .map_err(pg_err)?;
                        }
                        tx.commit().await.map_err(pg_err)?;
                    }
                    if (page.len() as i64) < PAGE {
                        break;
                    }
                }
                // 2. attachments no leaf references. Every body left is a leaf's: their digests,
                // read a page at a time without a lock, are the referenced ones — plus those of
                // bodies written after the scan began (documents whose sequence moved past
                // `since`), read under the counter lock with the deletion, so an attachment a
                // write has just referenced again is kept (one written after the scan of the
                // attachments is no candidate)
                let since: i64 = c
                    .query_one(
                        "SELECT last_seq FROM syncgate_counters WHERE db = $1",
                        &[&db],
                    )
                    .await
                    .map_err(pg_err)?
                    .get(0);
                let mut referenced: HashSet<Vec<u8>> = HashSet::new();
                let refer = |r: &Row, referenced: &mut HashSet<Vec<u8>>| -> Result<()> {
                    let id = String::from_utf8_lossy(r.get::<_, &[u8]>(0)).into_owned();
                    let rev = String::from_utf8_lossy(r.get::<_, &[u8]>(1)).into_owned();
                    for (_, a) in decode_body(&id, &rev, r.get(2))?.attachments {
                        referenced.insert(a.digest.into_bytes());
                    }
                    Ok(())
                };
                let (mut after_id, mut after_rev) = (Vec::<u8>::new(), Vec::<u8>::new());
                loop {
                    let page = c
                        .query(
                            "SELECT id, rev, body FROM syncgate_bodies \
                             WHERE db = $1 AND (id, rev) > ($2, $3) ORDER BY id, rev LIMIT $4",
                            &[&db, &after_id, &after_rev, &PAGE],
                        )
                        .await
                        .map_err(pg_err)?;
                    let Some(last) = page.last() else { break };
                    (after_id, after_rev) = (last.get(0), last.get(1));
                    for r in &page {
                        refer(r, &mut referenced)?;
                    }
                    if (page.len() as i64) < PAGE {
                        break;
                    }
                }
                // the stored attachments no scanned body references, a page at a time
                let mut candidates: Vec<Vec<u8>> = Vec::new();
                let mut after_digest: Vec<u8> = Vec::new();
                loop {
                    let page = c
                        .query(
                            "SELECT digest FROM syncgate_attachments WHERE db = $1 AND digest > $2 \
                             ORDER BY digest LIMIT $3",
                            &[&db, &after_digest, &(PAGE * 16)],
                        )
                        .await
                        .map_err(pg_err)?;
                    let Some(last) = page.last() else { break };
                    after_digest = last.get(0);
                    let full = page.len() as i64 == PAGE * 16;
                    candidates.extend(
                        page.into_iter()
                            .map(|r| r.get::<_, Vec<u8>>(0))
                            .filter(|d| !referenced.contains(d)),
                    );
                    if !full {
                        break;
                    }
                }
                drop(referenced);
                if !candidates.is_empty() {
                    // under the lock: those a body written since the scan began refers to stay
                    let tx = c.transaction().await.map_err(pg_err)?;
                    tx.query_one(LOCK_COUNTER, &[&db]).await.map_err(pg_err)?;
                    let fresh = tx
                        .query(
                            "SELECT b.id, b.rev, b.body FROM syncgate_bodies b \
                             JOIN syncgate_docs d ON d.db = b.db AND d.id = b.id \
                             WHERE b.db = $1 AND d.seq > $2",
                            &[&db, &since],
                        )
                        .await
                        .map_err(pg_err)?;
                    let mut again = HashSet::new();
                    for r in &fresh {
                        refer(r, &mut again)?;
                    }
                    candidates.retain(|d| !again.contains(d));
                    stats.attachments_removed = tx
                        .execute(
                            "DELETE FROM syncgate_attachments WHERE db = $1 AND digest = ANY($2)",
                            &[&db, &candidates],
                        )
                        .await
                        .map_err(pg_err)?;
                    tx.commit().await.map_err(pg_err)?;
                }
                // 3. by-sequence rows superseded at or below the horizon (no open view shows them;
                // no writer touches them again), a range of sequences at a time, without the lock
                let horizon = horizon as i64;
                let mut lo = 0i64;
                while lo < horizon {
                    let hi = lo + SUPERSEDED_CHUNK;
                    c.execute(
                        "DELETE FROM syncgate_channels c USING syncgate_changes e \
                         WHERE c.db = $1 AND e.db = $1 AND c.seq = e.seq AND e.superseded <= $2 \
                         AND e.seq > $3 AND e.seq <= $4",
                        &[&db, &horizon, &lo, &hi],
                    )
                    .await
                    .map_err(pg_err)?;
                    c.execute(
                        "DELETE FROM syncgate_changes WHERE db = $1 AND superseded <= $2 \
                         AND seq > $3 AND seq <= $4",
                        &[&db, &horizon, &lo, &hi],
                    )
                    .await
                    .map_err(pg_err)?;
                    lo = hi;
                }
                Ok(stats)
            }
        })
    }

    /// Acknowledged = committed: a write has returned only after its commit; here its
    /// sequence is published to this node's feeds (see `Live::committed`).
    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>> {
        self.live.publish(ticket.0);
        Box::pin(async { Ok(()) })
    }

    fn docs_read(&self) -> u64 {
        self.docs_read.load(Ordering::Relaxed)
    }
}
