//! The PostgreSQL backend: every database a node serves lives in one PostgreSQL database,
//! which any number of syncgate nodes share.
//!
//! Tables (`schema`, created and migrated at open under an advisory lock) hold one row per
//! record the embedded store keeps under a key, keyed by the syncgate database name, so several
//! syncgate databases may share one PostgreSQL database. Records use the embedded store's
//! encodings. Writes run the backend-neutral rules ([`crate::rules::DocBatch`]) inside one
//! PostgreSQL transaction (`write`); concurrent writers of a node are combined into one
//! transaction ([`crate::combine`]).
//!
//! ## Sequences and the feed invariant
//!
//! Each database has one counter row (`syncgate_counters`: last sequence, live documents).
//! Every transaction that assigns sequences (documents, restamps, principals) first locks that
//! row (`SELECT … FOR UPDATE`), numbers its changes from it, and writes it back before
//! committing. The row lock serialises a database's writers across all nodes, so the
//! transaction that commits sequence S+1 starts only after the one that committed S has
//! released the lock by committing: sequences commit in order. A node shows a reader only a
//! committed counter value V ([`DatabaseStore::last_seq`]: its own commits once their writer calls
//! `durable`, as on the embedded store; others' from a
//! notification, or polled), and every change at or below V is committed before V is, so no
//! change can appear at or below a sequence some reader has already seen — no reader ever sees
//! S+1 before S, whichever nodes wrote them. Acknowledged = committed: [`DatabaseStore::durable`]
//! has nothing left to wait for once a write returned; it publishes the write's sequence to this
//! node's feeds (after the writer has updated its caches).
//!
//! Change views (`views`) use the embedded store's rule: an update does not delete the
//! document's old by-sequence row but marks it `superseded` by the new sequence in the same
//! transaction, and a view pinned at V shows a row at S only if S <= V < superseded. Each
//! page is one statement (its own snapshot); the rule makes the pages of one view agree.
//! Superseded rows are removed by compaction only (see its caveat in [`DatabaseStore::compact`]).
//!
//! ## Statements and round trips
//!
//! A write transaction takes two round trips while it holds the counter row: `BEGIN`, the lock
//! and the read-ahead of the batch's documents are sent together, then the batch's writes (one
//! statement per table and kind, rows from parallel arrays: the rules' operations coalesced
//! per row), the counters, `NOTIFY` and `COMMIT`. The rules are synchronous: they read only
//! what the transaction has read, and a batch that asks for a record not read yet (a parent's
//! body for attachment stubs, an attachment's length, an access-index entry) is decided again
//! once the transaction has read it (`write::PgBatch`). A transaction PostgreSQL aborts as a
//! serialization failure or deadlock (40001, 40P01) is run again from the start, a few times.
//!
//! ## Async
//!
//! Every call awaits PostgreSQL on the caller's runtime (no thread hand-off); a write
//! transaction runs in a task of its own, so a caller that goes away does not cut it short.
//! The pool's connections, the listener and the poller run on the backend's own small runtime
//! (`bridge`), so a store outlives the runtimes that call it.
//! Batch readers (`_bulk_get`, `_revs_diff`, `include_docs`) read metadata and bodies with one
//! statement per batch ([`DatabaseStore::doc_metas`], [`DatabaseStore::rev_bodies`]): one
//! primary-key lookup per key, however the planner sees the tables. `_local` writes are a read
//! and a compare-and-set, without a transaction.
//!
//! ## Waking feeds on other nodes
//!
//! The write transaction sends `NOTIFY syncgate_changes, '<seq> <db>'` (delivered at commit).
//! Each store keeps one connection outside the pool that `LISTEN`s and advances the cached
//! `last_seq` (and the watch channel feeds wait on) of every database it has open; after a
//! (re)connect it re-reads the counters, so nothing missed while disconnected stays missed.
//! With [`ChangeNotify::Poll`] (for engines without `LISTEN`), a task re-reads the counters of
//! its open databases every interval instead, and the store's write transactions send no
//! `NOTIFY` (`Live::notifies`: CockroachDB has no `pg_notify`).
//!
//! ## Errors
//!
//! A connection that cannot be made or is lost, a pool wait that times out, and a call
//! PostgreSQL does not answer within `bridge::CALL_TIMEOUT` (30 s; compaction is exempt) are
//! [`StorageError::Unavailable`] (503); anything else PostgreSQL refuses is
//! [`StorageError::Engine`]. Connections use a TCP user timeout and keepalives, so a server
//! that vanishes is noticed; the pool replaces closed connections, so a node recovers by
//! itself when PostgreSQL is back.
//!
//! Node-local caches: a handle records the access-index changes of its own commits in a
//! [`crate::grant_log::GrantLog`] (the principal caches above catch up by applying them, as on
//! the embedded store), and resets it whenever it learns of a sequence another node (or
//! handle) committed, so those caches reload users and grants changed elsewhere. A settings write (the sync function set through the admin API) moves
//! the database's `settings_version` in the counter row and notifies `settings <version>
//! <db>`; the listener (or the poll, which reads the counters anyway) publishes it on the
//! handle's settings watch ([`DatabaseStore::settings_changes`]), so the database above
//! reloads the setting — nothing is checked on the write path. TLS: `tls` (libpq's `sslmode`
//! and `sslrootcert`, with rustls). Not yet: collecting superseded rows during writes.

mod bridge;
mod db;
mod notify;
mod schema;
mod tls;
mod views;
mod write;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::watch;

use crate::{BoxFuture, DatabaseStore, GrantChange, Result, StorageError, StoreServer};
use bridge::{timed, Bridge};
pub use db::PgDatabase;

/// How a node learns of changes other nodes commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeNotify {
    /// `LISTEN`/`NOTIFY` (PostgreSQL).
    Listen,
    /// Re-read the counters every interval (engines without `LISTEN`).
    Poll(Duration),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://…` or `postgresql://…` (libpq URL parameters accepted).
    pub url: String,
    /// Most connections this store opens (the listener's not counted).
    pub pool_size: usize,
    pub notify: ChangeNotify,
}

/// How long a request waits for a connection (or to make one) before it is refused as
/// unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The notification channel every write notifies.
const CHANNEL: &str = "syncgate_changes";

/// The PostgreSQL [`StoreServer`].
pub struct PgStore {
    pool: Pool,
    live: Arc<LiveMap>,
    notify: ChangeNotify,
    /// Dropped with the store: ends its listener or poller.
    _stop: watch::Sender<()>,
}

/// The open database handles of a store, by name (what notifications advance).
#[derive(Default)]
pub(super) struct LiveMap(Mutex<HashMap<String, Vec<Weak<Live>>>>);

impl LiveMap {
    fn register(&self, name: &str, live: &Arc<Live>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let v = m.entry(name.to_string()).or_default();
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(live));
    }

    /// Names of the databases with an open handle.
    fn names(&self) -> Vec<String> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        m.keys().cloned().collect()
    }

    fn handles(&self, db: &str) -> Vec<Arc<Live>> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(db)
            .map(|v| v.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Another node (or this one) committed `seq` in `db`.
    fn advance(&self, db: &str, seq: u64) {
        for h in self.handles(db) {
            h.learnt(seq);
        }
    }

    /// `db`'s settings version is `version` (a node changed a setting).
    fn settings(&self, db: &str, version: u64) {
        for h in self.handles(db) {
            h.settings_moved(version, true);
        }
    }
}

/// One open database handle's view of the shared counter.
pub(super) struct Live {
    /// Last committed sequence this node knows of.
    last_seq: AtomicU64,
    notify: watch::Sender<u64>,
    /// The access index's recent changes made through this handle; a change learnt from
    /// elsewhere resets it (its changes are not known here).
    pub(super) grants: crate::grant_log::GrantLog,
    /// Last sequences of this handle's transactions being committed: a notification (or
    /// poll) that reports one of them before the writer publishes it is not another node's.
    own: Mutex<std::collections::BTreeSet<u64>>,
    /// The database's settings version (`syncgate_counters.settings_version`) this handle
    /// knows of, and the watch that tells the database above of settings changed elsewhere.
    settings_version: AtomicU64,
    settings: watch::Sender<u64>,
    /// Write transactions send `NOTIFY` (`ChangeNotify::Listen`); with `Poll` they send
    /// nothing (engines without `pg_notify`, such as CockroachDB, would refuse the write).
    pub(super) notifies: bool,
}

impl Live {
    fn new(seq: u64, settings_version: u64, notifies: bool) -> Live {
        Live {
            notifies,
            last_seq: AtomicU64::new(seq),
            notify: watch::channel(seq).0,
            grants: Default::default(),
            own: Mutex::new(Default::default()),
            settings_version: AtomicU64::new(settings_version),
            settings: watch::channel(settings_version).0,
        }
    }

    /// The settings version is now `version`: `notify` (a change made elsewhere) wakes the
    /// watchers; this handle's own writes only record it (their notification may still arrive
    /// first and wake them: the reload then finds what is in use).
    pub(super) fn settings_moved(&self, version: u64, notify: bool) {
        if self.settings_version.fetch_max(version, Ordering::SeqCst) < version && notify {
            self.settings.send_replace(version);
        }
    }

    /// This handle is about to commit a transaction ending at `seq`.
    pub(super) fn committing(&self, seq: u64) {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
    }

    /// This handle committed a transaction ending at `seq` (and maybe moved the access index).
    /// The sequence is published by [`Live::publish`] when the writer calls `durable`, as on
    /// the embedded store: by then the caller has updated what it caches about the write (a
    /// user's identity after a principal write), so a feed woken by it reads the new state.
    pub(super) fn committed(&self, seq: u64, grant_changes: Option<Vec<GrantChange>>) {
        if let Some(changes) = grant_changes {
            self.grants.record_at(seq, changes);
        }
    }

    /// A commit ending at `seq` failed: nothing of it is visible (another node may commit the
    /// same sequence, which must then be learnt).
    pub(super) fn abandoned(&self, seq: u64) {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }

    /// The writer of everything up to `seq` made it durable: publish it to this node's feeds.
    pub(super) fn publish(&self, seq: u64) {
        self.advance(seq, false);
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| *s > seq);
    }

    /// A notification or poll reported `seq` committed. This handle's own commits are
    /// published by their writers ([`Live::publish`]), not here.
    fn learnt(&self, seq: u64) {
        let own = self
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&seq);
        if !own {
            self.advance(seq, true);
        }
    }

    /// Publishes a committed sequence. A change made elsewhere may have moved grants: the
    /// grants version moves too, so computed channel sets are recomputed.
    fn advance(&self, seq: u64, remote: bool) {
        if self.last_seq.fetch_max(seq, Ordering::SeqCst) < seq {
            if remote {
                self.grants.reset();
            }
            self.notify.send_if_modified(|v| {
                let changed = *v < seq;
                *v = (*v).max(seq);
                changed
            });
        }
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema and starts watching for changes.
    pub async fn open(options: &PgOptions) -> Result<PgStore> {
        let bridge = Bridge::new()?;
        let url = tls::split_url(&options.url)
            .map_err(|e| StorageError::BadRequest(format!("PostgreSQL URL: {e}")))?;
        let tls = tls::connector(&url)
            .map_err(|e| StorageError::Incompatible(format!("PostgreSQL TLS: {e}")))?;
        let mut config = tokio_postgres::Config::from_str(&url.rest).map_err(|e| {
            StorageError::BadRequest(format!("PostgreSQL URL: {}", redact(&e.to_string())))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // a server or network that vanishes is noticed (sent data unacknowledged, idle
        // connections probed), so pooled connections and the listener do not wait forever
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(10));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            // libpq's default (2 h), i.e. not set in the URL
            config
                .keepalives_idle(Duration::from_secs(10))
                .keepalives_interval(Duration::from_secs(2))
                .keepalives_retries(3);
        }
        let manager = Manager::from_connect(
            config.clone(),
            bridge.connector(tls.clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Engine(format!("PostgreSQL pool: {e}")))?;
        timed(schema::migrate(&pool)).await.map_err(|e| match e {
            // a certificate not trusted, a server without TLS: the URL is wrong, not the
            // network (at startup: exit 2)
            StorageError::Unavailable(m) if m.starts_with(TLS_FAILURE) => {
                StorageError::Incompatible(format!(
                    "{m} (check sslmode and sslrootcert in the server URL)"
                ))
            }
            e => e,
        })?;
        let live = Arc::new(LiveMap::default());
        let (stop, stopped) = watch::channel(());
        bridge.spawn(notify::watch_changes(
            config,
            tls,
            pool.clone(),
            live.clone(),
            options.notify,
            stopped,
        ));
        Ok(PgStore {
            pool,
            live,
            notify: options.notify,
            _stop: stop,
        })
    }

    /// Opens one database (see [`StoreServer::open_database`]).
    pub async fn database(&self, name: &str) -> Result<Arc<PgDatabase>> {
        let db = name.to_string();
        let last = timed(async {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO syncgate_counters (db, last_seq, doc_count) VALUES ($1, 0, 0) \
                 ON CONFLICT (db) DO NOTHING",
                &[&db],
            )
            .await
            .map_err(pg_err)?;
            let row = c
                .query_one(
                    "SELECT last_seq, settings_version FROM syncgate_counters WHERE db = $1",
                    &[&db],
                )
                .await
                .map_err(pg_err)?;
            Ok((row.get::<_, i64>(0), row.get::<_, i64>(1)))
        })
        .await?;
        let live = Arc::new(Live::new(
            last.0 as u64,
            last.1 as u64,
            self.notify == ChangeNotify::Listen,
        ));
        self.live.register(name, &live);
        Ok(Arc::new(PgDatabase::new(name, self.pool.clone(), live)))
    }
}

impl StoreServer for PgStore {
    fn open_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn DatabaseStore>>> {
        Box::pin(async move { Ok(self.database(name).await? as Arc<dyn DatabaseStore>) })
    }

    fn create_database<'a>(&'a self, name: &'a str, config: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(timed(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            c.execute(
                "INSERT INTO syncgate_databases (name, config) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config",
                &[&name, &config],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        }))
    }

    fn delete_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(timed(async move {
            let mut c = self.pool.get().await.map_err(pool_err)?;
            let tx = c.transaction().await.map_err(pg_err)?;
            for table in schema::DB_TABLES {
                tx.execute(&format!("DELETE FROM {table} WHERE db = $1"), &[&name])
                    .await
                    .map_err(pg_err)?;
            }
            tx.execute("DELETE FROM syncgate_databases WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        }))
    }

    fn list_databases(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        Box::pin(timed(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            let rows = c
                .query(
                    "SELECT name, config FROM syncgate_databases ORDER BY name COLLATE \"C\"",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        }))
    }

    /// The first node to store a value wins (`ON CONFLICT DO NOTHING`); everyone reads it back.
    fn server_value<'a>(
        &'a self,
        key: &'a str,
        init: &'a mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            if let Some(v) = self.server_value_read(key, None).await? {
                return Ok(v);
            }
            self.server_value_read(key, Some(init()))
                .await?
                .ok_or_else(|| StorageError::Engine(format!("server value \"{key}\" not stored")))
        })
    }

    /// Committed is durable: nothing to flush.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

impl PgStore {
    /// Reads a server value, storing `fresh` first unless one is stored.
    async fn server_value_read(
        &self,
        key: &str,
        fresh: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        timed(async move {
            let c = self.pool.get().await.map_err(pool_err)?;
            if let Some(v) = fresh {
                c.execute(
                    "INSERT INTO syncgate_server_values (key, value) VALUES ($1, $2) \
                         ON CONFLICT (key) DO NOTHING",
                    &[&key, &v],
                )
                .await
                .map_err(pg_err)?;
            }
            let row = c
                .query_opt(
                    "SELECT value FROM syncgate_server_values WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(pg_err)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
        .await
    }
}

/// Checks a PostgreSQL URL (for config validation); the error never repeats the password.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    let url = tls::split_url(url).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
    tokio_postgres::Config::from_str(&url.rest)
        .map(|_| ())
        .map_err(|e| format!("not a valid PostgreSQL URL: {}", redact(&e.to_string())))
}

/// How a failed TLS handshake (or a server refusing TLS) starts its error text.
const TLS_FAILURE: &str = "PostgreSQL TLS: ";

/// A PostgreSQL error as a storage error: connection trouble is `Unavailable`, the rest
/// `Engine`.
pub(super) fn pg_err(e: tokio_postgres::Error) -> StorageError {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // connection exceptions, operator intervention (shutdown), too many connections
        if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
            return StorageError::Unavailable(format!("PostgreSQL: {}", db.message()));
        }
        return StorageError::Engine(format!("PostgreSQL: {}", db.message()));
    }
    let io = e
        .source()
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    let text = e.to_string();
    if text.starts_with("error performing TLS handshake") {
        // the cause says why (an untrusted certificate, a server without TLS)
        let mut why = text;
        let mut cause = e.source();
        while let Some(c) = cause {
            why = format!("{why}: {c}");
            cause = c.source();
        }
        return StorageError::Unavailable(format!("{TLS_FAILURE}{}", redact(&why)));
    }
    if e.is_closed() || io || text.contains("connect") || text.contains("timeout") {
        StorageError::Unavailable(format!("PostgreSQL: {text}"))
    } else {
        StorageError::Engine(format!("PostgreSQL: {text}"))
    }
}

pub(super) fn pool_err(e: PoolError) -> StorageError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            StorageError::Unavailable("PostgreSQL: no connection available".into())
        }
        other => StorageError::Engine(format!("PostgreSQL pool: {other}")),
    }
}

/// Error text with anything that looks like a URL password removed.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://…{}", &text[..s], &text[a..]),
        _ => text.to_string(),
    }
}

/// A principal kind as stored.
pub(super) fn kind_code(kind: crate::PrincipalKind) -> i16 {
    match kind {
        crate::PrincipalKind::User => 0,
        crate::PrincipalKind::Role => 1,
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StorageError::Corrupt(format!("cannot encode {what}: {e}")))
}

pub(super) fn encode_body(id: &str, rev: &str, body: &crate::StoredBody) -> Result<Vec<u8>> {
    body.encode().map_err(|e| {
        StorageError::Corrupt(format!(
            "cannot encode the body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

pub(super) fn decode_body(id: &str, rev: &str, bytes: &[u8]) -> Result<crate::StoredBody> {
    crate::StoredBody::decode(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

/// A stored key that must be text.
pub(super) fn utf8(what: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StorageError::Corrupt(format!("{what} is not UTF-8")))
}
