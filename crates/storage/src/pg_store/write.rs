//! The write transaction: the rules' operations ([`crate::rules::BatchBackend`]) turned into
//! statements, run in one PostgreSQL transaction that holds the database's counter row.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use deadpool_postgres::{GenericClient, Pool, Transaction};
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;

use super::{decode, decode_body, encode, encode_body, kind_code, pg_err, pool_err, CHANNEL};
use crate::model::*;
use crate::rules::{BatchBackend, BatchSummary, DocBatch};
use crate::{PrincipalKind, Result, StorageError};

pub(super) type Param = Box<dyn ToSql + Sync + Send>;

pub(super) fn p<T: ToSql + Sync + Send + 'static>(v: T) -> Param {
    Box::new(v)
}

/// One statement of a batch.
pub(super) struct Stmt {
    sql: &'static str,
    params: Vec<Param>,
}

impl Stmt {
    pub(super) fn new(sql: &'static str, params: Vec<Param>) -> Stmt {
        Stmt { sql, params }
    }
}

const PUT_ATTACHMENT: &str =
    "INSERT INTO syncgate_attachments (db, digest, data) VALUES ($1, $2, $3) \
     ON CONFLICT (db, digest) DO NOTHING";
const PUT_BODY: &str = "INSERT INTO syncgate_bodies (db, id, rev, body) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (db, id, rev) DO UPDATE SET body = EXCLUDED.body";
const REMOVE_BODY: &str = "DELETE FROM syncgate_bodies WHERE db = $1 AND id = $2 AND rev = $3";
const PUT_DOC: &str = "INSERT INTO syncgate_docs (db, id, seq, meta) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (db, id) DO UPDATE SET seq = EXCLUDED.seq, meta = EXCLUDED.meta";
const PUT_ENTRY: &str = "INSERT INTO syncgate_changes (db, seq, superseded, entry) \
     VALUES ($1, $2, NULL, $3) \
     ON CONFLICT (db, seq) DO UPDATE SET superseded = NULL, entry = EXCLUDED.entry";
const PUT_CHANNELS: &str = "INSERT INTO syncgate_channels (db, channel, seq) \
     SELECT $1, unnest($2::bytea[]), $3 ON CONFLICT DO NOTHING";
const DROP_ENTRY: &str = "DELETE FROM syncgate_changes WHERE db = $1 AND seq = $2";
const DROP_CHANNELS: &str =
    "DELETE FROM syncgate_channels WHERE db = $1 AND seq = $2 AND channel = ANY($3)";
const SUPERSEDE: &str =
    "UPDATE syncgate_changes SET superseded = $3, entry = $4 WHERE db = $1 AND seq = $2";
const PUT_GRANT: &str = "INSERT INTO syncgate_grants (db, kind, name, doc, grant_entry) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (db, kind, name, doc) DO UPDATE SET grant_entry = EXCLUDED.grant_entry";
const REMOVE_GRANT: &str =
    "DELETE FROM syncgate_grants WHERE db = $1 AND kind = $2 AND name = $3 AND doc = $4";
pub(super) const SET_COUNTERS: &str = "UPDATE syncgate_counters \
     SET last_seq = $2, doc_count = GREATEST(doc_count + $3, 0) WHERE db = $1";
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";
pub(super) const LOCK_COUNTER: &str =
    "SELECT last_seq FROM syncgate_counters WHERE db = $1 FOR UPDATE";

/// A batch being filled by the rules inside an open transaction: reads see the state before
/// the batch (statements are only queued), writes are queued in order.
pub(super) struct PgBatch<'a, 't> {
    h: &'a Handle,
    tx: &'a Transaction<'t>,
    db: &'a str,
    /// Documents of the batch read ahead in one query (`None`: no such document).
    metas: HashMap<String, Option<DocMeta>>,
    stmts: Vec<Stmt>,
    docs_read: &'a AtomicU64,
}

impl PgBatch<'_, '_> {
    fn push(&mut self, sql: &'static str, mut params: Vec<Param>) {
        params.insert(0, p(self.db.to_string()));
        self.stmts.push(Stmt { sql, params });
    }

    fn one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>> {
        self.h
            .block_on(self.tx.query_opt(sql, params))
            .map_err(pg_err)
    }
}

impl BatchBackend for PgBatch<'_, '_> {
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        let meta = match self.metas.get(id) {
            Some(m) => m.clone(),
            None => match self.one(
                "SELECT meta FROM syncgate_docs WHERE db = $1 AND id = $2",
                &[&self.db, &id.as_bytes()],
            )? {
                Some(r) => Some(decode::<DocMeta>("document", r.get(0))?),
                None => None,
            },
        };
        if meta.is_some() {
            self.docs_read.fetch_add(1, Ordering::Relaxed);
        }
        Ok(meta)
    }

    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        match self.one(
            "SELECT body FROM syncgate_bodies WHERE db = $1 AND id = $2 AND rev = $3",
            &[&self.db, &id.as_bytes(), &rev.as_bytes()],
        )? {
            Some(r) => {
                self.docs_read.fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode_body(id, rev, r.get(0))?))
            }
            None => Ok(None),
        }
    }

    fn attachment_len(&self, digest: &str) -> Result<Option<u64>> {
        Ok(self
            .one(
                "SELECT length(data)::bigint FROM syncgate_attachments WHERE db = $1 AND digest = $2",
                &[&self.db, &digest.as_bytes()],
            )?
            .map(|r| r.get::<_, i64>(0) as u64))
    }

    fn load_grant(&self, kind: PrincipalKind, name: &str, doc: &str) -> Result<Option<DocGrant>> {
        match self.one(
            "SELECT grant_entry FROM syncgate_grants \
             WHERE db = $1 AND kind = $2 AND name = $3 AND doc = $4",
            &[
                &self.db,
                &kind_code(kind),
                &name.as_bytes(),
                &doc.as_bytes(),
            ],
        )? {
            Some(r) => Ok(Some(decode("access index entry", r.get(0))?)),
            None => Ok(None),
        }
    }

    fn put_attachment(&mut self, digest: &str, data: &[u8]) -> Result<()> {
        self.push(
            PUT_ATTACHMENT,
            vec![p(digest.as_bytes().to_vec()), p(data.to_vec())],
        );
        Ok(())
    }

    fn put_body(&mut self, id: &str, rev: &str, body: &StoredBody) -> Result<()> {
        let bytes = encode_body(id, rev, body)?;
        self.push(
            PUT_BODY,
            vec![
                p(id.as_bytes().to_vec()),
                p(rev.as_bytes().to_vec()),
                p(bytes),
            ],
        );
        Ok(())
    }

    fn remove_body(&mut self, id: &str, rev: &str) -> Result<()> {
        self.push(
            REMOVE_BODY,
            vec![p(id.as_bytes().to_vec()), p(rev.as_bytes().to_vec())],
        );
        Ok(())
    }

    fn put_doc(&mut self, id: &str, meta: &DocMeta, entry: &ChangeEntry) -> Result<()> {
        let seq = meta.seq as i64;
        self.push(
            PUT_DOC,
            vec![
                p(id.as_bytes().to_vec()),
                p(seq),
                p(encode("document", meta)?),
            ],
        );
        self.push(PUT_ENTRY, vec![p(seq), p(encode("change entry", entry)?)]);
        if !meta.channel_history.is_empty() {
            self.push(
                PUT_CHANNELS,
                vec![p(channel_bytes(&meta.channel_history)), p(seq)],
            );
        }
        Ok(())
    }

    fn drop_entry(&mut self, seq: u64, channels: &[String]) -> Result<()> {
        self.push(DROP_ENTRY, vec![p(seq as i64)]);
        if !channels.is_empty() {
            self.push(
                DROP_CHANNELS,
                vec![p(seq as i64), p(channel_bytes(channels))],
            );
        }
        Ok(())
    }

    /// Marks the row superseded (its channel index rows stay: they point at the same row).
    fn supersede(&mut self, entry: &ChangeEntry, _channel_history: &[String]) -> Result<()> {
        let next = entry.superseded.unwrap_or(entry.seq) as i64;
        self.push(
            SUPERSEDE,
            vec![
                p(entry.seq as i64),
                p(next),
                p(encode("change entry", entry)?),
            ],
        );
        Ok(())
    }

    fn put_grant(
        &mut self,
        kind: PrincipalKind,
        name: &str,
        doc: &str,
        grant: &DocGrant,
    ) -> Result<()> {
        self.push(
            PUT_GRANT,
            vec![
                p(kind_code(kind)),
                p(name.as_bytes().to_vec()),
                p(doc.as_bytes().to_vec()),
                p(encode("access index entry", grant)?),
            ],
        );
        Ok(())
    }

    fn remove_grant(&mut self, kind: PrincipalKind, name: &str, doc: &str) -> Result<()> {
        self.push(
            REMOVE_GRANT,
            vec![
                p(kind_code(kind)),
                p(name.as_bytes().to_vec()),
                p(doc.as_bytes().to_vec()),
            ],
        );
        Ok(())
    }
}

fn channel_bytes(channels: &[String]) -> Vec<Vec<u8>> {
    channels.iter().map(|c| c.as_bytes().to_vec()).collect()
}

/// Runs `body` on a [`DocBatch`] inside one transaction holding the database's counter row,
/// then writes its operations, the counters and the notification, and commits. `ids`: the
/// documents the batch will touch (read ahead in one query). Run on a blocking thread of the
/// backend runtime ([`super::bridge::Bridge::run_sync`]).
pub(super) fn write_tx<T>(
    h: &Handle,
    pool: &Pool,
    db: &str,
    live: &super::Live,
    ids: Vec<String>,
    docs_read: &AtomicU64,
    body: impl FnOnce(&mut DocBatch<PgBatch<'_, '_>>) -> Result<T>,
) -> Result<(T, BatchSummary)> {
    let mut client = h.block_on(pool.get()).map_err(pool_err)?;
    let tx = h.block_on(client.transaction()).map_err(pg_err)?;
    let last: i64 = h
        .block_on(tx.query_one(LOCK_COUNTER, &[&db]))
        .map_err(pg_err)?
        .get(0);
    let keys: Vec<Vec<u8>> = ids.iter().map(|i| i.as_bytes().to_vec()).collect();
    let mut metas: HashMap<String, Option<DocMeta>> = ids.into_iter().map(|i| (i, None)).collect();
    let rows = h
        .block_on(tx.query(
            "SELECT id, meta FROM syncgate_docs WHERE db = $1 AND id = ANY($2)",
            &[&db, &keys],
        ))
        .map_err(pg_err)?;
    for r in rows {
        let id = String::from_utf8(r.get::<_, Vec<u8>>(0))
            .map_err(|_| StorageError::Corrupt("document id is not UTF-8".into()))?;
        let meta: DocMeta = decode("document", r.get(1))?;
        metas.insert(id, Some(meta));
    }
    let batch = PgBatch {
        h,
        tx: &tx,
        db,
        metas,
        stmts: Vec::new(),
        docs_read,
    };
    let mut st = DocBatch::new(batch, last as u64 + 1);
    let out = body(&mut st)?;
    let (mut batch, summary) = st.finish()?;
    if summary.last_seq != last as u64 || summary.doc_delta != 0 {
        batch.push(
            SET_COUNTERS,
            vec![p(summary.last_seq as i64), p(summary.doc_delta)],
        );
    }
    if summary.last_seq != last as u64 && live.notifies {
        batch.stmts.push(Stmt {
            sql: NOTIFY,
            params: vec![
                p(CHANNEL.to_string()),
                p(format!("{} {db}", summary.last_seq)),
            ],
        });
    }
    let stmts = std::mem::take(&mut batch.stmts);
    drop(batch);
    h.block_on(pipeline(&tx, &stmts))?;
    live.committing(summary.last_seq);
    if let Err(e) = h.block_on(tx.commit()) {
        live.abandoned(summary.last_seq);
        return Err(pg_err(e));
    }
    Ok((out, summary))
}

/// Sends every statement before waiting for any answer (one round trip for the batch), in
/// order: PostgreSQL runs them in the order sent.
pub(super) async fn pipeline<C: GenericClient>(tx: &C, stmts: &[Stmt]) -> Result<()> {
    let mut prepared = HashMap::new();
    for s in stmts {
        if !prepared.contains_key(s.sql) {
            let st = tx.prepare_cached(s.sql).await.map_err(pg_err)?;
            prepared.insert(s.sql, st);
        }
    }
    let refs: Vec<Vec<&(dyn ToSql + Sync)>> = stmts
        .iter()
        .map(|s| {
            s.params
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect()
        })
        .collect();
    type Exec<'x> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'x>>;
    let mut futs: Vec<Option<Exec<'_>>> = stmts
        .iter()
        .zip(&refs)
        .map(|(s, r)| Some(Box::pin(tx.execute(&prepared[s.sql], r)) as Exec<'_>))
        .collect();
    // polled in order on every wake, so the first poll sends them all, in order
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futs.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(_)) => *slot = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(pg_err(e))),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

/// A statement for [`pipeline`] whose parameters include the database name first.
pub(super) fn stmt(db: &str, sql: &'static str, mut params: Vec<Param>) -> Stmt {
    params.insert(0, p(db.to_string()));
    Stmt { sql, params }
}
