//! The write transaction: the rules' operations ([`crate::rules::BatchBackend`]) turned into
//! statements, run in one PostgreSQL transaction that holds the database's counter row.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use deadpool_postgres::{Client, Pool};
use tokio_postgres::types::{ToSql, Type};

use super::db::OpenTx;
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
    /// The parameters' types when the statement is sent unprepared, so PostgreSQL plans it
    /// for its actual parameters and the tables' current size each time: what a statement
    /// that finds rows through a list (`= ANY`, a join with `unnest`) needs. A prepared
    /// statement's cached generic plan is made once per connection, maybe while the tables
    /// were nearly empty (a fresh database filling up): a sequential scan that then stays,
    /// costing a scan of the whole table per call as it grows. Planning costs far less than
    /// that at one statement per batch.
    types: Option<&'static [Type]>,
}

impl Stmt {
    pub(super) fn new(sql: &'static str, params: Vec<Param>) -> Stmt {
        Stmt {
            sql,
            params,
            types: None,
        }
    }

    /// A statement sent unprepared with these parameter types (the database name first).
    fn planned(mut self, types: &'static [Type]) -> Stmt {
        self.types = Some(types);
        self
    }
}

// The batch's operations, coalesced per row and sent as one statement per table and kind,
// each row taken from parallel arrays (`unnest`): a `_bulk_docs` of 100 new documents is four
// statements, not four hundred.
const PUT_ATTACHMENTS: &str = "INSERT INTO syncgate_attachments (db, digest, data) \
     SELECT $1::text, u.digest, u.data FROM unnest($2::bytea[], $3::bytea[]) AS u(digest, data) \
     ON CONFLICT (db, digest) DO NOTHING";
const PUT_BODIES: &str = "INSERT INTO syncgate_bodies (db, id, rev, body) \
     SELECT $1::text, u.id, u.rev, u.body \
     FROM unnest($2::bytea[], $3::bytea[], $4::bytea[]) AS u(id, rev, body) \
     ON CONFLICT (db, id, rev) DO UPDATE SET body = EXCLUDED.body";
const REMOVE_BODIES: &str = "DELETE FROM syncgate_bodies b \
     USING unnest($2::bytea[], $3::bytea[]) AS u(id, rev) \
     WHERE b.db = $1 AND b.id = u.id AND b.rev = u.rev";
const PUT_DOCS: &str = "INSERT INTO syncgate_docs (db, id, seq, meta) \
     SELECT $1::text, u.id, u.seq, u.meta \
     FROM unnest($2::bytea[], $3::int8[], $4::bytea[]) AS u(id, seq, meta) \
     ON CONFLICT (db, id) DO UPDATE SET seq = EXCLUDED.seq, meta = EXCLUDED.meta";
const PUT_ENTRIES: &str = "INSERT INTO syncgate_changes (db, seq, superseded, entry) \
     SELECT $1::text, u.seq, u.superseded, u.entry \
     FROM unnest($2::int8[], $3::int8[], $4::bytea[]) AS u(seq, superseded, entry) \
     ON CONFLICT (db, seq) DO UPDATE SET superseded = EXCLUDED.superseded, entry = EXCLUDED.entry";
const SUPERSEDE_ENTRIES: &str = "UPDATE syncgate_changes c \
     SET superseded = u.superseded, entry = u.entry \
     FROM unnest($2::int8[], $3::int8[], $4::bytea[]) AS u(seq, superseded, entry) \
     WHERE c.db = $1 AND c.seq = u.seq";
const DROP_ENTRIES: &str = "DELETE FROM syncgate_changes WHERE db = $1 AND seq = ANY($2::int8[])";
const PUT_CHANNELS: &str = "INSERT INTO syncgate_channels (db, channel, seq) \
     SELECT $1::text, u.channel, u.seq FROM unnest($2::bytea[], $3::int8[]) AS u(channel, seq) \
     ON CONFLICT DO NOTHING";
const DROP_CHANNELS: &str = "DELETE FROM syncgate_channels c \
     USING unnest($2::bytea[], $3::int8[]) AS u(channel, seq) \
     WHERE c.db = $1 AND c.channel = u.channel AND c.seq = u.seq";
const PUT_GRANTS: &str = "INSERT INTO syncgate_grants (db, kind, name, doc, grant_entry) \
     SELECT $1::text, u.kind, u.name, u.doc, u.grant_entry \
     FROM unnest($2::int2[], $3::bytea[], $4::bytea[], $5::bytea[]) \
         AS u(kind, name, doc, grant_entry) \
     ON CONFLICT (db, kind, name, doc) DO UPDATE SET grant_entry = EXCLUDED.grant_entry";
const REMOVE_GRANTS: &str = "DELETE FROM syncgate_grants g \
     USING unnest($2::int2[], $3::bytea[], $4::bytea[]) AS u(kind, name, doc) \
     WHERE g.db = $1 AND g.kind = u.kind AND g.name = u.name AND g.doc = u.doc";
pub(super) const SET_COUNTERS: &str = "UPDATE syncgate_counters \
     SET last_seq = $2, doc_count = GREATEST(doc_count + $3, 0) WHERE db = $1";
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";
pub(super) const LOCK_COUNTER: &str =
    "SELECT last_seq FROM syncgate_counters WHERE db = $1 FOR UPDATE";

const TEXT_BYTEAS_2: &[Type] = &[Type::TEXT, Type::BYTEA_ARRAY, Type::BYTEA_ARRAY];

/// The final state of one by-sequence row after the batch's operations.
enum EntryOp {
    /// Written (or rewritten) by the batch: `superseded` set when a later write of the same
    /// batch superseded it.
    Put {
        superseded: Option<i64>,
        entry: Vec<u8>,
    },
    /// A row from before the batch, superseded.
    Supersede {
        superseded: i64,
        entry: Vec<u8>,
    },
    Drop,
}

/// A body's key: document id, revision.
type BodyKey = (Vec<u8>, Vec<u8>);
/// An access index entry's key: principal kind, principal name, document id.
type GrantKey = (i16, Vec<u8>, Vec<u8>);

/// A batch's operations, coalesced per row (the last operation on a row decides), so each
/// table gets at most one statement per kind and no statement touches a row twice.
#[derive(Default)]
struct Ops {
    attachments: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `None`: removed.
    bodies: BTreeMap<BodyKey, Option<Vec<u8>>>,
    docs: BTreeMap<Vec<u8>, (i64, Vec<u8>)>,
    entries: BTreeMap<i64, EntryOp>,
    /// `true`: indexed, `false`: removed.
    channels: BTreeMap<(Vec<u8>, i64), bool>,
    grants: BTreeMap<GrantKey, Option<Vec<u8>>>,
}

impl Ops {
    /// The statements that write the operations (one per table and kind, deletions first).
    fn statements(self, db: &str) -> Vec<Stmt> {
        let mut out = Vec::new();
        let mut add = |sql: &'static str, params: Vec<Param>| out.push(stmt(db, sql, params));
        // statements that find existing rows through a list: planned per call (see `Stmt`)
        let mut found = Vec::new();
        let mut find = |sql: &'static str, params: Vec<Param>, types: &'static [Type]| {
            found.push(stmt(db, sql, params).planned(types))
        };
        if !self.attachments.is_empty() {
            let (d, x): (Vec<_>, Vec<_>) = self.attachments.into_iter().unzip();
            add(PUT_ATTACHMENTS, vec![p(d), p(x)]);
        }
        let (mut put, mut gone) = ((vec![], vec![], vec![]), (vec![], vec![]));
        for ((id, rev), body) in self.bodies {
            match body {
                Some(b) => {
                    put.0.push(id);
                    put.1.push(rev);
                    put.2.push(b);
                }
                None => {
                    gone.0.push(id);
                    gone.1.push(rev);
                }
            }
        }
        if !gone.0.is_empty() {
            find(REMOVE_BODIES, vec![p(gone.0), p(gone.1)], TEXT_BYTEAS_2);
        }
        if !put.0.is_empty() {
            add(PUT_BODIES, vec![p(put.0), p(put.1), p(put.2)]);
        }
        if !self.docs.is_empty() {
            let (mut ids, mut seqs, mut metas) = (vec![], vec![], vec![]);
            for (id, (seq, meta)) in self.docs {
                ids.push(id);
                seqs.push(seq);
                metas.push(meta);
            }
            add(PUT_DOCS, vec![p(ids), p(seqs), p(metas)]);
        }
        let mut dropped: Vec<i64> = vec![];
        let mut put: (Vec<i64>, Vec<Option<i64>>, Vec<Vec<u8>>) = (vec![], vec![], vec![]);
        let mut superseded: (Vec<i64>, Vec<i64>, Vec<Vec<u8>>) = (vec![], vec![], vec![]);
        for (seq, op) in self.entries {
            match op {
                EntryOp::Put {
                    superseded: s,
                    entry,
                } => {
                    put.0.push(seq);
                    put.1.push(s);
                    put.2.push(entry);
                }
                EntryOp::Supersede {
                    superseded: s,
                    entry,
                } => {
                    superseded.0.push(seq);
                    superseded.1.push(s);
                    superseded.2.push(entry);
                }
                EntryOp::Drop => dropped.push(seq),
            }
        }
        if !dropped.is_empty() {
            find(
                DROP_ENTRIES,
                vec![p(dropped)],
                &[Type::TEXT, Type::INT8_ARRAY],
            );
        }
        if !superseded.0.is_empty() {
            find(
                SUPERSEDE_ENTRIES,
                vec![p(superseded.0), p(superseded.1), p(superseded.2)],
                &[
                    Type::TEXT,
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                    Type::BYTEA_ARRAY,
                ],
            );
        }
        if !put.0.is_empty() {
            add(PUT_ENTRIES, vec![p(put.0), p(put.1), p(put.2)]);
        }
        let (mut put, mut gone) = ((vec![], vec![]), (vec![], vec![]));
        for ((channel, seq), indexed) in self.channels {
            let to = if indexed { &mut put } else { &mut gone };
            to.0.push(channel);
            to.1.push(seq);
        }
        if !gone.0.is_empty() {
            find(
                DROP_CHANNELS,
                vec![p(gone.0), p(gone.1)],
                &[Type::TEXT, Type::BYTEA_ARRAY, Type::INT8_ARRAY],
            );
        }
        if !put.0.is_empty() {
            add(PUT_CHANNELS, vec![p(put.0), p(put.1)]);
        }
        let (mut put, mut gone) = ((vec![], vec![], vec![], vec![]), (vec![], vec![], vec![]));
        for ((kind, name, doc), grant) in self.grants {
            match grant {
                Some(g) => {
                    put.0.push(kind);
                    put.1.push(name);
                    put.2.push(doc);
                    put.3.push(g);
                }
                None => {
                    gone.0.push(kind);
                    gone.1.push(name);
                    gone.2.push(doc);
                }
            }
        }
        if !gone.0.is_empty() {
            find(
                REMOVE_GRANTS,
                vec![p(gone.0), p(gone.1), p(gone.2)],
                &[
                    Type::TEXT,
                    Type::INT2_ARRAY,
                    Type::BYTEA_ARRAY,
                    Type::BYTEA_ARRAY,
                ],
            );
        }
        if !put.0.is_empty() {
            add(PUT_GRANTS, vec![p(put.0), p(put.1), p(put.2), p(put.3)]);
        }
        // the order between tables does not matter: each row has one operation
        out.extend(found);
        out
    }
}

/// What the transaction has read for the rules: each key read once (`None`: no such row).
#[derive(Default)]
struct Reads {
    metas: HashMap<String, Option<DocMeta>>,
    bodies: HashMap<(String, String), Option<StoredBody>>,
    attachments: HashMap<String, Option<u64>>,
    grants: HashMap<(PrincipalKind, String, String), Option<DocGrant>>,
}

/// Keys the rules asked for that [`Reads`] does not hold yet.
#[derive(Default)]
struct Needs {
    metas: BTreeSet<String>,
    bodies: BTreeSet<(String, String)>,
    attachments: BTreeSet<String>,
    grants: BTreeSet<(PrincipalKind, String, String)>,
}

impl Needs {
    fn is_empty(&self) -> bool {
        self.metas.is_empty()
            && self.bodies.is_empty()
            && self.attachments.is_empty()
            && self.grants.is_empty()
    }
}

/// A batch being filled by the rules inside an open transaction: reads see the state before
/// the batch (operations are only collected), writes are coalesced per row. The rules are
/// synchronous and PostgreSQL is not: reads are answered from what the transaction has read
/// ([`Reads`]); a key not read yet is noted ([`Needs`]) and answered as absent, and the pass is
/// then thrown away: the transaction reads the noted keys (one statement per kind) and runs
/// the rules again from the start (see [`write_tx`]). A batch of documents without
/// attachments or grants needs one pass: its documents are read ahead with the lock.
pub(super) struct PgBatch<'a> {
    reads: &'a Reads,
    needs: &'a RefCell<Needs>,
    ops: Ops,
    /// Records read in this pass (the `docs_read` metric counts the pass that commits).
    read: &'a Cell<u64>,
}

impl BatchBackend for PgBatch<'_> {
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        match self.reads.metas.get(id) {
            Some(m) => {
                if m.is_some() {
                    self.read.set(self.read.get() + 1);
                }
                Ok(m.clone())
            }
            None => {
                self.needs.borrow_mut().metas.insert(id.to_string());
                Ok(None)
            }
        }
    }

    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        let key = (id.to_string(), rev.to_string());
        match self.reads.bodies.get(&key) {
            Some(b) => {
                if b.is_some() {
                    self.read.set(self.read.get() + 1);
                }
                Ok(b.clone())
            }
            None => {
                self.needs.borrow_mut().bodies.insert(key);
                Ok(None)
            }
        }
    }

    fn attachment_len(&self, digest: &str) -> Result<Option<u64>> {
        match self.reads.attachments.get(digest) {
            Some(len) => Ok(*len),
            None => {
                self.needs
                    .borrow_mut()
                    .attachments
                    .insert(digest.to_string());
                Ok(None)
            }
        }
    }

    fn load_grant(&self, kind: PrincipalKind, name: &str, doc: &str) -> Result<Option<DocGrant>> {
        let key = (kind, name.to_string(), doc.to_string());
        match self.reads.grants.get(&key) {
            Some(g) => Ok(g.clone()),
            None => {
                self.needs.borrow_mut().grants.insert(key);
                Ok(None)
            }
        }
    }

    fn put_attachment(&mut self, digest: &str, data: &[u8]) -> Result<()> {
        self.ops
            .attachments
            .insert(digest.as_bytes().to_vec(), data.to_vec());
        Ok(())
    }

    fn put_body(&mut self, id: &str, rev: &str, body: &StoredBody) -> Result<()> {
        let bytes = encode_body(id, rev, body)?;
        self.ops.bodies.insert(
            (id.as_bytes().to_vec(), rev.as_bytes().to_vec()),
            Some(bytes),
        );
        Ok(())
    }

    fn remove_body(&mut self, id: &str, rev: &str) -> Result<()> {
        self.ops
            .bodies
            .insert((id.as_bytes().to_vec(), rev.as_bytes().to_vec()), None);
        Ok(())
    }

    fn put_doc(&mut self, id: &str, meta: &DocMeta, entry: &ChangeEntry) -> Result<()> {
        let seq = meta.seq as i64;
        self.ops
            .docs
            .insert(id.as_bytes().to_vec(), (seq, encode("document", meta)?));
        self.ops.entries.insert(
            seq,
            EntryOp::Put {
                superseded: None,
                entry: encode("change entry", entry)?,
            },
        );
        for c in &meta.channel_history {
            self.ops.channels.insert((c.as_bytes().to_vec(), seq), true);
        }
        Ok(())
    }

    fn drop_entry(&mut self, seq: u64, channels: &[String]) -> Result<()> {
        let seq = seq as i64;
        self.ops.entries.insert(seq, EntryOp::Drop);
        for c in channels {
            self.ops
                .channels
                .insert((c.as_bytes().to_vec(), seq), false);
        }
        Ok(())
    }

    /// Marks the row superseded (its channel index rows stay: they point at the same row).
    fn supersede(&mut self, entry: &ChangeEntry, _channel_history: &[String]) -> Result<()> {
        let next = entry.superseded.unwrap_or(entry.seq) as i64;
        let bytes = encode("change entry", entry)?;
        let seq = entry.seq as i64;
        let op = match self.ops.entries.remove(&seq) {
            // written earlier in this batch: written superseded
            Some(EntryOp::Put { .. }) => EntryOp::Put {
                superseded: Some(next),
                entry: bytes,
            },
            Some(EntryOp::Drop) => EntryOp::Drop,
            Some(EntryOp::Supersede { .. }) | None => EntryOp::Supersede {
                superseded: next,
                entry: bytes,
            },
        };
        self.ops.entries.insert(seq, op);
        Ok(())
    }

    fn put_grant(
        &mut self,
        kind: PrincipalKind,
        name: &str,
        doc: &str,
        grant: &DocGrant,
    ) -> Result<()> {
        self.ops.grants.insert(
            (
                kind_code(kind),
                name.as_bytes().to_vec(),
                doc.as_bytes().to_vec(),
            ),
            Some(encode("access index entry", grant)?),
        );
        Ok(())
    }

    fn remove_grant(&mut self, kind: PrincipalKind, name: &str, doc: &str) -> Result<()> {
        self.ops.grants.insert(
            (
                kind_code(kind),
                name.as_bytes().to_vec(),
                doc.as_bytes().to_vec(),
            ),
            None,
        );
        Ok(())
    }
}

/// Attempts a write transaction makes before giving up on serialization failures and
/// deadlocks ([`retryable`]).
pub(super) const WRITE_ATTEMPTS: u32 = 5;

/// Whether a failed transaction may succeed if run again from the start: a serialization
/// failure (SQLSTATE 40001: serializable isolation, CockroachDB and YugabyteDB under
/// contention) or a deadlock PostgreSQL broke by aborting this transaction (40P01). Nothing
/// of an aborted transaction was committed.
pub(super) fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| retryable_state(c.code()))
}

/// [`retryable`] on the SQLSTATE alone.
pub(super) fn retryable_state(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

/// A PostgreSQL error of a write transaction; `retry` notes that it is worth running the
/// transaction again.
fn tx_err(e: tokio_postgres::Error, retry: &mut bool) -> StorageError {
    if retryable(&e) {
        *retry = true;
    }
    pg_err(e)
}

/// Most passes of the rules one transaction makes (each reads what the previous one missed;
/// two or three in practice).
const MAX_PASSES: usize = 16;

/// Runs `body` on a [`DocBatch`] inside one transaction holding the database's counter row,
/// then writes its operations, the counters and the notification, and commits. `ids`: the
/// documents the batch will touch (read ahead in one query). A serialization failure or
/// deadlock runs the whole transaction again (`body` too), at most [`WRITE_ATTEMPTS`] times
/// with a short pause between. `body` may run more than once per transaction (see
/// [`PgBatch`]): only the last pass's result is kept.
///
/// Two round trips while the counter row is held when the read-ahead has everything the
/// rules ask for: `BEGIN`, the lock and the read-ahead are sent together (PostgreSQL runs them
/// in order, so the read-ahead sees every write committed before the lock was granted), then
/// the batch's statements and `COMMIT`.
pub(super) async fn write_tx<T>(
    pool: &Pool,
    db: &str,
    live: &super::Live,
    ids: Vec<String>,
    docs_read: &AtomicU64,
    mut body: impl FnMut(&mut DocBatch<PgBatch<'_>>) -> Result<T>,
) -> Result<(T, BatchSummary)> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|i| i.as_bytes().to_vec()).collect();
    let mut attempt = 1;
    loop {
        let mut tx = OpenTx(Some(pool.get().await.map_err(pool_err)?));
        let mut retry = false;
        let out = attempt_tx(
            &mut tx, db, live, &ids, &keys, docs_read, &mut retry, &mut body,
        )
        .await;
        if out.is_err() {
            // nothing of the transaction stays; a connection that cannot even roll back is
            // closed rather than pooled (dropping `tx` without `rollback`)
            let _ = tx.rollback().await;
        }
        match out {
            Err(e) if retry && attempt < WRITE_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "write transaction retried");
                tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// What one pass of the rules came to.
enum Pass<T> {
    /// Everything the rules asked for was read: the result and the operations.
    Done(T, Ops, BatchSummary, u64),
    /// Keys to read before the next pass.
    Needs(Needs),
    Failed(StorageError),
}

/// One synchronous pass of the rules over what the transaction has read.
fn run_pass<T>(
    reads: &Reads,
    first_seq: u64,
    body: &mut impl FnMut(&mut DocBatch<PgBatch<'_>>) -> Result<T>,
) -> Pass<T> {
    let needs = RefCell::new(Needs::default());
    let read = Cell::new(0);
    let batch = PgBatch {
        reads,
        needs: &needs,
        ops: Ops::default(),
        read: &read,
    };
    let mut st = DocBatch::new(batch, first_seq);
    let out = body(&mut st).and_then(|out| st.finish().map(|(b, s)| (out, b.ops, s)));
    let needs = needs.into_inner();
    if !needs.is_empty() {
        // decided on keys not read yet: read them and decide again
        return Pass::Needs(needs);
    }
    match out {
        Ok((out, ops, summary)) => Pass::Done(out, ops, summary, read.get()),
        Err(e) => Pass::Failed(e),
    }
}

/// Reads the keys a pass needed (inside the transaction, under the lock) into `reads`.
async fn read_needs(
    client: &Client,
    db: &str,
    needs: Needs,
    reads: &mut Reads,
    retry: &mut bool,
) -> Result<()> {
    if !needs.metas.is_empty() {
        let keys: Vec<Vec<u8>> = needs.metas.iter().map(|i| i.as_bytes().to_vec()).collect();
        let rows = client
            .query_typed(READ_METAS, &[(&db, Type::TEXT), (&keys, Type::BYTEA_ARRAY)])
            .await
            .map_err(|e| tx_err(e, retry))?;
        let mut found: HashMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        for id in needs.metas {
            let meta = match found.remove(id.as_bytes()) {
                Some(bytes) => Some(decode::<DocMeta>("document", &bytes)?),
                None => None,
            };
            reads.metas.insert(id, meta);
        }
    }
    if !needs.bodies.is_empty() {
        let (ids, revs): (Vec<Vec<u8>>, Vec<Vec<u8>>) = needs
            .bodies
            .iter()
            .map(|(i, r)| (i.as_bytes().to_vec(), r.as_bytes().to_vec()))
            .unzip();
        let rows = client
            .query_typed(
                super::views::BODIES,
                &[
                    (&db, Type::TEXT),
                    (&ids, Type::BYTEA_ARRAY),
                    (&revs, Type::BYTEA_ARRAY),
                ],
            )
            .await
            .map_err(|e| tx_err(e, retry))?;
        let mut found: HashMap<(Vec<u8>, Vec<u8>), Vec<u8>> = rows
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        for (id, rev) in needs.bodies {
            let body = match found.remove(&(id.as_bytes().to_vec(), rev.as_bytes().to_vec())) {
                Some(bytes) => Some(decode_body(&id, &rev, &bytes)?),
                None => None,
            };
            reads.bodies.insert((id, rev), body);
        }
    }
    if !needs.attachments.is_empty() {
        let digests: Vec<Vec<u8>> = needs
            .attachments
            .iter()
            .map(|d| d.as_bytes().to_vec())
            .collect();
        let rows = client
            .query_typed(
                "SELECT digest, length(data)::bigint FROM syncgate_attachments \
                 WHERE db = $1 AND digest = ANY($2)",
                &[(&db, Type::TEXT), (&digests, Type::BYTEA_ARRAY)],
            )
            .await
            .map_err(|e| tx_err(e, retry))?;
        let found: HashMap<Vec<u8>, i64> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        for d in needs.attachments {
            let len = found.get(d.as_bytes()).map(|l| *l as u64);
            reads.attachments.insert(d, len);
        }
    }
    for (kind, name, doc) in needs.grants {
        let row = client
            .query_opt(
                "SELECT grant_entry FROM syncgate_grants \
                 WHERE db = $1 AND kind = $2 AND name = $3 AND doc = $4",
                &[&db, &kind_code(kind), &name.as_bytes(), &doc.as_bytes()],
            )
            .await
            .map_err(|e| tx_err(e, retry))?;
        let grant = match row {
            Some(r) => Some(decode("access index entry", r.get(0))?),
            None => None,
        };
        reads.grants.insert((kind, name, doc), grant);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn attempt_tx<T>(
    tx: &mut OpenTx,
    db: &str,
    live: &super::Live,
    ids: &[String],
    keys: &[Vec<u8>],
    docs_read: &AtomicU64,
    retry: &mut bool,
    body: &mut impl FnMut(&mut DocBatch<PgBatch<'_>>) -> Result<T>,
) -> Result<(T, BatchSummary)> {
    let client = tx.client()?;
    let (lock, read) = async {
        let lock_st = client.prepare_cached(LOCK_COUNTER).await?;
        // `join3` polls in argument order, so the three are sent in this order
        let (begin, lock, read) = futures_util::future::join3(
            client.batch_execute("BEGIN"),
            client.query_one(&lock_st, &[&db]),
            client.query_typed(READ_METAS, &[(&db, Type::TEXT), (&keys, Type::BYTEA_ARRAY)]),
        )
        .await;
        begin?;
        Ok::<_, tokio_postgres::Error>((lock?, read?))
    }
    .await
    .map_err(|e| tx_err(e, retry))?;
    let last: i64 = lock.get(0);
    let mut reads = Reads {
        metas: ids.iter().map(|i| (i.clone(), None)).collect(),
        ..Default::default()
    };
    for r in read {
        let id = String::from_utf8(r.get::<_, Vec<u8>>(0))
            .map_err(|_| StorageError::Corrupt("document id is not UTF-8".into()))?;
        let meta: DocMeta = decode("document", r.get(1))?;
        reads.metas.insert(id, Some(meta));
    }
    let mut passes = 0;
    let (out, ops, summary, read) = loop {
        passes += 1;
        let needs = match run_pass(&reads, last as u64 + 1, body) {
            Pass::Done(out, ops, summary, read) => break (out, ops, summary, read),
            Pass::Failed(e) => return Err(e),
            Pass::Needs(_) if passes >= MAX_PASSES => {
                return Err(StorageError::Engine(
                    "a write batch kept asking for records it had not read".into(),
                ))
            }
            Pass::Needs(needs) => needs,
        };
        read_needs(client, db, needs, &mut reads, retry).await?;
    };
    docs_read.fetch_add(read, Ordering::Relaxed);
    let mut stmts = ops.statements(db);
    if summary.last_seq != last as u64 || summary.doc_delta != 0 {
        stmts.push(stmt(
            db,
            SET_COUNTERS,
            vec![p(summary.last_seq as i64), p(summary.doc_delta)],
        ));
    }
    if summary.last_seq != last as u64 && live.notifies {
        stmts.push(Stmt::new(
            NOTIFY,
            vec![
                p(CHANNEL.to_string()),
                p(format!("{} {db}", summary.last_seq)),
            ],
        ));
    }
    stmts.push(Stmt::new("COMMIT", Vec::new()));
    live.committing(summary.last_seq);
    match pipeline_raw(client, &stmts).await {
        Ok(()) => {
            // committed: the connection goes back to the pool
            tx.release();
            Ok((out, summary))
        }
        Err(e) => {
            live.abandoned(summary.last_seq);
            Err(tx_err(e, retry))
        }
    }
}

/// The metadata of a list of documents, one primary-key lookup per id (see
/// [`super::views::METAS`]); sent unprepared (`query_typed`, still one message).
const READ_METAS: &str = super::views::METAS;

/// Sends every statement before waiting for any answer (one round trip for the batch), in
/// order: PostgreSQL runs them in the order sent.
pub(super) async fn pipeline(tx: &Client, stmts: &[Stmt]) -> Result<()> {
    pipeline_raw(tx, stmts).await.map_err(pg_err)
}

/// [`pipeline`] with PostgreSQL's own error (the first statement that failed). A statement
/// after a failed one fails too (the transaction is aborted); a `COMMIT` after a failed
/// statement rolls back.
async fn pipeline_raw(tx: &Client, stmts: &[Stmt]) -> Result<(), tokio_postgres::Error> {
    let mut prepared = HashMap::new();
    for s in stmts.iter().filter(|s| s.types.is_none()) {
        if !prepared.contains_key(s.sql) {
            let st = tx.prepare_cached(s.sql).await?;
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
        .map(|(s, r)| {
            Some(match s.types {
                None => Box::pin(tx.execute(&prepared[s.sql], r)) as Exec<'_>,
                Some(types) => {
                    let typed = r.iter().copied().zip(types.iter().cloned());
                    Box::pin(async move {
                        let rows = tx.query_typed(s.sql, &typed.collect::<Vec<_>>()).await?;
                        Ok(rows.len() as u64)
                    }) as Exec<'_>
                }
            })
        })
        .collect();
    // polled in order on every wake, so the first poll sends them all, in order; the first
    // error (in statement order) is the one reported
    let mut first_err: Option<(usize, tokio_postgres::Error)> = None;
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(_)) => *slot = None,
                    Poll::Ready(Err(e)) => {
                        *slot = None;
                        if first_err.as_ref().is_none_or(|(at, _)| i < *at) {
                            first_err = Some((i, e));
                        }
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    match first_err {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A statement for [`pipeline`] whose parameters include the database name first.
pub(super) fn stmt(db: &str, sql: &'static str, mut params: Vec<Param>) -> Stmt {
    params.insert(0, p(db.to_string()));
    Stmt::new(sql, params)
}

#[cfg(test)]
mod tests {
    use super::retryable_state;

    #[test]
    fn serialization_failures_and_deadlocks_are_retried_nothing_else() {
        assert!(retryable_state("40001"));
        assert!(retryable_state("40P01"));
        // unique violation, other transaction rollbacks, connection and lock-timeout errors
        for code in [
            "23505", "40000", "40002", "40003", "08006", "55P03", "57014",
        ] {
            assert!(!retryable_state(code), "{code}");
        }
    }
}
