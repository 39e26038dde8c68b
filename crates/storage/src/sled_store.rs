//! The sled backend.
//!
//! Key layout inside one database's sled tree (`db/<name>`):
//!
//! | prefix | key rest | value |
//! |---|---|---|
//! | `d` | doc id | [`DocMeta`] JSON |
//! | `b` | u32 id length, id, rev | revision body ([`StoredBody`]: user JSON as sent, attachment metadata) |
//! | `s` | u64 BE sequence | [`ChangeEntry`] JSON |
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
//! Every write is one `apply_batch` (atomic across keys, so a crash never leaves half a
//! document), made under the database's write mutex so sequences are assigned and committed in
//! order (a changes reader never sees seq N+1 before N). Durability is a group commit shared by
//! all databases: the first waiter flushes for everyone written before it started.
//!
//! Concurrent document writers are combined ([`DatabaseStore::write_docs_shared`]): each sled
//! 0.34 `apply_batch` writes the log buffer out synchronously, so one batch per request made
//! that cost per PUT. A writer that finds a batch being applied queues its writes and waits;
//! when the batch is done, leadership passes to the first queued writer, which applies every
//! queued write set, in arrival order, as one batch (one `apply_batch`, one ticket), and hands
//! each writer its own results. A failed write leaves nothing in the batch, so per-write errors
//! stay per-write; a batch that fails as a whole fails every writer in it.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sled::Batch;
use tokio::sync::watch;

use crate::model::*;
use crate::revtree::{compute_rev, generation, parse_rev, RevNode, RevTree};
use crate::{BoxFuture, DatabaseStore, PrincipalKind, Result, StorageError, Ticket};

const DB_TREE_PREFIX: &str = "db/";
const REGISTRY_TREE: &str = "registry";
const META_TREE: &str = "meta";

/// Shared group-commit state: writers take a ticket after their batch is applied; waiters flush
/// once for every ticket issued before the flush started.
struct GroupCommit {
    written: AtomicU64,
    flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    fn ticket(&self) -> Ticket {
        Ticket(self.written.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn wait(&self, db: &sled::Db, ticket: Ticket) -> Result<()> {
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        let _leader = self.lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        let target = self.written.load(Ordering::SeqCst);
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StorageError::Corrupt(format!("flush task failed: {e}")))??;
        self.flushed.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }
}

/// The whole embedded store: one sled database holding every syncgate database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    registry: sled::Tree,
    commit: Arc<GroupCommit>,
}

impl Store {
    /// Opens (creating if needed) the store in `path`.
    pub fn open(path: &Path) -> Result<Store> {
        std::fs::create_dir_all(path).map_err(|e| StorageError::Engine(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let registry = db.open_tree(REGISTRY_TREE)?;
        Ok(Store {
            db,
            registry,
            commit: Arc::new(GroupCommit {
                written: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Opens one database's keyspace.
    pub fn database(&self, name: &str) -> Result<Arc<SledDatabase>> {
        let tree = self.db.open_tree(format!("{DB_TREE_PREFIX}{name}"))?;
        let last_seq = read_u64(&tree, META_LAST_SEQ)?;
        let (tx, _) = watch::channel(last_seq);
        Ok(Arc::new(SledDatabase {
            name: name.to_string(),
            db: self.db.clone(),
            tree,
            commit: self.commit.clone(),
            write_lock: Mutex::new(()),
            queue: Mutex::new(WriteQueue::default()),
            assigned_seq: AtomicU64::new(last_seq),
            durable_seq: AtomicU64::new(last_seq),
            unpublished: Mutex::new(VecDeque::new()),
            notify: tx,
            views: Mutex::new(BTreeMap::new()),
            docs_read: AtomicU64::new(0),
            grants_version: AtomicU64::new(0),
        }))
    }

    /// Removes a database and all its data.
    pub fn drop_database(&self, name: &str) -> Result<()> {
        self.db.drop_tree(format!("{DB_TREE_PREFIX}{name}"))?;
        self.registry.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Databases created at run time (by the admin API), with their stored config.
    pub fn registered_databases(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.registry
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    pub fn register_database(&self, name: &str, config: &[u8]) -> Result<()> {
        self.registry.insert(name.as_bytes(), config)?;
        self.db.flush()?;
        Ok(())
    }

    /// A server-wide value kept in the store (e.g. the session-hashing key): the stored one, or
    /// `init()` stored and flushed on first use. Concurrent first uses agree on one value.
    pub fn server_value(&self, key: &str, init: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
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

    /// Flushes everything (shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes on disk, for metrics.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

const META_LAST_SEQ: &[u8] = b"m\0last_seq";
const META_DOC_COUNT: &[u8] = b"m\0doc_count";

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64> {
    Ok(match tree.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        Some(_) => {
            return Err(StorageError::Corrupt(format!(
                "counter {}",
                String::from_utf8_lossy(key)
            )))
        }
        None => 0,
    })
}

fn doc_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.extend_from_slice(b"d");
    k.extend_from_slice(id.as_bytes());
    k
}

fn body_key(id: &str, rev: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + id.len() + rev.len());
    k.push(b'b');
    k.extend_from_slice(&(id.len() as u32).to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(rev.as_bytes());
    k
}

fn seq_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b's';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn channel_key(channel: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + channel.len());
    k.push(b'c');
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `g`, the superseding sequence, the superseded one: ordered by when it can be collected.
fn superseded_key(next: u64, old: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'g';
    k[1..9].copy_from_slice(&next.to_be_bytes());
    k[9..].copy_from_slice(&old.to_be_bytes());
    k
}

/// The by-sequence entry of a document in the state `meta` (the same function writes a new
/// entry and rewrites a superseded one, so the rewrite is what readers saw before).
fn change_entry(id: &str, meta: &DocMeta) -> ChangeEntry {
    let channels: Vec<String> = meta
        .tree
        .winner()
        .map(|w| w.channels.clone())
        .unwrap_or_default();
    let removed = meta
        .channel_history
        .iter()
        .filter(|c| !channels.contains(c))
        .cloned()
        .collect();
    let leaves = meta
        .tree
        .sorted_leaves()
        .iter()
        .map(|n| ChangeRev {
            rev: n.rev.clone(),
            deleted: n.deleted,
        })
        .collect();
    ChangeEntry {
        seq: meta.seq,
        id: id.to_string(),
        leaves,
        channels,
        removed,
        superseded: None,
    }
}

/// Access index key: `p`, the principal kind, its name, NUL, the granting document's id.
fn grant_key(kind: PrincipalKind, name: &str, doc: &str) -> Vec<u8> {
    let mut k = grant_prefix(kind, name);
    k.extend_from_slice(doc.as_bytes());
    k
}

fn grant_prefix(kind: PrincipalKind, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + name.len());
    k.push(b'p');
    k.push(principal_prefix(kind));
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// Applies a new grant list: kept entries keep their sequence, new ones get `seq`, dropped ones
/// are recorded as revoked at `seq`.
fn regrant(
    held: &mut BTreeMap<String, u64>,
    revoked: &mut BTreeMap<String, u64>,
    want: &BTreeSet<String>,
    seq: u64,
) {
    let lost: Vec<String> = held
        .keys()
        .filter(|c| !want.contains(*c))
        .cloned()
        .collect();
    for c in lost {
        held.remove(&c);
        revoked.insert(c, seq);
    }
    for c in want {
        held.entry(c.clone()).or_insert(seq);
        revoked.remove(c);
    }
}

fn prefixed(p: u8, s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + s.len());
    k.push(p);
    k.extend_from_slice(s.as_bytes());
    k
}

fn principal_prefix(kind: PrincipalKind) -> u8 {
    match kind {
        PrincipalKind::User => b'u',
        PrincipalKind::Role => b'r',
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StorageError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn encode_body(id: &str, rev: &str, body: &StoredBody) -> Result<Vec<u8>> {
    body.encode().map_err(|e| {
        StorageError::Corrupt(format!(
            "cannot encode the body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

fn decode_body(id: &str, rev: &str, bytes: &[u8]) -> Result<StoredBody> {
    StoredBody::decode(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "body of \"{}\" revision {rev}: {e}",
            crate::revtree::truncate(id, 100)
        ))
    })
}

/// Results of one write set and the ticket of the batch that carried it.
type WriteResult = Result<(Vec<Result<WriteOutcome>>, Ticket)>;

/// What a queued writer is told: its results, or that it now leads (with its writes back).
enum Turn {
    Done(WriteResult),
    Lead(Vec<DocWrite>),
}

/// A writer waiting for the current batch to finish.
struct Queued {
    writes: Vec<DocWrite>,
    tx: tokio::sync::oneshot::Sender<Turn>,
}

#[derive(Default)]
struct WriteQueue {
    /// A writer is applying a batch (or has been handed the lead and not yet taken it).
    leading: bool,
    waiting: VecDeque<Queued>,
}

/// Most writes one combined batch takes from the queue (bounds a leader's batch).
const MAX_COMBINED_WRITES: usize = 1_000;

/// Fewest superseded entries a write batch collects (when there are that many to collect).
const GC_PER_BATCH: usize = 1_000;

/// The same error for another writer of a failed batch (engine errors are not `Clone`).
fn shared_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::BadRequest(m) => StorageError::BadRequest(m.clone()),
        StorageError::NotFound(m) => StorageError::NotFound(m.clone()),
        StorageError::Conflict(m) => StorageError::Conflict(m.clone()),
        StorageError::PreconditionFailed(m) => StorageError::PreconditionFailed(m.clone()),
        StorageError::Engine(e) => {
            StorageError::Engine(sled::Error::Io(std::io::Error::other(e.to_string())))
        }
        StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
    }
}

/// Held by the writer that leads: when it is done (or panics), the lead passes to the first
/// queued writer still waiting, or the queue goes idle.
struct LeadGuard<'a>(&'a Mutex<WriteQueue>);

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(next) = q.waiting.pop_front() {
            // a writer whose request was dropped while queued never had its writes applied
            // (nor acknowledged): skip it
            if next.tx.send(Turn::Lead(next.writes)).is_ok() {
                return;
            }
        }
        q.leading = false;
    }
}

/// One database in the sled store.
pub struct SledDatabase {
    name: String,
    db: sled::Db,
    tree: sled::Tree,
    commit: Arc<GroupCommit>,
    /// Serializes writers so sequences are committed in the order they are assigned.
    write_lock: Mutex<()>,
    /// Document writers waiting to be combined into the next batch.
    queue: Mutex<WriteQueue>,
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
    /// Bumped after every batch that changed the access index.
    grants_version: AtomicU64,
}

/// State of one write batch: documents and bodies written earlier in the same batch are visible
/// to later writes of it.
struct BatchState<'a> {
    store: &'a SledDatabase,
    batch: Batch,
    metas: HashMap<String, Option<DocMeta>>,
    bodies: HashMap<(String, String), StoredBody>,
    blobs: HashSet<String>,
    /// First sequence of this batch: entries from here on are not applied yet.
    first_seq: u64,
    /// Access index entries read or written by this batch (`None`: absent or removed).
    grants: HashMap<Vec<u8>, Option<DocGrant>>,
    grants_changed: bool,
    next_seq: u64,
    /// Documents updated in this batch, with their state before it.
    replaced: BTreeMap<String, DocMeta>,
    doc_count: i64,
}

impl<'a> BatchState<'a> {
    fn meta(&mut self, id: &str) -> Result<Option<DocMeta>> {
        if let Some(m) = self.metas.get(id) {
            return Ok(m.clone());
        }
        let m = self.store.load_meta(id)?;
        self.metas.insert(id.to_string(), m.clone());
        Ok(m)
    }

    fn body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        if let Some(b) = self.bodies.get(&(id.to_string(), rev.to_string())) {
            return Ok(Some(b.clone()));
        }
        self.store.load_body(id, rev)
    }

    /// Moves a document's grants from the previous winner's to the new winner's at `seq`.
    fn update_grants(
        &mut self,
        id: &str,
        old: &RevAccess,
        new: &RevAccess,
        seq: u64,
    ) -> Result<()> {
        let principals: BTreeSet<&String> = old
            .channels
            .keys()
            .chain(new.channels.keys())
            .chain(old.roles.keys())
            .chain(new.roles.keys())
            .collect();
        let none = BTreeSet::new();
        for p in principals {
            let (kind, name) = match p.strip_prefix("role:") {
                Some(r) => (PrincipalKind::Role, r),
                None => (PrincipalKind::User, p.as_str()),
            };
            let key = grant_key(kind, name, id);
            let mut g = match self.grants.get(&key) {
                Some(g) => g.clone().unwrap_or_default(),
                None => match self.store.tree.get(&key)? {
                    Some(v) => decode("access index entry", &v)?,
                    None => DocGrant::default(),
                },
            };
            let want_channels = new.channels.get(p).unwrap_or(&none);
            let want_roles = new.roles.get(p).unwrap_or(&none);
            regrant(&mut g.channels, &mut g.revoked_channels, want_channels, seq);
            regrant(&mut g.roles, &mut g.revoked_roles, want_roles, seq);
            if g.is_empty() {
                self.batch.remove(key.clone());
                self.grants.insert(key, None);
            } else {
                self.batch
                    .insert(key.clone(), encode("access index entry", &g)?);
                self.grants.insert(key, Some(g));
            }
            self.grants_changed = true;
        }
        Ok(())
    }

    fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blobs.contains(digest) || self.store.tree.contains_key(prefixed(b'a', digest))?)
    }

    /// Resolves attachment inputs into stored metadata, storing new data once per digest.
    fn attachments(
        &mut self,
        id: &str,
        parent_rev: Option<&str>,
        gen: u64,
        inputs: Vec<(String, AttachmentInput)>,
    ) -> Result<Vec<(String, AttachmentMeta)>> {
        let parent_atts: Vec<(String, AttachmentMeta)> = match parent_rev {
            Some(p) => self.body(id, p)?.map(|b| b.attachments).unwrap_or_default(),
            None => Vec::new(),
        };
        let mut out: Vec<(String, AttachmentMeta)> = Vec::with_capacity(inputs.len());
        for (name, input) in inputs {
            let meta = match input {
                AttachmentInput::Data {
                    content_type,
                    data,
                    revpos,
                } => {
                    let digest = attachment_digest(&data);
                    if !self.has_blob(&digest)? {
                        self.batch.insert(prefixed(b'a', &digest), data.as_slice());
                        self.blobs.insert(digest.clone());
                    }
                    AttachmentMeta {
                        content_type,
                        digest,
                        length: data.len() as u64,
                        revpos: revpos.filter(|r| *r >= 1 && *r <= gen).unwrap_or(gen),
                        stub: true,
                    }
                }
                AttachmentInput::Stub {
                    digest,
                    revpos,
                    content_type,
                } => {
                    let from_parent = parent_atts
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, m)| m.clone())
                        .filter(|m| digest.as_ref().is_none_or(|d| *d == m.digest));
                    match (from_parent, digest) {
                        (Some(m), _) => m,
                        (None, Some(d)) if self.has_blob(&d)? => {
                            let length = self
                                .store
                                .tree
                                .get(prefixed(b'a', &d))?
                                .map(|v| v.len() as u64)
                                .unwrap_or(0);
                            AttachmentMeta {
                                content_type: content_type
                                    .unwrap_or_else(|| "application/octet-stream".into()),
                                digest: d,
                                length,
                                revpos: revpos.filter(|r| *r >= 1 && *r <= gen).unwrap_or(gen),
                                stub: true,
                            }
                        }
                        _ => {
                            return Err(StorageError::PreconditionFailed(format!(
                                "attachment stub \"{}\" refers to data this server does not have",
                                crate::revtree::truncate(&name, 100)
                            )))
                        }
                    }
                }
            };
            out.retain(|(n, _)| *n != name);
            out.push((name, meta));
        }
        Ok(out)
    }

    /// Stores a new revision's body (when there is one: a restamp has none) and the
    /// document's updated metadata and change entry.
    fn commit_doc(
        &mut self,
        id: &str,
        old: Option<DocMeta>,
        mut tree: RevTree,
        new: Option<(&str, StoredBody)>,
        revs_limit: usize,
    ) -> Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((new_rev, _)) = &new {
            if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == *new_rev) {
                n.seq = seq;
            }
        }
        let was_live = old.as_ref().is_some_and(|m| m.is_live());
        let mut history = old
            .as_ref()
            .map(|m| m.channel_history.clone())
            .unwrap_or_default();
        let old_access = old
            .as_ref()
            .and_then(|m| m.tree.winner())
            .map(|w| w.access.clone())
            .unwrap_or_default();
        if let Some(old) = old {
            if old.seq >= self.first_seq {
                // written earlier in this batch: no reader has seen it, nor can (the batch is
                // applied at once and views stop at a batch's end)
                self.batch.remove(&seq_key(old.seq));
                for ch in &old.channel_history {
                    self.batch.remove(channel_key(ch, old.seq));
                }
            } else {
                // visible to views until this change is: marked superseded at the end of the
                // batch (see `mark_superseded`), removed later by `collect_superseded`
                self.replaced.entry(id.to_string()).or_insert(old);
            }
        }
        for removed in tree.prune(revs_limit.max(1)) {
            self.batch.remove(body_key(id, &removed));
        }
        // grants stay on leaves only; the winner's are the document's
        let parents: HashSet<String> = tree.nodes.iter().filter_map(|n| n.parent.clone()).collect();
        for n in tree.nodes.iter_mut() {
            if !n.access.is_empty() && parents.contains(&n.rev) {
                n.access = RevAccess::default();
            }
        }
        let new_access = tree.winner().map(|w| w.access.clone()).unwrap_or_default();
        if old_access != new_access {
            self.update_grants(id, &old_access, &new_access, seq)?;
        }
        if let Some((new_rev, body)) = new {
            self.batch
                .insert(body_key(id, new_rev), encode_body(id, new_rev, &body)?);
            self.bodies
                .insert((id.to_string(), new_rev.to_string()), body);
        }
        let winner_channels = tree
            .winner()
            .map(|w| w.channels.as_slice())
            .unwrap_or_default();
        for ch in winner_channels {
            if !ch.contains('\0') && !history.contains(ch) {
                history.push(ch.clone());
            }
        }
        history.sort();
        for ch in &history {
            self.batch.insert(channel_key(ch, seq), &[] as &[u8]);
        }
        let meta = DocMeta {
            seq,
            tree,
            channel_history: history,
        };
        self.batch.insert(
            &seq_key(seq),
            encode("change entry", &change_entry(id, &meta))?,
        );
        self.batch.insert(doc_key(id), encode("document", &meta)?);
        self.doc_count += meta.is_live() as i64 - was_live as i64;
        self.metas.insert(id.to_string(), Some(meta));
        Ok(seq)
    }

    /// Marks the entry each document had before this batch as superseded by the document's
    /// sequence at the end of the batch (the entry is rewritten as it was, plus the mark), and
    /// records the pair under `g` for [`SledDatabase::collect_superseded`].
    fn mark_superseded(&mut self) -> Result<()> {
        for (id, old) in std::mem::take(&mut self.replaced) {
            let Some(Some(now)) = self.metas.get(&id) else {
                return Err(StorageError::Corrupt(format!(
                    "document \"{}\" replaced in a batch without a new state",
                    crate::revtree::truncate(&id, 100)
                )));
            };
            let mut entry = change_entry(&id, &old);
            entry.superseded = Some(now.seq);
            self.batch
                .insert(&seq_key(old.seq), encode("change entry", &entry)?);
            self.batch.insert(
                &superseded_key(now.seq, old.seq),
                encode("superseded entry", &old.channel_history)?,
            );
        }
        Ok(())
    }

    /// New channels and grants for a document's winner (see [`Restamp`]).
    fn restamp(&mut self, r: Restamp) -> Result<Option<u64>> {
        let Some(old) = self.meta(&r.id)? else {
            return Ok(None);
        };
        match old.tree.winner() {
            Some(w) if w.rev == r.rev => {
                if w.channels == r.channels && w.access == r.access {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
        let mut tree = old.tree.clone();
        if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == r.rev) {
            n.channels = r.channels;
            n.access = r.access;
        }
        let seq = self.commit_doc(&r.id, Some(old), tree, None, usize::MAX)?;
        Ok(Some(seq))
    }

    fn apply(&mut self, write: DocWrite) -> Result<WriteOutcome> {
        match write {
            DocWrite::Edit {
                id,
                parent,
                deleted,
                body,
                canonical,
                attachments,
                channels,
                access,
                revs_limit,
                must_exist,
            } => {
                let old = self.meta(&id)?;
                let parent_rev: Option<String> = match (&old, parent) {
                    (None, Some(_)) => {
                        return Err(StorageError::Conflict("Document update conflict".into()))
                    }
                    (None, None) if must_exist => {
                        return Err(StorageError::NotFound("missing".into()))
                    }
                    (None, None) => None,
                    (Some(m), None) => match m.winner() {
                        Some((_, false)) => {
                            return Err(StorageError::Conflict("Document update conflict".into()))
                        }
                        Some((_, true)) if must_exist => {
                            return Err(StorageError::NotFound("deleted".into()))
                        }
                        Some((w, true)) => Some(w.to_string()),
                        None => None,
                    },
                    (Some(m), Some(p)) => {
                        parse_rev(&p)?;
                        if !m.tree.is_leaf(&p) {
                            return Err(StorageError::Conflict("Document update conflict".into()));
                        }
                        if deleted && m.tree.get(&p).is_some_and(|n| n.deleted) {
                            return Err(StorageError::Conflict("Document update conflict".into()));
                        }
                        Some(p)
                    }
                };
                // a tombstone stays in its parent's channels, so the deletion reaches its readers
                let channels = match (&old, &parent_rev) {
                    (Some(m), Some(p)) if deleted && channels.is_empty() => m
                        .tree
                        .get(p)
                        .map(|n| n.channels.clone())
                        .unwrap_or_default(),
                    _ => channels,
                };
                let gen = parent_rev.as_deref().map(generation).unwrap_or(0) + 1;
                let atts = self.attachments(&id, parent_rev.as_deref(), gen, attachments)?;
                // digests in name order, as the first format's sorted map gave them
                let mut digests: Vec<(String, String)> = atts
                    .iter()
                    .map(|(k, m)| (k.clone(), m.digest.clone()))
                    .collect();
                digests.sort();
                let rev = compute_rev(parent_rev.as_deref(), &canonical, &digests);
                let body = StoredBody {
                    json: body,
                    attachments: atts,
                };
                let mut tree = old.as_ref().map(|m| m.tree.clone()).unwrap_or_default();
                tree.add(RevNode {
                    rev: rev.clone(),
                    parent: parent_rev,
                    deleted,
                    seq: 0,
                    has_body: true,
                    channels,
                    access,
                });
                let seq = self.commit_doc(&id, old, tree, Some((&rev, body)), revs_limit)?;
                Ok(WriteOutcome { id, rev, seq })
            }
            DocWrite::Replicate {
                id,
                history,
                deleted,
                body,
                attachments,
                channels,
                access,
                revs_limit,
            } => {
                let Some(rev) = history.first().cloned() else {
                    return Err(StorageError::BadRequest(
                        "Bad _revisions: empty history".into(),
                    ));
                };
                let old = self.meta(&id)?;
                let mut tree = old.as_ref().map(|m| m.tree.clone()).unwrap_or_default();
                if tree.contains(&rev) {
                    return Ok(WriteOutcome { id, rev, seq: 0 });
                }
                // the newest known ancestor with a body resolves stubs
                let base = history[1..]
                    .iter()
                    .find(|r| tree.get(r).is_some_and(|n| n.has_body))
                    .cloned();
                let atts = self.attachments(&id, base.as_deref(), generation(&rev), attachments)?;
                let body = StoredBody {
                    json: body,
                    attachments: atts,
                };
                let channels = if deleted && channels.is_empty() {
                    history[1..]
                        .iter()
                        .find_map(|r| tree.get(r))
                        .map(|n| n.channels.clone())
                        .unwrap_or_default()
                } else {
                    channels
                };
                tree.graft(&history, deleted, 0, channels);
                if let Some(n) = tree.nodes.iter_mut().find(|n| n.rev == rev) {
                    n.access = access;
                }
                let seq = self.commit_doc(&id, old, tree, Some((&rev, body)), revs_limit)?;
                Ok(WriteOutcome { id, rev, seq })
            }
        }
    }
}

impl SledDatabase {
    fn load_meta(&self, id: &str) -> Result<Option<DocMeta>> {
        match self.tree.get(doc_key(id))? {
            Some(v) => {
                self.docs_read.fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode("document", &v)?))
            }
            None => Ok(None),
        }
    }

    fn load_body(&self, id: &str, rev: &str) -> Result<Option<StoredBody>> {
        match self.tree.get(body_key(id, rev))? {
            Some(v) => {
                self.docs_read.fetch_add(1, Ordering::Relaxed);
                Ok(Some(decode_body(id, rev, &v)?))
            }
            None => Ok(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // a panic while holding the lock cannot leave sled half-written (batches are atomic)
        self.write_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies restamps as one batch under the write lock.
    fn apply_restamps(&self, docs: Vec<Restamp>) -> Result<(Vec<Option<u64>>, Ticket)> {
        let _guard = self.lock();
        let n = docs.len();
        let mut st = BatchState {
            store: self,
            batch: Batch::default(),
            metas: HashMap::new(),
            bodies: HashMap::new(),
            blobs: HashSet::new(),
            first_seq: self.assigned_seq() + 1,
            grants: HashMap::new(),
            grants_changed: false,
            next_seq: self.assigned_seq() + 1,
            replaced: BTreeMap::new(),
            doc_count: 0,
        };
        let results = docs
            .into_iter()
            .map(|r| st.restamp(r))
            .collect::<Result<Vec<_>>>()?;
        st.mark_superseded()?;
        self.collect_superseded(&mut st.batch, (2 * n).max(GC_PER_BATCH))?;
        let new_last = st.next_seq - 1;
        let BatchState {
            batch,
            doc_count,
            grants_changed,
            ..
        } = st;
        let ticket = self.finish(batch, new_last, doc_count)?;
        if grants_changed {
            self.grants_version.fetch_add(1, Ordering::SeqCst);
        }
        Ok((results, ticket))
    }

    /// Applies write sets, in order, as one batch under the write lock: one result list per set,
    /// one ticket for all.
    fn apply_writes(
        &self,
        sets: Vec<Vec<DocWrite>>,
    ) -> Result<(Vec<Vec<Result<WriteOutcome>>>, Ticket)> {
        let _guard = self.lock();
        let writes: usize = sets.iter().map(Vec::len).sum();
        let mut st = BatchState {
            store: self,
            batch: Batch::default(),
            metas: HashMap::new(),
            bodies: HashMap::new(),
            blobs: HashSet::new(),
            first_seq: self.assigned_seq() + 1,
            grants: HashMap::new(),
            grants_changed: false,
            next_seq: self.assigned_seq() + 1,
            replaced: BTreeMap::new(),
            doc_count: 0,
        };
        let results: Vec<Vec<Result<WriteOutcome>>> = sets
            .into_iter()
            .map(|writes| {
                // a failed write leaves nothing in the batch: apply() only touches the batch on
                // success paths after all checks, except attachment blobs, which are harmless
                // (deduplicated, collected by compaction).
                writes.into_iter().map(|w| st.apply(w)).collect()
            })
            .collect();
        st.mark_superseded()?;
        // collect at least as much as this batch supersedes, so garbage cannot outgrow writes
        self.collect_superseded(&mut st.batch, (2 * writes).max(GC_PER_BATCH))?;
        let new_last = st.next_seq - 1;
        let BatchState {
            batch,
            doc_count,
            grants_changed,
            ..
        } = st;
        let ticket = self.finish(batch, new_last, doc_count)?;
        if grants_changed {
            self.grants_version.fetch_add(1, Ordering::SeqCst);
        }
        Ok((results, ticket))
    }

    /// Applies a batch and publishes the new last sequence.
    fn finish(&self, mut batch: Batch, new_last: u64, doc_delta: i64) -> Result<Ticket> {
        let old_last = self.assigned_seq.load(Ordering::SeqCst);
        if new_last != old_last {
            batch.insert(META_LAST_SEQ, &new_last.to_be_bytes());
        }
        if doc_delta != 0 {
            let count = (read_u64(&self.tree, META_DOC_COUNT)? as i64 + doc_delta).max(0) as u64;
            batch.insert(META_DOC_COUNT, &count.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        let ticket = self.commit.ticket();
        if new_last != old_last {
            self.assigned_seq.store(new_last, Ordering::SeqCst);
            self.unpublished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((ticket, new_last));
        }
        Ok(ticket)
    }

    /// Publishes the sequences of every batch the group commit has flushed.
    fn publish_durable(&self) {
        let flushed = self.commit.flushed.load(Ordering::SeqCst);
        let mut newest = None;
        {
            let mut q = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
            while q.front().is_some_and(|(t, _)| t.0 <= flushed) {
                newest = q.pop_front().map(|(_, seq)| seq);
            }
        }
        if let Some(seq) = newest {
            if self.durable_seq.fetch_max(seq, Ordering::SeqCst) < seq {
                self.notify.send_if_modified(|v| {
                    let changed = *v < seq;
                    *v = (*v).max(seq);
                    changed
                });
            }
        }
    }

    /// Adds the attachment digests of a document's leaf revisions to `out`.
    fn leaf_digests(&self, id: &str, meta: &DocMeta, out: &mut HashSet<String>) -> Result<()> {
        for leaf in meta.tree.leaves() {
            let Some(body) = self.tree.get(body_key(id, &leaf.rev))? else {
                continue;
            };
            for (_, a) in decode_body(id, &leaf.rev, &body)?.attachments {
                out.insert(a.digest);
            }
        }
        Ok(())
    }

    /// Opens a change view at the durable sequence. Reading `durable_seq` and registering the
    /// view happen under one lock, which `gc_horizon` takes too: a view that registers after a
    /// horizon was computed sees a sequence at least that horizon.
    fn open_view(&self) -> u64 {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.durable_seq.load(Ordering::SeqCst);
        *views.entry(seq).or_default() += 1;
        seq
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
    fn collect_superseded(&self, batch: &mut Batch, max: usize) -> Result<usize> {
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
    fn raw_changes(
        &self,
        since: u64,
        descending: bool,
    ) -> Box<dyn Iterator<Item = Result<ChangeEntry>> + '_> {
        let from = seq_key(since.saturating_add(1));
        let to = [b't'];
        let dec = move |r: sled::Result<(sled::IVec, sled::IVec)>| -> Result<ChangeEntry> {
            let (_, v) = r?;
            self.docs_read.fetch_add(1, Ordering::Relaxed);
            decode("change", &v)
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
            match self.tree.get(seq_key(seq)) {
                Ok(Some(v)) => {
                    self.docs_read.fetch_add(1, Ordering::Relaxed);
                    Some(decode("change", &v))
                }
                // collected after its index key was read: it was superseded at or below the
                // oldest open view's sequence, so no view shows it
                Ok(None) => None,
                Err(e) => Some(Err(e.into())),
            }
        }))
    }

    /// Last sequence assigned (writers number from here).
    fn assigned_seq(&self) -> u64 {
        self.assigned_seq.load(Ordering::SeqCst)
    }

    fn scan(&self, prefix: u8) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> + '_ {
        self.tree
            .scan_prefix([prefix])
            .map(|r| r.map_err(StorageError::from))
    }
}

impl DatabaseStore for SledDatabase {
    fn name(&self) -> &str {
        &self.name
    }

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

    fn write_docs_shared(&self, writes: Vec<DocWrite>) -> BoxFuture<'_, WriteResult> {
        Box::pin(async move {
            let mut mine = writes;
            let rx = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.leading {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    q.waiting.push_back(Queued { writes: mine, tx });
                    mine = Vec::new();
                    Some(rx)
                } else {
                    q.leading = true;
                    None
                }
            };
            if let Some(rx) = rx {
                match rx.await {
                    Ok(Turn::Done(r)) => return r,
                    Ok(Turn::Lead(w)) => mine = w,
                    Err(_) => {
                        return Err(StorageError::Corrupt(
                            "the batch carrying this write failed".into(),
                        ))
                    }
                }
            }
            // leading: from here to the end nothing awaits, so this cannot be cancelled halfway
            let _lead = LeadGuard(&self.queue);
            let others: Vec<Queued> = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let mut n = mine.len();
                let mut taken = Vec::new();
                while n < MAX_COMBINED_WRITES {
                    let Some(next) = q.waiting.pop_front() else {
                        break;
                    };
                    n += next.writes.len();
                    taken.push(next);
                }
                taken
            };
            let mut sets = Vec::with_capacity(others.len() + 1);
            sets.push(mine);
            let mut senders = Vec::with_capacity(others.len());
            for o in others {
                sets.push(o.writes);
                senders.push(o.tx);
            }
            match self.apply_writes(sets) {
                Ok((mut results, ticket)) => {
                    let theirs = results.split_off(1);
                    for (tx, r) in senders.into_iter().zip(theirs) {
                        // a writer that went away still had its writes applied, as before
                        let _ = tx.send(Turn::Done(Ok((r, ticket))));
                    }
                    Ok((results.pop().unwrap_or_default(), ticket))
                }
                Err(e) => {
                    for tx in senders {
                        let _ = tx.send(Turn::Done(Err(shared_error(&e))));
                    }
                    Err(e)
                }
            }
        })
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
            Ok((id, decode("document", &v)?))
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

    fn last_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    fn changes_view(&self) -> Box<dyn crate::ChangesView + '_> {
        Box::new(View {
            db: self,
            seq: self.open_view(),
        })
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
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
        let current = self.get_local(id)?;
        let next = match (&current, rev) {
            (None, None) => 1,
            (None, Some(_)) => {
                return Err(StorageError::NotFound(
                    "No previous revision to replace".into(),
                ))
            }
            (Some(c), Some(r)) if c.rev == r => local_gen(&c.rev) + 1,
            (Some(_), _) => return Err(StorageError::Conflict("Document update conflict".into())),
        };
        let doc = LocalDoc {
            rev: format!("0-{next}"),
            body,
        };
        let mut batch = Batch::default();
        batch.insert(prefixed(b'l', id), encode("local document", &doc)?);
        let ticket = self.finish(batch, self.assigned_seq(), 0)?;
        Ok((doc.rev, ticket))
    }

    fn delete_local(&self, id: &str, rev: Option<&str>) -> Result<Ticket> {
        let _guard = self.lock();
        match self.get_local(id)? {
            None => Err(StorageError::NotFound("missing".into())),
            Some(c) if Some(c.rev.as_str()) != rev => {
                Err(StorageError::Conflict("Document update conflict".into()))
            }
            Some(_) => {
                let mut batch = Batch::default();
                batch.remove(prefixed(b'l', id));
                self.finish(batch, self.assigned_seq(), 0)
            }
        }
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

    fn grants_version(&self) -> u64 {
        self.grants_version.load(Ordering::SeqCst)
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

    /// Compaction runs beside writers: it takes the write lock only in short steps, so a
    /// large database keeps accepting writes (and the threads that wait on the lock are
    /// released quickly).
    ///
    /// 1. Scan documents without the lock, noting those with non-leaf bodies and every digest
    ///    a leaf refers to, and scan attachment keys for unreferenced candidates.
    /// 2. Under the lock, a few hundred documents at a time: reload each noted document and
    ///    drop its non-leaf bodies.
    /// 3. Under the lock: add the digests of every document written since the scan began (a
    ///    write may have referred to a candidate by digest), then delete what is still
    ///    unreferenced. Writers check and use blobs under the same lock, so none can slip
    ///    between. The same batch drops every superseded change entry no open view needs.
    fn compact(&self) -> Result<CompactStats> {
        const STEP: usize = 256;
        let mut stats = CompactStats::default();
        let scan_start = self.assigned_seq();
        let mut referenced: HashSet<String> = HashSet::new();
        let mut with_old_bodies: Vec<String> = Vec::new();
        for row in self.scan(b'd') {
            let (k, v) = row?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let meta: DocMeta = decode("document", &v)?;
            self.leaf_digests(&id, &meta, &mut referenced)?;
            let leaves: HashSet<&str> = meta.tree.leaves().iter().map(|n| n.rev.as_str()).collect();
            if meta
                .tree
                .nodes
                .iter()
                .any(|n| n.has_body && !leaves.contains(n.rev.as_str()))
            {
                with_old_bodies.push(id);
            }
        }
        let mut candidates: Vec<sled::IVec> = Vec::new();
        for row in self.scan(b'a') {
            let (k, _) = row?;
            if !referenced.contains(String::from_utf8_lossy(&k[1..]).as_ref()) {
                candidates.push(k);
            }
        }
        for chunk in with_old_bodies.chunks(STEP) {
            let _guard = self.lock();
            let mut batch = Batch::default();
            for id in chunk {
                let Some(v) = self.tree.get(doc_key(id))? else {
                    continue;
                };
                let mut meta: DocMeta = decode("document", &v)?;
                let leaves: HashSet<String> =
                    meta.tree.leaves().iter().map(|n| n.rev.clone()).collect();
                let mut changed = false;
                for n in meta.tree.nodes.iter_mut() {
                    if n.has_body && !leaves.contains(&n.rev) {
                        batch.remove(body_key(id, &n.rev));
                        n.has_body = false;
                        changed = true;
                        stats.bodies_removed += 1;
                    }
                }
                if changed {
                    batch.insert(doc_key(id), encode("document", &meta)?);
                }
            }
            self.tree.apply_batch(batch)?;
        }
        {
            let _guard = self.lock();
            for entry in self.raw_changes(scan_start, false) {
                let entry = entry?;
                if let Some(v) = self.tree.get(doc_key(&entry.id))? {
                    let meta: DocMeta = decode("document", &v)?;
                    self.leaf_digests(&entry.id, &meta, &mut referenced)?;
                }
            }
            let mut batch = Batch::default();
            // and every superseded change entry no view needs any more
            self.collect_superseded(&mut batch, usize::MAX)?;
            for k in candidates {
                if !referenced.contains(String::from_utf8_lossy(&k[1..]).as_ref()) {
                    batch.remove(k);
                    stats.attachments_removed += 1;
                }
            }
            self.tree.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(stats)
    }

    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.commit.wait(&self.db, ticket).await?;
            self.publish_durable();
            Ok(())
        })
    }

    fn docs_read(&self) -> u64 {
        self.docs_read.load(Ordering::Relaxed)
    }
}

/// A change view (see the module documentation): the sequence it is pinned at, released on
/// drop.
struct View<'a> {
    db: &'a SledDatabase,
    seq: u64,
}

impl Drop for View<'_> {
    fn drop(&mut self) {
        self.db.close_view(self.seq);
    }
}

impl crate::ChangesView for View<'_> {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn since(
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

    fn in_channels(
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

fn local_gen(rev: &str) -> u64 {
    rev.strip_prefix("0-")
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChangesView;
    use serde_json::value::RawValue;
    use serde_json::Value;

    fn edit(id: &str, parent: Option<&str>, body: Value) -> DocWrite {
        DocWrite::Edit {
            id: id.into(),
            parent: parent.map(Into::into),
            deleted: false,
            body: serde_json::to_vec(&body).unwrap(),
            canonical: canonical_json(&body),
            attachments: vec![],
            channels: vec![],
            access: Default::default(),
            revs_limit: 1000,
            must_exist: false,
        }
    }

    /// Applies writes and waits until they are durable (visible to change views).
    fn durable_write(db: &SledDatabase, w: Vec<DocWrite>) -> Result<Vec<Result<WriteOutcome>>> {
        let (r, ticket) = db.write_docs(w)?;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(db.durable(ticket))?;
        Ok(r)
    }

    fn one(db: &SledDatabase, w: DocWrite) -> Result<WriteOutcome> {
        durable_write(db, vec![w])?.remove(0)
    }

    fn since(db: &SledDatabase, since: u64) -> Vec<ChangeEntry> {
        let view = db.changes_view();
        let rows = view.since(since, false).map(|c| c.unwrap()).collect();
        rows
    }

    fn in_channels(db: &SledDatabase, channels: &[&str], since: u64) -> Vec<ChangeEntry> {
        let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
        let view = db.changes_view();
        let rows = view
            .in_channels(&channels, since)
            .map(|c| c.unwrap())
            .collect();
        rows
    }

    #[test]
    fn edit_conflict_changes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let a = one(&db, edit("doc", None, serde_json::json!({"n":1}))).unwrap();
        assert_eq!(a.rev, "1-50133ddd8e49efad34ad9ecae4cb9907");
        assert!(matches!(
            one(&db, edit("doc", None, serde_json::json!({}))),
            Err(StorageError::Conflict(_))
        ));
        let b = one(&db, edit("doc", Some(&a.rev), serde_json::json!({"n":2}))).unwrap();
        assert!(matches!(
            one(&db, edit("doc", Some(&a.rev), serde_json::json!({}))),
            Err(StorageError::Conflict(_))
        ));
        one(&db, edit("other", None, serde_json::json!({}))).unwrap();
        let changes = since(&db, 0);
        assert_eq!(
            changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            vec!["doc", "other"]
        );
        assert_eq!(changes[0].leaves[0].rev, b.rev);
        assert_eq!(db.doc_count().unwrap(), 2);
        drop(db);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        assert_eq!(db.last_seq(), 3);
        assert_eq!(
            db.doc_meta("doc").unwrap().unwrap().winner().unwrap().0,
            b.rev
        );
        assert_eq!(
            db.rev_body("doc", &b.rev).unwrap().unwrap().json,
            br#"{"n":2}"#
        );
    }

    #[test]
    fn queued_writers_share_one_batch_with_their_own_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // as if a batch were being applied: every writer queues
        db.queue.lock().unwrap().leading = true;
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let db = db.clone();
                rt.spawn(async move {
                    db.write_docs_shared(vec![
                        edit(&format!("d{i}"), None, serde_json::json!({ "i": i })),
                        edit("dup", None, serde_json::json!({ "i": i })),
                    ])
                    .await
                })
            })
            .collect();
        rt.block_on(async {
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(db.queue.lock().unwrap().waiting.len(), 5);
        // the batch ends: the lead passes to the first queued writer, which takes the rest
        drop(LeadGuard(&db.queue));
        let results: Vec<_> = rt.block_on(async {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap().unwrap());
            }
            out
        });
        let ticket = results[0].1;
        assert!(results.iter().all(|(_, t)| *t == ticket), "one batch");
        let (first, _) = &results[0];
        assert_eq!(first[0].as_ref().unwrap().seq, 1);
        assert_eq!(first[1].as_ref().unwrap().seq, 2);
        for (i, (r, _)) in results.iter().enumerate().skip(1) {
            let own = r[0].as_ref().unwrap();
            assert_eq!(
                (own.id.as_str(), own.seq),
                (format!("d{i}").as_str(), i as u64 + 2)
            );
            assert!(matches!(r[1], Err(StorageError::Conflict(_))), "{i}");
        }
        assert!(!db.queue.lock().unwrap().leading);
        assert_eq!(db.assigned_seq(), 6);
        assert_eq!(db.doc_count().unwrap(), 6);
        // a writer that finds nobody leading applies its own batch at once
        let (r, t2) = rt
            .block_on(db.write_docs_shared(vec![edit("e", None, serde_json::json!({}))]))
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap().seq, 7);
        assert!(t2 > ticket);
    }

    #[test]
    fn feeds_see_a_sequence_only_once_it_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let mut rx = db.subscribe();
        let (r, ticket) = db
            .write_docs(vec![edit("a", None, serde_json::json!({}))])
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap().seq, 1);
        // applied, not yet flushed: invisible, and nobody is woken
        assert_eq!(db.last_seq(), 0);
        assert!(!rx.has_changed().unwrap());
        // the next writer numbers after it all the same
        let (r2, ticket2) = db
            .write_docs(vec![edit("b", None, serde_json::json!({}))])
            .unwrap();
        assert_eq!(r2[0].as_ref().unwrap().seq, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(db.durable(ticket)).unwrap();
        // one flush covers both batches
        assert_eq!(db.last_seq(), 2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        rt.block_on(db.durable(ticket2)).unwrap();
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn same_doc_twice_in_one_batch_sees_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let r = durable_write(
            &db,
            vec![
                edit("d", None, serde_json::json!({})),
                edit("d", None, serde_json::json!({"x":1})),
            ],
        )
        .unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(StorageError::Conflict(_))));
        assert_eq!(since(&db, 0).len(), 1);
    }

    #[test]
    fn attachments_are_stored_once_and_stubs_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let mut w = edit("a", None, serde_json::json!({}));
        if let DocWrite::Edit { attachments, .. } = &mut w {
            attachments.push((
                "f.txt".into(),
                AttachmentInput::Data {
                    content_type: "text/plain".into(),
                    data: b"hello".to_vec(),
                    revpos: None,
                },
            ));
        }
        let r1 = one(&db, w).unwrap();
        let body = db.rev_body("a", &r1.rev).unwrap().unwrap();
        let meta = body.attachment("f.txt").unwrap().clone();
        assert_eq!(meta.digest, "md5-XUFAKrxLKna5cZ2REBfFkg==");
        assert_eq!((meta.length, meta.revpos), (5, 1));
        let mut w2 = edit("a", Some(&r1.rev), serde_json::json!({"v":2}));
        if let DocWrite::Edit { attachments, .. } = &mut w2 {
            attachments.push((
                "f.txt".into(),
                AttachmentInput::Stub {
                    digest: None,
                    revpos: Some(1),
                    content_type: None,
                },
            ));
        }
        let r2 = one(&db, w2).unwrap();
        let body2 = db.rev_body("a", &r2.rev).unwrap().unwrap();
        assert_eq!(body2.attachment("f.txt").unwrap().revpos, 1);
        assert_eq!(db.attachment(&meta.digest).unwrap().unwrap(), b"hello");
        let mut bad = edit("a", Some(&r2.rev), serde_json::json!({}));
        if let DocWrite::Edit { attachments, .. } = &mut bad {
            attachments.push((
                "nope".into(),
                AttachmentInput::Stub {
                    digest: None,
                    revpos: None,
                    content_type: None,
                },
            ));
        }
        assert!(matches!(
            one(&db, bad),
            Err(StorageError::PreconditionFailed(_))
        ));
        // compaction keeps the leaf's attachment
        db.compact().unwrap();
        assert!(db.attachment(&meta.digest).unwrap().is_some());
        assert!(db.rev_body("a", &r1.rev).unwrap().is_none());
    }

    #[test]
    fn replicate_creates_conflicts_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let rep = |hist: &[&str]| DocWrite::Replicate {
            id: "c".into(),
            history: hist.iter().map(|s| s.to_string()).collect(),
            deleted: false,
            body: b"{}".to_vec(),
            attachments: vec![],
            channels: vec![],
            access: Default::default(),
            revs_limit: 1000,
        };
        assert_eq!(one(&db, rep(&["2-b", "1-a"])).unwrap().seq, 1);
        assert_eq!(one(&db, rep(&["2-c", "1-a"])).unwrap().seq, 2);
        assert_eq!(one(&db, rep(&["2-c", "1-a"])).unwrap().seq, 0);
        let meta = db.doc_meta("c").unwrap().unwrap();
        assert_eq!(meta.tree.leaves().len(), 2);
        assert_eq!(meta.winner().unwrap().0, "2-c");
        let ch = since(&db, 0);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].leaves.len(), 2);
    }

    #[test]
    fn channel_index_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let with = |id: &str, parent: Option<&str>, chans: &[&str]| DocWrite::Edit {
            id: id.into(),
            parent: parent.map(Into::into),
            deleted: false,
            body: b"{}".to_vec(),
            canonical: b"{}".to_vec(),
            attachments: vec![],
            channels: chans.iter().map(|c| c.to_string()).collect(),
            access: Default::default(),
            revs_limit: 1000,
            must_exist: false,
        };
        for i in 0..50 {
            let ch = format!("ch{}", i % 10);
            one(&db, with(&format!("d{i}"), None, &[&ch])).unwrap();
        }
        let before = db.docs_read();
        let rows = in_channels(&db, &["ch3", "ch7"], 0);
        assert_eq!(rows.len(), 10);
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            db.docs_read() - before,
            10,
            "reads only the matching entries"
        );
        // moving d3 from ch3 to ch4 leaves a removal marker in ch3
        let rev = db
            .doc_meta("d3")
            .unwrap()
            .unwrap()
            .winner()
            .unwrap()
            .0
            .to_string();
        let moved = one(&db, with("d3", Some(&rev), &["ch4"])).unwrap();
        let ch3 = in_channels(&db, &["ch3"], 50);
        assert_eq!(ch3.len(), 1);
        assert_eq!(
            (ch3[0].seq, ch3[0].removed.clone(), ch3[0].channels.clone()),
            (moved.seq, vec!["ch3".to_string()], vec!["ch4".to_string()])
        );
        // the old index entry is gone: ch3 from 0 lists d3 once, at its new sequence
        let ids: Vec<_> = in_channels(&db, &["ch3"], 0)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids.iter().filter(|i| *i == "d3").count(), 1);
        // a tombstone keeps its parent's channels
        let mut r = durable_write(
            &db,
            vec![DocWrite::Edit {
                id: "d4".into(),
                parent: Some(
                    db.doc_meta("d4")
                        .unwrap()
                        .unwrap()
                        .winner()
                        .unwrap()
                        .0
                        .to_string(),
                ),
                deleted: true,
                body: b"{}".to_vec(),
                canonical: br#"{"_deleted":true}"#.to_vec(),
                attachments: vec![],
                channels: vec![],
                access: Default::default(),
                revs_limit: 1000,
                must_exist: true,
            }],
        )
        .unwrap();
        let del = r.remove(0).unwrap();
        let ch4 = in_channels(&db, &["ch4"], del.seq - 1);
        assert_eq!(ch4.len(), 1);
        assert!(ch4[0].deleted() && ch4[0].removed.is_empty());
    }

    #[test]
    fn local_docs_are_versioned_0_n() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let (r1, _) = db
            .put_local("cp", None, RawValue::from_string("{}".into()).unwrap())
            .unwrap();
        assert_eq!(r1, "0-1");
        assert!(matches!(
            db.put_local("cp", None, RawValue::from_string("{}".into()).unwrap()),
            Err(StorageError::Conflict(_))
        ));
        let (r2, _) = db
            .put_local(
                "cp",
                Some("0-1"),
                RawValue::from_string("{}".into()).unwrap(),
            )
            .unwrap();
        assert_eq!(r2, "0-2");
        assert!(matches!(
            db.delete_local("cp", Some("0-1")),
            Err(StorageError::Conflict(_))
        ));
        db.delete_local("cp", Some("0-2")).unwrap();
        assert!(db.get_local("cp").unwrap().is_none());
        assert_eq!(db.last_seq(), 0, "local docs take no sequence");
    }

    /// The race of issue 13, step by step: an update applied but not yet durable must leave
    /// the document visible at its old sequence; a view keeps showing what it showed while
    /// later writes collect superseded entries around it.
    #[test]
    fn views_show_each_document_at_one_sequence_while_updates_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let with = |id: &str, parent: Option<&str>| DocWrite::Edit {
            id: id.into(),
            parent: parent.map(Into::into),
            deleted: false,
            body: b"{}".to_vec(),
            canonical: b"{}".to_vec(),
            attachments: vec![],
            channels: vec!["c".into()],
            access: Default::default(),
            revs_limit: 1000,
            must_exist: false,
        };
        let a1 = one(&db, with("a", None)).unwrap();
        one(&db, with("b", None)).unwrap();
        assert_eq!(db.last_seq(), 2);
        // applied, not durable
        let (r, ticket) = db.write_docs(vec![with("a", Some(&a1.rev))]).unwrap();
        let a2 = r.into_iter().next().unwrap().unwrap();
        assert_eq!(a2.seq, 3);
        type Rows = Vec<(String, u64)>;
        let seqs = |v: &dyn ChangesView| -> (Rows, Rows) {
            let all = v
                .since(0, false)
                .map(|e| e.map(|e| (e.id, e.seq)).unwrap())
                .collect();
            let ch = v
                .in_channels(&["c".into()], 0)
                .map(|e| e.map(|e| (e.id, e.seq)).unwrap())
                .collect();
            (all, ch)
        };
        let at_two = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        let old_view = db.changes_view();
        assert_eq!(old_view.seq(), 2);
        assert_eq!(seqs(&*old_view), (at_two.clone(), at_two.clone()));
        let desc: Vec<u64> = old_view.since(0, true).map(|e| e.unwrap().seq).collect();
        assert_eq!(desc, vec![2, 1]);
        rt.block_on(db.durable(ticket)).unwrap();
        let at_three = vec![("b".to_string(), 2), ("a".to_string(), 3)];
        {
            let new_view = db.changes_view();
            assert_eq!(new_view.seq(), 3);
            assert_eq!(seqs(&*new_view), (at_three.clone(), at_three.clone()));
        }
        // a write while the old view is open must not collect what it shows
        one(&db, with("c", None)).unwrap();
        assert_eq!(seqs(&*old_view), (at_two.clone(), at_two));
        assert_eq!(db.raw_changes(0, false).count(), 4, "a@1 kept for the view");
        drop(old_view);
        // the next write collects it: the entry, its channel key and its record
        one(&db, with("d", None)).unwrap();
        let raw: Vec<u64> = db.raw_changes(0, false).map(|e| e.unwrap().seq).collect();
        assert_eq!(raw, vec![2, 3, 4, 5]);
        assert_eq!(db.scan(b'g').count(), 0);
        assert!(db.tree.get(channel_key("c", 1)).unwrap().is_none());
        // a document written twice in one batch: only its last entry, superseding the old one
        let b1 = db.doc_meta("b").unwrap().unwrap();
        let b1_rev = b1.winner().unwrap().0.to_string();
        let r = durable_write(&db, vec![with("b", Some(&b1_rev)), with("e", None)]).unwrap();
        let b2 = r[0].as_ref().unwrap().rev.clone();
        let r = durable_write(&db, vec![with("b", Some(&b2)), with("b", None)]).unwrap();
        assert!(matches!(r[1], Err(StorageError::Conflict(_))));
        let ids: Vec<(String, u64)> = since(&db, 0).into_iter().map(|e| (e.id, e.seq)).collect();
        assert_eq!(
            ids,
            vec![
                ("a".to_string(), 3),
                ("c".to_string(), 4),
                ("d".to_string(), 5),
                ("e".to_string(), 7),
                ("b".to_string(), 8)
            ]
        );
        // compaction collects whatever no view needs; a reopened store reads the same
        db.compact().unwrap();
        assert_eq!(db.scan(b'g').count(), 0);
        assert_eq!(db.raw_changes(0, false).count(), 5);
        drop(db);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        assert_eq!(since(&db, 0).len(), 5);
    }

    /// Writers update documents (moving them between channels) while readers open views in a
    /// loop: every view lists every document exactly once, by sequence and through the
    /// channel index, ascending and descending, never above the view's sequence.
    #[test]
    fn concurrent_views_list_every_document_once() {
        const DOCS: usize = 12;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let with = |id: &str, parent: Option<String>, n: usize| DocWrite::Edit {
            id: id.into(),
            parent,
            deleted: false,
            body: format!("{{\"n\":{n}}}").into_bytes(),
            canonical: format!("{{\"n\":{n}}}").into_bytes(),
            attachments: vec![],
            channels: vec!["all".into(), format!("x{}", n % 2)],
            access: Default::default(),
            revs_limit: 1000,
            must_exist: false,
        };
        let ids: Vec<String> = (0..DOCS).map(|i| format!("d{i:02}")).collect();
        durable_write(&db, ids.iter().map(|id| with(id, None, 0)).collect()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // two writers, each owning half the documents, one or two documents per batch
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let db = db.clone();
                let stop = stop.clone();
                let mine: Vec<String> = ids.iter().skip(w).step_by(2).cloned().collect();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let pick: Vec<&String> = (0..1 + n % 2)
                            .map(|k| &mine[(n + k) % mine.len()])
                            .collect();
                        let writes = pick
                            .iter()
                            .map(|id| {
                                let rev = db.doc_meta(id).unwrap().unwrap();
                                let rev = rev.winner().unwrap().0.to_string();
                                with(id, Some(rev), n)
                            })
                            .collect();
                        let (r, t) = db.write_docs(writes).unwrap();
                        assert!(r.iter().all(|r| r.is_ok()));
                        rt.block_on(db.durable(t)).unwrap();
                    }
                    n
                })
            })
            .collect();
        fn check(ids: &[String], what: &str, view: u64, rows: Vec<ChangeEntry>) {
            assert!(rows.iter().all(|e| e.seq <= view), "{what}: above {view}");
            let mut got: Vec<&str> = rows.iter().map(|e| e.id.as_str()).collect();
            got.sort();
            assert_eq!(got, ids, "{what} at {view}: every document once");
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let db = db.clone();
                let ids = ids.clone();
                let check = move |what: &str, view: u64, rows| check(&ids, what, view, rows);
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let view = db.changes_view();
                        let v = view.seq();
                        check("asc", v, view.since(0, false).map(|e| e.unwrap()).collect());
                        check("desc", v, view.since(0, true).map(|e| e.unwrap()).collect());
                        let chans = ["x0".to_string(), "x1".to_string()];
                        let rows = view.in_channels(&chans, 0).map(|e| e.unwrap()).collect();
                        check("channels", v, rows);
                    }
                })
            })
            .collect();
        let mut failure = None;
        for r in readers {
            if let Err(e) = r.join() {
                failure.get_or_insert(e);
            }
        }
        stop.store(true, Ordering::SeqCst);
        let batches: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        if let Some(e) = failure {
            std::panic::resume_unwind(e);
        }
        assert!(batches > 2, "writers ran alongside the readers");
        // with no view open, one more write leaves at most what it supersedes itself
        let rev = db.doc_meta("d00").unwrap().unwrap();
        let rev = rev.winner().unwrap().0.to_string();
        one(&db, with("d00", Some(rev), 0)).unwrap();
        assert!(db.scan(b'g').count() <= 1);
        assert_eq!(since(&db, 0).len(), DOCS);
    }

    #[test]
    fn restamps_move_channels_and_grants_under_a_new_sequence_without_a_new_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let mut w = edit("d", None, serde_json::json!({"x": 1}));
        if let DocWrite::Edit { channels, .. } = &mut w {
            *channels = vec!["a".into()];
        }
        let first = one(&db, w).unwrap();
        let mut access = RevAccess::default();
        access
            .channels
            .insert("bob".into(), ["b".to_string()].into_iter().collect());
        let stamp = |rev: &str, chans: &[&str], access: &RevAccess| Restamp {
            id: "d".into(),
            rev: rev.into(),
            channels: chans.iter().map(|c| c.to_string()).collect(),
            access: access.clone(),
        };
        let (r, ticket) = db
            .restamp_docs(vec![
                stamp(&first.rev, &["b"], &access),
                stamp("1-stale", &["c"], &access),
            ])
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(db.durable(ticket))
            .unwrap();
        let seq = r[0].expect("restamped");
        assert!(seq > first.seq);
        assert_eq!(r[1], None, "a revision that does not win is left alone");
        let meta = db.doc_meta("d").unwrap().unwrap();
        assert_eq!(meta.seq, seq);
        assert_eq!(meta.tree.nodes.len(), 1, "no new revision");
        assert_eq!(meta.tree.nodes[0].seq, first.seq);
        let rows = in_channels(&db, &["a"], first.seq);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].removed, ["a"]);
        assert_eq!(rows[0].channels, ["b"]);
        let grants = db.doc_grants(PrincipalKind::User, "bob").unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].1.channels["b"], seq);
        assert!(db.rev_body("d", &first.rev).unwrap().is_some());
        // nothing changed: no new sequence
        let (r, _) = db
            .restamp_docs(vec![stamp(&first.rev, &["b"], &access)])
            .unwrap();
        assert_eq!(r, [None]);
        // settings
        assert_eq!(db.get_setting("k").unwrap(), None);
        db.put_setting("k", Some(b"v")).unwrap();
        assert_eq!(db.get_setting("k").unwrap().as_deref(), Some(&b"v"[..]));
        db.put_setting("k", None).unwrap();
        assert_eq!(db.get_setting("k").unwrap(), None);
    }
}

#[cfg(test)]
mod corrupt_tests {
    use super::*;

    #[test]
    fn a_corrupt_body_is_an_error_naming_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.database("db").unwrap();
        let (mut r, _) = db
            .write_docs(vec![DocWrite::Edit {
                id: "doc-x".into(),
                parent: None,
                deleted: false,
                body: b"{}".to_vec(),
                canonical: b"{}".to_vec(),
                attachments: vec![],
                channels: vec![],
                access: Default::default(),
                revs_limit: 1000,
                must_exist: false,
            }])
            .unwrap();
        let rev = r.remove(0).unwrap().rev;
        db.tree
            .insert(body_key("doc-x", &rev), &b"\x01\xff"[..])
            .unwrap();
        let err = db.rev_body("doc-x", &rev).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("doc-x"), "{err}");
        db.tree.insert(doc_key("doc-x"), &b"not json"[..]).unwrap();
        assert!(matches!(
            db.doc_meta("doc-x").unwrap_err(),
            StorageError::Corrupt(_)
        ));
    }
}
