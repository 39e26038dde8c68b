//! Document storage: the boundary every backend implements, and the backends.
//!
//! - [`revtree`]: CouchDB revision trees (winner rule, grafting replicated history, pruning).
//! - [`model`]: what callers write and read: edits, replicated revisions, attachments, changes.
//! - [`rules`]: the CouchDB rules every backend shares: conflicts, revision ids and trees,
//!   tombstone channels, attachments, change entries, grants: a write batch decided above
//!   the engine, which only stores its operations.
//! - [`combine`]: concurrent document writers combined into one batch (any backend).
//! - [`sled_store`]: the sled backend: one sled tree per database with prefixed keys, written
//!   atomically with `apply_batch` under a per-database write lock, made durable by a shared
//!   group commit.
//!
//! - [`pg_store`]: the PostgreSQL backend, shared by any number of nodes.
//!
//! Callers use two traits: [`StoreServer`] (open, create, delete and list databases; server
//! values) and [`DatabaseStore`] (one database), and ask domain questions ("rev tree of doc
//! X", "changes since S"); nothing here knows HTTP or authentication. The boundary is async
//! where a backend may wait on I/O: every read or write of data returns a [`BoxFuture`] (the
//! embedded store's is already complete: sled answers at once, on the caller's thread), and
//! long reads come in pages ([`DatabaseStore::docs_page`], the [`ChangesView`] pages, walked
//! with [`Docs`] and [`Entries`]); in-memory accessors (`last_seq`, `subscribe`, …) are plain
//! calls. `tests/conformance.rs` is what every backend must pass.

pub mod combine;
pub mod grant_log;
pub mod json;
pub mod migrate;
pub mod model;
pub mod pg_store;
pub mod revtree;
pub mod rules;
pub mod sled_store;

pub use model::*;
pub use pg_store::{ChangeNotify, PgOptions, PgStore};
pub use revtree::{
    compute_rev, generation, parse_rev, truncate as revtree_truncate, RevNode, RevTree,
};
pub use sled_store::{SledDatabase, SledOptions, Store, DEFAULT_CACHE_MB};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// Errors of the storage layer. The API layer maps each variant to one HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The request is malformed (bad revision id, bad attachment, …).
    #[error("{0}")]
    BadRequest(String),
    /// Missing document, revision, attachment or principal.
    #[error("{0}")]
    NotFound(String),
    /// The edit does not apply to a current leaf.
    #[error("{0}")]
    Conflict(String),
    /// An attachment stub refers to data the store does not have.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The disk or the engine failed (the engine's own error, as text: every backend raises
    /// this one variant).
    #[error("storage failure: {0}")]
    Engine(String),
    /// The store was written by a newer (or unknown) version of syncgate: this build must not
    /// touch it (at startup: exit 2).
    #[error("{0}")]
    Incompatible(String),
    /// Stored bytes could not be decoded (corruption or a bug).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A networked engine cannot be reached (connection refused or lost, pool timeout): the
    /// request may succeed later (503, never 500).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A boxed future, for the async parts of the object-safe store trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Records listed with their keys (databases and their configs, sessions, logins).
pub type KeyedValues = Vec<(String, Vec<u8>)>;

/// Marks a write; pass it to [`DatabaseStore::durable`] before acknowledging the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Kinds of principal records kept beside the documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PrincipalKind {
    User,
    Role,
}

/// A future that is already complete: what the embedded backend returns (its work is done
/// before the call returns; only networked backends wait on I/O).
pub fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// Rows one paged read asks for by default (documents in id order, change entries).
pub const PAGE: usize = 256;

/// The server-level store: where every database's storage lives, the registry of databases
/// created at run time, and the server's own values. `core::Server` holds one of these; the
/// sled backend ([`Store`]) and PostgreSQL ([`PgStore`]) implement it.
pub trait StoreServer: Send + Sync {
    /// Opens (creating if needed) one database's storage. Each call returns a new handle;
    /// open a database once and share the handle.
    fn open_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn DatabaseStore>>>;
    /// Records a database created at run time with its config (JSON, opaque here), so the
    /// next start opens it again. Its storage is created by [`StoreServer::open_database`].
    fn create_database<'a>(&'a self, name: &'a str, config: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// Removes a database: all its data and its registration. Handles still open must not
    /// be used afterwards.
    fn delete_database<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// The databases created at run time, with their stored config, in name order.
    fn list_databases(&self) -> BoxFuture<'_, Result<KeyedValues>>;
    /// A server-wide value kept in the store (e.g. the session-hashing key): the stored one,
    /// or `init()` stored durably on first use. Concurrent first uses (also from other nodes
    /// sharing the store) agree on one value.
    fn server_value<'a>(
        &'a self,
        key: &'a str,
        init: &'a mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> BoxFuture<'a, Result<Vec<u8>>>;
    /// Makes everything written durable (at shutdown; blocks).
    fn flush(&self) -> Result<()>;
    /// Bytes the store takes on this node's disk, for metrics (0 when it lives elsewhere).
    fn size_on_disk(&self) -> u64;
}

/// A consistent read of the by-sequence index (see [`DatabaseStore::changes_view`]), read a
/// page at a time: [`ChangesView::since_page`] and the others return at most `limit` entries
/// (fewer: the range is exhausted). Callers usually go through [`Entries`]
/// (`view.since(…)`, `view.in_channels(…)`), which fetches the pages.
pub trait ChangesView: Send + Sync {
    /// The durable sequence the view shows: no entry above it.
    fn seq(&self) -> u64;
    /// Entries with sequence in (`after`, `seq`], ascending: the first `limit`.
    fn since_page(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<ChangeEntry>>>;
    /// Entries with sequence in (`since`, `seq`] and below `below`, descending: the first
    /// `limit`.
    fn since_page_desc(
        &self,
        since: u64,
        below: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChangeEntry>>>;
    /// Entries with sequence in (`after`, `seq`] whose document is or was in one of
    /// `channels`, ascending, read through the channel index (no scan of unrelated
    /// documents): the first `limit`.
    fn channels_page<'a>(
        &'a self,
        channels: &'a [String],
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ChangeEntry>>>;
}

impl<'v> dyn ChangesView + 'v {
    /// Entries with sequence in (`since`, `seq`], ascending (or descending), a page at a time.
    pub fn since(&self, since: u64, descending: bool) -> Entries<'_, 'v> {
        Entries::new(
            self,
            if descending {
                Range::Desc {
                    since,
                    below: self.seq().saturating_add(1),
                }
            } else {
                Range::Asc { after: since }
            },
        )
    }

    /// Entries with sequence in (`since`, `seq`] in one of `channels`, ascending, a page at a
    /// time.
    pub fn in_channels(&self, channels: &[String], since: u64) -> Entries<'_, 'v> {
        Entries::new(
            self,
            Range::Channels {
                channels: channels.to_vec(),
                after: since,
            },
        )
    }
}

enum Range {
    Asc { after: u64 },
    Desc { since: u64, below: u64 },
    Channels { channels: Vec<String>, after: u64 },
}

/// The entries of a change view in one range, fetched a page at a time: `next().await`.
pub struct Entries<'a, 'v> {
    view: &'a (dyn ChangesView + 'v),
    range: Range,
    page: std::collections::VecDeque<ChangeEntry>,
    size: usize,
    done: bool,
}

impl<'a, 'v> Entries<'a, 'v> {
    fn new(view: &'a (dyn ChangesView + 'v), range: Range) -> Self {
        Entries {
            view,
            range,
            page: Default::default(),
            size: PAGE,
            done: false,
        }
    }

    /// Asks for `n` entries in the first page (a caller that needs only a few; later pages
    /// are full ones).
    pub fn first_page(mut self, n: usize) -> Self {
        self.size = n.clamp(1, PAGE);
        self
    }

    /// The next entry (`None`: no more).
    pub async fn next(&mut self) -> Option<Result<ChangeEntry>> {
        loop {
            if let Some(e) = self.page.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            let limit = self.size;
            self.size = PAGE;
            let page = match &self.range {
                Range::Asc { after } => self.view.since_page(*after, limit).await,
                Range::Desc { since, below } => {
                    self.view.since_page_desc(*since, *below, limit).await
                }
                Range::Channels { channels, after } => {
                    self.view.channels_page(channels, *after, limit).await
                }
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if page.len() < limit {
                self.done = true;
            }
            if let Some(last) = page.last() {
                match &mut self.range {
                    Range::Asc { after } | Range::Channels { after, .. } => *after = last.seq,
                    Range::Desc { below, .. } => *below = last.seq,
                }
            }
            self.page.extend(page);
        }
    }
}

/// The documents of a database in id order, fetched a page at a time
/// ([`DatabaseStore::docs_page`]): `next().await`.
pub struct Docs<'a> {
    store: &'a dyn DatabaseStore,
    cursor: String,
    /// The cursor itself is still to be read (the first page).
    inclusive: bool,
    descending: bool,
    page: std::collections::VecDeque<(String, DocMeta)>,
    size: usize,
    done: bool,
}

impl Docs<'_> {
    /// Asks for `n` documents in the first page.
    pub fn first_page(mut self, n: usize) -> Self {
        self.size = n.clamp(1, PAGE);
        self
    }

    /// The next document (`None`: no more).
    pub async fn next(&mut self) -> Option<Result<(String, DocMeta)>> {
        loop {
            if let Some(d) = self.page.pop_front() {
                return Some(Ok(d));
            }
            if self.done {
                return None;
            }
            let limit = self.size;
            self.size = PAGE;
            let page = self
                .store
                .docs_page(&self.cursor, self.inclusive, self.descending, limit)
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if page.len() < limit {
                self.done = true;
            }
            if let Some((last, _)) = page.last() {
                self.cursor = last.clone();
                self.inclusive = false;
            }
            self.page.extend(page);
        }
    }
}

impl<'s> dyn DatabaseStore + 's {
    /// Documents in id order from `start` (inclusive; descending: from `start` down, the
    /// last document when `start` is empty), for `_all_docs`, a page at a time.
    pub fn docs_from(&self, start: &str, descending: bool) -> Docs<'_> {
        Docs {
            store: self,
            cursor: start.to_string(),
            inclusive: true,
            descending,
            page: Default::default(),
            size: PAGE,
            done: false,
        }
    }
}

/// A closure building a principal record from its sequence ([`DatabaseStore::put_principal`]).
pub type BuildRecord<'a> = &'a mut (dyn FnMut(u64) -> std::result::Result<Vec<u8>, String> + Send);

/// A document's metadata and the body stored with it, if any: (revision, body).
pub type MetaWithBody = (DocMeta, Option<(String, StoredBody)>);

/// One database's storage: the sled backend and PostgreSQL implement it. What reads or writes
/// data returns a future (the embedded store's is already complete when returned; PostgreSQL
/// awaits the server); in-memory accessors are plain calls.
pub trait DatabaseStore: Send + Sync {
    /// Name of the database.
    fn name(&self) -> &str;

    // --- documents ---------------------------------------------------------------------------
    /// Metadata (revision tree, sequence) of a document.
    fn doc_meta<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<DocMeta>>>;
    /// The stored body of one revision (user fields plus `_attachments` metadata).
    fn rev_body<'a>(
        &'a self,
        id: &'a str,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredBody>>>;
    /// [`DatabaseStore::doc_meta`] of several documents, in the order asked (`None`: no such
    /// document; an id asked twice is answered twice). What batch readers (`_bulk_get`,
    /// `_revs_diff`, `include_docs`) call: a networked backend answers in one round trip.
    fn doc_metas<'a>(&'a self, ids: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Option<DocMeta>>>>;
    /// [`DatabaseStore::rev_body`] of several (document id, revision) pairs, in the order
    /// asked (`None`: no such body stored).
    fn rev_bodies<'a>(
        &'a self,
        revs: &'a [(&'a str, &'a str)],
    ) -> BoxFuture<'a, Result<Vec<Option<StoredBody>>>>;
    /// [`DatabaseStore::doc_metas`] with, for each document, the body the backend keeps in the
    /// same record as its metadata, if any (revision, body): the embedded store keeps one
    /// (normally the winner's), so a reader that renders the winner reads the document once
    /// instead of twice. The default reads the metadata only.
    fn doc_metas_with_bodies<'a>(
        &'a self,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<MetaWithBody>>>> {
        Box::pin(async move {
            Ok(self
                .doc_metas(ids)
                .await?
                .into_iter()
                .map(|m| m.map(|m| (m, None)))
                .collect())
        })
    }
    /// Applies document writes in order, atomically, under the database's write lock.
    /// Each write gets its own result; the ticket covers all successful ones.
    fn write_docs(
        &self,
        writes: Vec<DocWrite>,
    ) -> BoxFuture<'_, Result<(Vec<Result<WriteOutcome>>, Ticket)>>;
    /// [`DatabaseStore::write_docs`] for concurrent writers: a backend may apply the writes of
    /// callers that arrive while a batch is being applied together, in arrival order, as one
    /// atomic batch (each caller still gets its own results). What request handlers call.
    fn write_docs_shared(
        &self,
        writes: Vec<DocWrite>,
    ) -> BoxFuture<'_, Result<(Vec<Result<WriteOutcome>>, Ticket)>> {
        self.write_docs(writes)
    }
    /// Live documents (winner not deleted).
    fn doc_count(&self) -> BoxFuture<'_, Result<u64>>;
    /// Up to `limit` documents in id order from `start` (ascending: ids >= `start`, or >
    /// with `inclusive` false; descending: ids <= `start` (<), every id when `start` is empty
    /// and inclusive). Callers page with [`Docs`] (`store.docs_from(…)`).
    fn docs_page<'a>(
        &'a self,
        start: &'a str,
        inclusive: bool,
        descending: bool,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(String, DocMeta)>>>;

    // --- changes -----------------------------------------------------------------------------
    /// Last sequence whose write is durable (what `_changes` and `update_seq` show). A
    /// sequence becomes visible when a [`DatabaseStore::durable`] call covering it returns,
    /// so every writer must call `durable` after writing (document and principal writes).
    fn last_seq(&self) -> u64;
    /// A consistent view of the change index as of [`DatabaseStore::last_seq`] at the call:
    /// every document that existed then appears exactly once, at the sequence it had then
    /// (never at neither its old nor its new one while a concurrent update is being made
    /// durable), and nothing newer, however many pages it is read in. Hold it for one
    /// response: while it lives (it is registered with the store), the store keeps the entries
    /// it may still need.
    fn changes_view(&self) -> Box<dyn ChangesView + '_>;
    /// A receiver that sees `last_seq` whenever a write becomes durable: the feeds' wake-up.
    fn subscribe(&self) -> watch::Receiver<u64>;

    // --- grants of the sync function (the access index) ---------------------------------------
    /// What documents grant one user or role: (document id, grant), in document id order.
    /// Written with the documents (a winning revision's `access`), so a grant and its document
    /// are always in the same atomic batch.
    fn doc_grants<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DocGrant)>>>;
    /// Changes whenever a write changes the access index (so computed channel sets can be
    /// cached until then).
    fn grants_version(&self) -> u64;
    /// The access-index entries written after grants version `since`, oldest first, each
    /// with its new state — what a cache of effective channels applies to catch up with
    /// [`DatabaseStore::grants_version`]. `None` when the store cannot tell (it keeps a bounded
    /// history, or none): the caller then drops everything it computed.
    fn grant_changes_since(&self, since: u64) -> Option<(u64, Vec<GrantChange>)> {
        let _ = since;
        None
    }

    /// Applies new channels and grants to documents' winning revisions ([`Restamp`]), in
    /// order, as one batch: each gets its new sequence, or `None` when `rev` no longer wins
    /// (or the document is gone) or nothing changed.
    fn restamp_docs(&self, docs: Vec<Restamp>)
        -> BoxFuture<'_, Result<(Vec<Option<u64>>, Ticket)>>;

    /// Makes every later change get a sequence above `seq` (no-op when the database is past
    /// it already). A database copied from another store starts after the source's last
    /// sequence, so no client checkpoint taken on the source can hide a copied change.
    fn raise_seq(&self, seq: u64) -> BoxFuture<'_, Result<Ticket>>;

    // --- per-database settings (opaque to this layer) -----------------------------------------
    /// A setting stored with the database (e.g. the sync function set by the admin API).
    fn get_setting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Stores (`Some`) or removes (`None`) a setting.
    fn put_setting<'a>(
        &'a self,
        key: &'a str,
        value: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Ticket>>;
    /// A receiver that sees a new value whenever another node sharing this database changed
    /// its settings (so the database reloads what it derived from them, e.g. the sync
    /// function). `None` (the default): settings change only through this handle.
    fn settings_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    // --- attachments -------------------------------------------------------------------------
    fn attachment<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    // --- local documents ---------------------------------------------------------------------
    fn get_local<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<LocalDoc>>>;
    /// Stores a local doc (`body`: its own members as a JSON object, kept as text); `rev` must
    /// match the stored one (None for a new doc).
    fn put_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
        body: Box<serde_json::value::RawValue>,
    ) -> BoxFuture<'a, Result<(String, Ticket)>>;
    fn delete_local<'a>(
        &'a self,
        id: &'a str,
        rev: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Ticket>>;

    // --- principals and sessions (opaque JSON to this layer) ---------------------------------
    fn get_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Stores a principal record under a new sequence (grants are ordered with documents).
    /// `build` receives that sequence and returns the record's bytes, so the record can carry
    /// the sequence of its own write; it runs under the write lock and must be quick.
    fn put_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<(u64, Ticket)>>;
    /// [`DatabaseStore::put_principal`] only if the stored record is still `expected` (`None`:
    /// absent), compared under the write lock, so a read-modify-write cannot overwrite what
    /// another writer — another node sharing the store — wrote after it read. `Ok(None)`:
    /// the record changed, nothing was written (read it again and retry).
    fn put_principal_if<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
        expected: Option<&'a [u8]>,
        build: BuildRecord<'a>,
    ) -> BoxFuture<'a, Result<Option<(u64, Ticket)>>>;
    fn delete_principal<'a>(
        &'a self,
        kind: PrincipalKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Ticket>>;
    fn list_principals(&self, kind: PrincipalKind) -> BoxFuture<'_, Result<Vec<String>>>;
    fn get_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    fn put_session<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>>;
    fn delete_sessions<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>>;
    fn list_sessions(&self) -> BoxFuture<'_, Result<KeyedValues>>;

    // --- OpenID Connect login transactions (opaque JSON to this layer) ------------------------
    /// Stores a pending login (the code flow's state, PKCE verifier, nonce) under a key the
    /// caller derives from the state (a keyed hash: the store never sees the state itself).
    fn put_login<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<Ticket>>;
    /// Removes a pending login and returns it: atomic, so of two callers with the same key at
    /// most one gets the record (a login transaction is single use).
    fn take_login<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Every pending login (for collecting expired ones).
    fn list_logins(&self) -> BoxFuture<'_, Result<KeyedValues>>;
    fn delete_logins<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Ticket>>;

    // --- maintenance -------------------------------------------------------------------------
    /// Purges bodies of non-leaf revisions and unreferenced attachments.
    fn compact(&self) -> BoxFuture<'_, Result<CompactStats>>;
    /// Waits until the write behind `ticket` is on disk.
    fn durable(&self, ticket: Ticket) -> BoxFuture<'_, Result<()>>;
    /// Document trees, bodies and change entries read from the store (the `docs_read` metric).
    fn docs_read(&self) -> u64;
    /// Whether the store can serve now (`/_ping` on the metrics port): an error when it cannot
    /// (a networked store it cannot reach: [`StorageError::Unavailable`]). The embedded store
    /// is always there.
    fn health(&self) -> BoxFuture<'_, Result<()>> {
        ready(Ok(()))
    }
}
