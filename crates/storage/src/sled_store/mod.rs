//! The sled backend.
//!
//! Key layout inside one database's sled tree (`db/<name>`):
//!
//! | prefix | key rest | value |
//! |---|---|---|
//! | `d` | doc id | [`DocMeta`] (binary; JSON before), and one revision's body inline (see below) |
//! | `b` | u32 id length, id, rev | revision body ([`StoredBody`]: user JSON as sent, attachment metadata) of a revision not inline in `d` |
//! | `s` | u64 BE sequence | [`ChangeEntry`] (binary, `keys::encode_change`; JSON before) |
//! | `c` | channel, `\0`, u64 BE sequence | empty: the entry at that sequence is or was in the channel |
//! | `l` | local doc id | [`LocalDoc`] JSON |
//! | `a` | digest | attachment bytes (once per digest) |
//! | `u`, `r` | user / role name | principal JSON (opaque here) |
//! | `x` | session key | session JSON (opaque here) |
//! | `o` | login key | OpenID Connect login transaction JSON (opaque here) |
//! | `m` | counter name | u64 BE (`last_seq`, `doc_count`) |
//! | `g` | u64 BE next sequence, u64 BE superseded sequence | channel history of the superseded entry (JSON) |
//! | `p` | principal kind, name, `\0`, doc id | [`DocGrant`] JSON (the access index) |
//! | `k` | setting name | opaque bytes ([`DatabaseStore::put_setting`]) |
//!
//! **Inline bodies.** A `d` record (second format: byte `1`, the length of the metadata in
//! binary, that encoding, then optionally one revision's id and body; see `keys::split_doc`
//! and `keys::encode_meta`) holds the body
//! of one revision itself — the winner's, when the batch that made it the winner wrote it —
//! so a new document is two keys (`d`, `s`) and not three: sled 0.34's cost is per key
//! (a descent, a node copy, a log fragment, epoch garbage; a leaf splits every 16 entries and
//! writes both halves out), which made the third key about a sixth of a bulk write's CPU.
//! Every other body (older revisions until compaction, losing branches) has its `b` key; an
//! update moves the body that was inline to its `b` key. A body is in exactly one place, and
//! `SledDatabase::load_body` looks in the record first. Records of the first format (a JSON
//! object, every body under `b`) are still read and are rewritten in the second format when
//! the document is next written; any other first byte is `Corrupt` naming the document. The
//! same goes for `s` entries: binary (`keys::encode_change`), the first format (JSON) still
//! read.
//!
//! Every write is one `apply_batch` (atomic across keys, so a crash never leaves half a
//! document), made under the database's write mutex so sequences are assigned and committed in
//! order (a changes reader never sees seq N+1 before N). Durability is a group commit shared by
//! all databases: the first waiter flushes for everyone written before it started.
//!
//! What a batch writes is decided by the backend-neutral rules ([`crate::rules::DocBatch`]);
//! this module only turns their operations into the keys above ([`write`]). Concurrent
//! document writers are combined into one batch ([`crate::combine`]): each sled 0.34
//! `apply_batch` writes the log buffer out synchronously, so one batch per request made that
//! cost per PUT.
//!
//! Submodules: [`keys`] (layout and encodings), [`write`] (the write batch), [`commit`]
//! (group commit, publishing durable sequences), [`views`] (change views, collecting
//! superseded entries), [`compact`].
//!
//! ## Change views: every feed reads one consistent state
//!
//! Feeds show only durable sequences (`durable_seq`, advanced after the group commit), but a
//! batch is applied — visible to sled readers — before it is durable. If an update removed the
//! document's old `s` entry in its batch, a feed reading between the apply and the flush would
//! find the old entry gone and the new one above its bound: the document at neither. And a
//! sled 0.34 range iterator is no snapshot: each `next()` takes sled's concurrency-control
//! read lock (so it sees a batch whole or not at all) and then continues from the last key
//! returned, over a copy of the leaf node it last read; batches applied between two `next()`
//! calls are seen in part (keys after the cursor) or not at all (keys in the copied node).
//!
//! So an update does not remove the old entry: the batch rewrites it unchanged plus
//! `superseded: next` (the document's sequence at the end of the batch) and records `g`,
//! next, old. A view ([`DatabaseStore::changes_view`]) is pinned at the durable sequence V
//! and shows an entry at S only if S <= V < superseded ([`ChangeEntry::visible_at`]). For
//! each document exactly one of its sequences satisfies that, and the iterator's partial
//! views cannot change the answer:
//! - the entry the view shows (S <= V < next) exists for the whole read: it was applied
//!   before V became durable, and is removed only once no open view can show it (below);
//! - every mark with next <= V was applied before V was published, so every read made after
//!   the view opened sees it; a mark with next > V does not change visibility at V;
//! - entries above V (not yet durable) are never shown, as before.
//!
//! Superseded entries are collected by later write batches (and by compaction): the `g`
//! records with next <= the oldest open view's sequence (or the durable sequence when no view
//! is open) have their `s` entry, `c` keys and `g` record removed. A view registers under the
//! same lock that computes that horizon, so a view opened later has V >= the horizon and
//! would not show a collected entry anyway. Within one batch a document written twice just
//! replaces the entry of its first write (no view stops inside a batch: durable sequences are
//! batch ends). Views live for one response; a live feed opens one per batch.

mod commit;
mod compact;
mod keys;
mod views;
mod write;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sled::Batch;
use tokio::sync::watch;

use crate::combine::{WriteCombiner, WriteResult};
use crate::model::*;
use crate::rules::{check_local_delete, next_local_rev};
use crate::{
    ready, BoxFuture, BuildRecord, DatabaseStore, MetaWithBody, PrincipalKind, Result,
    StorageError, StoreServer, Ticket,
};
use commit::GroupCommit;
use keys::*;

const DB_TREE_PREFIX: &str = "db/";
const REGISTRY_TREE: &str = "registry";
const META_TREE: &str = "meta";

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Engine(e.to_string())
    }
}

/// The whole embedded store: one sled database holding every syncgate database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    registry: sled::Tree,
    commit: Arc<GroupCommit>,
}

/// How the embedded store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledOptions {
    /// Bound of sled's page cache in bytes (the config's `cache_mb`). sled counts cached
    /// pages by their serialized size and evicts beyond it. It does not bound sled's log
    /// buffers (512 KiB per sealed write) nor what the allocator keeps: docs/benchmarks.md,
    /// "Memory and disk".
    pub cache_bytes: u64,
}

/// The default page cache bound, in MiB (measured: docs/benchmarks.md, "Memory and disk").
pub const DEFAULT_CACHE_MB: u64 = 16;

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_bytes: DEFAULT_CACHE_MB * 1024 * 1024,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `path` with the default options.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, SledOptions::default())
    }

    /// Opens (creating if needed) the store in `path`.
    pub fn open_with(path: &Path, options: SledOptions) -> Result<Store> {
        std::fs::create_dir_all(path).map_err(|e| StorageError::from(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_bytes)
            .open()?;
        let registry = db.open_tree(REGISTRY_TREE)?;
        Ok(Store {
            db,
            registry,
            commit: Arc::new(GroupCommit::new()),
        })
    }

    /// Opens one database's keyspace.
    pub fn database(&self, name: &str) -> Result<Arc<SledDatabase>> {
        let tree = self.db.open_tree(format!("{DB_TREE_PREFIX}{name}"))?;
        let last_seq = read_u64(&tree, META_LAST_SEQ)?;
        let (tx, _) = watch::channel(last_seq);
        Ok(Arc::new_cyclic(|me| SledDatabase {
            me: me.clone(),
            name: name.to_string(),
            db: self.db.clone(),
            tree,
            commit: self.commit.clone(),
            write_lock: Mutex::new(()),
            combiner: WriteCombiner::default(),
            assigned_seq: AtomicU64::new(last_seq),
            durable_seq: AtomicU64::new(last_seq),
            unpublished: Mutex::new(VecDeque::new()),
            notify: tx,
            views: Mutex::new(BTreeMap::new()),
            docs_read: AtomicU64::new(0),
            grants: crate::grant_log::GrantLog::default(),
        }))
    }
}

impl StoreServer for Store {
    fn open_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn DatabaseStore>>> {
        ready(self.database(name).map(|d| d as Arc<dyn DatabaseStore>))
    }

    fn create_database<'a>(&'a self, name: &'a str, config: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.registry.insert(name.as_bytes(), config)?;
            self.db.flush()?;
            Ok(())
        })())
    }

    fn delete_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.db.drop_tree(format!("{DB_TREE_PREFIX}{name}"))?;
            self.registry.remove(name.as_bytes())?;
            self.db.flush()?;
            Ok(())
        })())
    }

    fn list_databases(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        ready(
            self.registry
                .iter()
                .map(|r| {
                    let (k, v) = r?;
                    Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
                })
                .collect(),
        )
    }

    /// Concurrent first uses agree on one value (compare-and-swap).
    fn server_value<'a>(
        &'a self,
        key: &'a str,
        init: &'a mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> BoxFuture<'a, Result<Vec<u8>>> {
        ready(self.server_value_now(key, init))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl Store {
    fn server_value_now(
        &self,
        key: &str,
        init: &mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> Result<Vec<u8>> {
        let meta = self.db.open_tree(META_TREE)?;
        if let Some(v) = meta.get(key)? {
            return Ok(v.to_vec());
        }
        let fresh = init();
        match meta.compare_and_swap(key, None as Option<&[u8]>, Some(fresh.as_slice()))? {
            Ok(()) => {
                meta.flush()?;
                Ok(fresh)
            }
            Err(e) => Ok(e.current.map(|v| v.to_vec()).unwrap_or(fresh)),
        }
    }
}

/// One database in the sled store.
pub struct SledDatabase {
    /// This handle (what compaction moves to a blocking thread).
    me: std::sync::Weak<SledDatabase>,
    name: String,
    db: sled::Db,
    tree: sled::Tree,
    commit: Arc<GroupCommit>,
    /// Serializes writers so sequences are committed in the order they are assigned.
    write_lock: Mutex<()>,
    /// Document writers waiting to be combined into the next batch.
    combiner: WriteCombiner,
    /// Last sequence assigned to an applied batch (the next write takes the one after).
    assigned_seq: AtomicU64,
    /// Last sequence whose batch is on disk: what readers of the feed may see. A change is
    /// never shown before it is durable, so a client can never hold a sequence that a crash
    /// takes back (and that a later write would then reuse).
    durable_seq: AtomicU64,
    /// Batches that moved the sequence and are not yet known durable: (ticket, last seq), in
    /// ticket order.
    unpublished: Mutex<VecDeque<(Ticket, u64)>>,
    /// Publishes `durable_seq`: wakes changes feeds once a commit is on disk.
    notify: watch::Sender<u64>,
    /// Open change views by sequence (how many at each): superseded entries a view may still
    /// show are kept until it closes.
    views: Mutex<BTreeMap<u64, usize>>,
    docs_read: AtomicU64,
    /// The access index's version (bumped after every batch that changed it) and its recent
    /// changes.
    grants: crate::grant_log::GrantLog,
}

impl SledDatabase {
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        match self.tree.get(doc_key(id))? {
            Some(v) => {
                self.docs_read.fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode_doc(id, &v)?))
            }
            None => Ok(None),
        }
    }

    /// A document's metadata and its inline body (one read of its record).
    fn load_meta_with_body(&self, id: &str) -> Result<Option<MetaWithBody>> {
        let Some(v) = self.load_doc_record(id)? else {
            return Ok(None);
        };
        self.docs_read.fetch_add(1, Ordering::Relaxed);
        let meta = decode_doc(id, &v)?;
        let body = match split_doc(id, &v)?.inline {
            Some((rev, body)) => Some((rev.to_string(), decode_body(id, rev, body)?)),
            None => None,
        };
        Ok(Some((meta, body)))
    }

    /// The stored `d` record of a document, undecoded.
    fn load_doc_record(&self, id: &str) -> Result<Option<sled::IVec>> {
        Ok(self.tree.get(doc_key(id))?)
    }

    /// A revision's body: inline in the document's record, or under its `b` key.
    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        if let Some(v) = self.load_doc_record(id)? {
            if let Some((r, body)) = split_doc(id, &v)?.inline {
                if r == rev {
                    self.docs_read.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(decode_body(id, rev, body)?));
                }
            }
        }
        match self.tree.get(body_key(id, rev))? {
            Some(v) => {
                self.docs_read.fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode_body(id, rev, &v)?))
            }
            None => Ok(None),
        }
    }

    fn scan(&self, prefix: u8) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> + '_ {
        self.tree
            .scan_prefix([prefix])
            .map(|r| r.map_err(StorageError::from))
    }
}

/// The embedded store's operations, synchronous: sled answers at once, so the
/// [`DatabaseStore`] methods run these and return a completed future.
pub(crate) trait SledOps {
    fn doc_meta(&self, id: &str) -> Result<Option<DocMeta>>;
    fn rev_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>>;
    fn write_docs(&self, writes: Vec<DocWrite>) -> Result<(Vec<Result<WriteOutcome>>, Ticket)>;
    fn doc_count(&self) -> Result<u64>;
    fn docs_from(
        &self,
        start: &str,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<(String, DocMeta)>> + '_>;
    fn attachment(&self, digest: &str) -> Result<Option<Vec<u8>>>;
    fn get_local(&self, id: &str) -> Result<Option<LocalDoc>>;
    fn put_local(
        &self,
        id: &str,
        rev: Option<&str>,
        body: Box<serde_json::value::RawValue>,
    ) -> Result<(String, Ticket)>;
    fn delete_local(&self, id: &str, rev: Option<&str>) -> Result<Ticket>;
    fn get_principal(&self, kind: PrincipalKind, name: &str) -> Result<Option<Vec<u8>>>;
    fn put_principal(
        &self,
        kind: PrincipalKind,
        name: &str,
        build: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<(u64, Ticket)>;
    fn put_principal_if(
        &self,
        kind: PrincipalKind,
        name: &str,
        expected: Option<&[u8]>,
        build: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<(u64, Ticket)>>;
    fn delete_principal(&self, kind: PrincipalKind, name: &str) -> Result<Ticket>;
    fn restamp_docs(&self, docs: Vec<Restamp>) -> Result<(Vec<Option<u64>>, Ticket)>;
    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn raise_seq(&self, seq: u64) -> Result<Ticket>;
    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<Ticket>;
    fn doc_grants(&self, kind: PrincipalKind, name: &str) -> Result<Vec<(String, DocGrant)>>;
    fn list_principals(&self, kind: PrincipalKind) -> Result<Vec<String>>;
    fn get_session(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn put_session(&self, key: &str, value: Vec<u8>) -> Result<Ticket>;
    fn delete_sessions(&self, keys: &[String]) -> Result<Ticket>;
    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>>;
    fn put_login(&self, key: &str, value: Vec<u8>) -> Result<Ticket>;
    fn take_login(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn list_logins(&self) -> Result<Vec<(String, Vec<u8>)>>;
    fn delete_logins(&self, keys: &[String]) -> Result<Ticket>;
}

impl SledOps for SledDatabase {
    fn doc_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        self.load_meta(id)
    }

    fn rev_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        self.load_body(id, rev)
    }

    fn write_docs(&self, writes: Vec<DocWrite>) -> Result<(Vec<Result<WriteOutcome>>, Ticket)> {
        let (mut results, ticket) = self.apply_writes(vec![writes])?;
        Ok((results.pop().unwrap_or_default(), ticket))
    }

    fn doc_count(&self) -> Result<u64> {
        read_u64(&self.tree, META_DOC_COUNT)
    }

    fn docs_from(
        &self,
        start: &str,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<(String, DocMeta)>> + '_> {
        let decode_row = |r: sled::Result<(sled::IVec, sled::IVec)>| -> Result<(String, DocMeta)> {
            let (k, v) = r?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let meta = decode_doc(&id, &v)?;
            Ok((id, meta))
        };
        if descending {
            let mut end = doc_key(start);
            if start.is_empty() {
                end = vec![b'e'];
            } else {
                end.push(0); // inclusive of `start`
            }
            Box::new(self.tree.range(b"d".to_vec()..end).rev().map(decode_row))
        } else {
            Box::new(
                self.tree
                    .range(doc_key(start)..b"e".to_vec())
                    .map(decode_row),
            )
        }
    }

    fn attachment(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(b'a', digest))?.map(|v| v.to_vec()))
    }

    fn get_local(&self, id: &str) -> Result<Option<LocalDoc>> {
        match self.tree.get(prefixed(b'l', id))? {
            Some(v) => Ok(Some(decode("local document", &v)?)),
            None => Ok(None),
        }
    }

    fn put_local(
        &self,
        id: &str,
        rev: Option<&str>,
        body: Box<serde_json::value::RawValue>,
    ) -> Result<(String, Ticket)> {
        let _guard = self.lock();
        let current = SledOps::get_local(self, id)?;
        let doc = LocalDoc {
            rev: next_local_rev(current.as_ref(), rev)?,
            body,
        };
        let mut batch = Batch::default();
        batch.insert(prefixed(b'l', id), encode("local document", &doc)?);
        let ticket = self.finish(batch, self.assigned_seq(), 0)?;
        Ok((doc.rev, ticket))
    }

    fn delete_local(&self, id: &str, rev: Option<&str>) -> Result<Ticket> {
        let _guard = self.lock();
        check_local_delete(SledOps::get_local(self, id)?.as_ref(), rev)?;
        let mut batch = Batch::default();
        batch.remove(prefixed(b'l', id));
        self.finish(batch, self.assigned_seq(), 0)
    }

    fn get_principal(&self, kind: PrincipalKind, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(prefixed(principal_prefix(kind), name))?
            .map(|v| v.to_vec()))
    }

    fn put_principal(
        &self,
        kind: PrincipalKind,
        name: &str,
        build: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<(u64, Ticket)> {
        let _guard = self.lock();
        let seq = self.assigned_seq() + 1;
        let record = build(seq).map_err(|e| {
            StorageError::Corrupt(format!(
                "cannot encode principal \"{}\": {e}",
                crate::revtree::truncate(name, 100)
            ))
        })?;
        let mut batch = Batch::default();
        batch.insert(prefixed(principal_prefix(kind), name), record);
        let ticket = self.finish(batch, seq, 0)?;
        Ok((seq, ticket))
    }

    fn put_principal_if(
        &self,
        kind: PrincipalKind,
        name: &str,
        expected: Option<&[u8]>,
        build: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
    ) -> Result<Option<(u64, Ticket)>> {
        let _guard = self.lock();
        let key = prefixed(principal_prefix(kind), name);
        if self.tree.get(&key)?.as_deref() != expected {
            return Ok(None);
        }
        let seq = self.assigned_seq() + 1;
        let record = build(seq).map_err(|e| {
            StorageError::Corrupt(format!(
                "cannot encode principal \"{}\": {e}",
                crate::revtree::truncate(name, 100)
            ))
        })?;
        let mut batch = Batch::default();
        batch.insert(key, record);
        let ticket = self.finish(batch, seq, 0)?;
        Ok(Some((seq, ticket)))
    }

    fn delete_principal(&self, kind: PrincipalKind, name: &str) -> Result<Ticket> {
        let _guard = self.lock();
        let mut batch = Batch::default();
        batch.remove(prefixed(principal_prefix(kind), name));
        let seq = self.assigned_seq() + 1;
        self.finish(batch, seq, 0)
    }

    fn restamp_docs(&self, docs: Vec<Restamp>) -> Result<(Vec<Option<u64>>, Ticket)> {
        self.apply_restamps(docs)
    }

    fn get_setting(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(b'k', key))?.map(|v| v.to_vec()))
    }

    fn raise_seq(&self, seq: u64) -> Result<Ticket> {
        let _guard = self.lock();
        let last = self.assigned_seq().max(seq);
        self.finish(Batch::default(), last, 0)
    }

    fn put_setting(&self, key: &str, value: Option<&[u8]>) -> Result<Ticket> {
        match value {
            Some(v) => self.tree.insert(prefixed(b'k', key), v)?,
            None => self.tree.remove(prefixed(b'k', key))?,
        };
        Ok(self.commit.ticket())
    }

    fn doc_grants(&self, kind: PrincipalKind, name: &str) -> Result<Vec<(String, DocGrant)>> {
        let prefix = grant_prefix(kind, name);
        self.tree
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, v) = r?;
                let doc = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let g: DocGrant = decode("access index entry", &v)?;
                Ok((doc, g))
            })
            .collect()
    }

    fn list_principals(&self, kind: PrincipalKind) -> Result<Vec<String>> {
        self.scan(principal_prefix(kind))
            .map(|r| r.map(|(k, _)| String::from_utf8_lossy(&k[1..]).into_owned()))
            .collect()
    }

    fn get_session(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(prefixed(b'x', key))?.map(|v| v.to_vec()))
    }

    fn put_session(&self, key: &str, value: Vec<u8>) -> Result<Ticket> {
        self.tree.insert(prefixed(b'x', key), value)?;
        Ok(self.commit.ticket())
    }

    fn delete_sessions(&self, keys: &[String]) -> Result<Ticket> {
        let mut batch = Batch::default();
        for k in keys {
            batch.remove(prefixed(b'x', k));
        }
        self.tree.apply_batch(batch)?;
        Ok(self.commit.ticket())
    }

    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan(b'x')
            .map(|r| r.map(|(k, v)| (String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec())))
            .collect()
    }

    fn put_login(&self, key: &str, value: Vec<u8>) -> Result<Ticket> {
        self.tree.insert(prefixed(b'o', key), value)?;
        Ok(self.commit.ticket())
    }

    fn take_login(&self, key: &str) -> Result<Option<Vec<u8>>> {
        // sled's remove is atomic: one caller gets the old value, the others None
        Ok(self.tree.remove(prefixed(b'o', key))?.map(|v| v.to_vec()))
    }

    fn list_logins(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.scan(b'o')
            .map(|r| r.map(|(k, v)| (String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec())))
            .collect()
    }

    fn delete_logins(&self, keys: &[String]) -> Result<Ticket> {
        let mut batch = Batch::default();
        for k in keys {
            batch.remove(prefixed(b'o', k));
        }
        self.tree.apply_batch(batch)?;
        Ok(self.commit.ticket())
    }
}

impl DatabaseStore for SledDatabase {
    fn name(&self) -> &str {
        &self.name
    }

    fn doc_meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DocMeta>>> {
        ready(SledOps::doc_meta(self, id))
    }

    fn rev_body<'a>(
        &'a self,
        id: &'a str,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredBody>>> {
        ready(SledOps::rev_body(self, id, rev))
    }

    fn doc_metas<'a>(&'a self, ids: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<DocMeta>>>> {
        ready(ids.iter().map(|id| SledOps::doc_meta(self, id)).collect())
    }

    fn rev_bodies<'a>(
        &'a self,
        revs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredBody>>>> {
        ready(
            revs.iter()
                .map(|(id, rev)| SledOps::rev_body(self, id, rev))
                .collect(),
        )
    }

    /// One `d` record per document: its tree and its inline body.
    fn doc_metas_with_bodies<'a>(
        &'a self,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<MetaWithBody>>>> {
        ready(ids.iter().map(|id| self.load_meta_with_body(id)).collect())
    }

    fn write_docs(&self, writes: Vec<DocWrite>) -> BoxFuture<'_, WriteResult> {
        ready(SledOps::write_docs(self, writes))
    }

    fn write_docs_shared(&self, writes: Vec<DocWrite>) -> BoxFuture<'_, WriteResult> {
        Box::pin(
            self.combiner
                .write(writes, |sets| std::future::ready(self.apply_writes(sets))),
        )
    }

    fn doc_count(&self) -> BoxFuture<'_, Result<u64>> {
        ready(SledOps::doc_count(self))
    }

    fn docs_page<'a>(
        &'a self,
        start: &'a str,
        inclusive: bool,
        descending: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, DocMeta)>>> {
        let skip = |r: &Result<(String, DocMeta)>| {
            !inclusive && r.as_ref().is_ok_and(|(id, _)| id == start)
        };
        ready(
            SledOps::docs_from(self, start, descending)
                .skip_while(skip)
                .take(limit)
                .collect(),
        )
    }

    fn last_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    fn changes_view(&self) -> Box<dyn crate::ChangesView + '_> {
        Box::new(self.open_view())
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn doc_grants<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DocGrant)>>> {
        ready(SledOps::doc_grants(self, kind, name))
    }

    fn grants_version(&self) -> u64 {
        self.grants.version()
    }

    fn grant_changes_since(&self, since: u64) -> Option<(u64, Vec<GrantChange>)> {
        self.grants.since(since)
    }

    fn restamp_docs(
        &self,
        docs: Vec<Restamp>,
    ) -> BoxFuture<'_, Result<(Vec<Option<u64>>, Ticket)>> {
        ready(SledOps::restamp_docs(self, docs))
    }

    fn raise_seq(&self, seq: u64) -> BoxFuture<'_, Result<Ticket>> {
        ready(SledOps::raise_seq(self, seq))
    }

    fn get_setting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(SledOps::get_setting(self, key))
    }

    fn put_setting<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::put_setting(self, key, value))
    }

    fn attachment<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(SledOps::attachment(self, digest))
    }

    fn get_local<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<LocalDoc>>> {
        ready(SledOps::get_local(self, id))
    }

    fn put_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
        body: Box<serde_json::value::RawValue>,
    ) -> BoxFuture<'a, Result<(String, Ticket)>> {
        ready(SledOps::put_local(self, id, rev, body))
    }

    fn delete_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::delete_local(self, id, rev))
    }

    fn get_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(SledOps::get_principal(self, kind, name))
    }

    fn put_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<(u64, Ticket)>> {
        ready(SledOps::put_principal(self, kind, name, build))
    }

    fn put_principal_if<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        expected: Option<&'a [u8]>,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<Option<(u64, Ticket)>>> {
        ready(SledOps::put_principal_if(self, kind, name, expected, build))
    }

    fn delete_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::delete_principal(self, kind, name))
    }

    fn list_principals(&self, kind: PrincipalKind) -> BoxFuture<'_, Result<Vec<String>>> {
        ready(SledOps::list_principals(self, kind))
    }

    fn get_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(SledOps::get_session(self, key))
    }

    fn put_session<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::put_session(self, key, value))
    }

    fn delete_sessions<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::delete_sessions(self, keys))
    }

    fn list_sessions(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        ready(SledOps::list_sessions(self))
    }

    fn put_login<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::put_login(self, key, value))
    }

    fn take_login<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(SledOps::take_login(self, key))
    }

    fn list_logins(&self) -> BoxFuture<'_, Result<Vec<(String, Vec<u8>)>>> {
        ready(SledOps::list_logins(self))
    }

    fn delete_logins<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>> {
        ready(SledOps::delete_logins(self, keys))
    }

    /// On a blocking thread (it walks every document).
    fn compact(&self) -> BoxFuture<'_, Result<CompactStats>> {
        let me = self.me.upgrade();
        Box::pin(async move {
            let me = me.ok_or_else(|| StorageError::Engine("database closed".into()))?;
            tokio::task::spawn_blocking(move || me.compact_now())
                .await
                .map_err(|e| StorageError::Engine(format!("compaction failed: {e}")))?
        })
    }

    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.wait_durable(ticket))
    }

    fn docs_read(&self) -> u64 {
        self.docs_read.load(Ordering::Relaxed)
    }
}
