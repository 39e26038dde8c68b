//! The storage conformance suite: what every backend must do, checked through the
//! [`StoreServer`] and [`DatabaseStore`] traits only. Each test runs once per backend listed in
//! [`backends`]; a new backend adds itself there and must pass all of them.
//!
//! Engine internals (sled's key layout, its superseded-entry collection, a batch applied but
//! not yet flushed) are tested beside the engine, not here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};
use syncgate_storage::{
    canonical_json, AttachmentInput, BoxFuture, ChangeEntry, ChangeNotify, DatabaseStore, DocWrite,
    Entries, PgOptions, PgStore, PrincipalKind, Restamp, RevAccess, StorageError, Store,
    StoreServer, WriteOutcome,
};

#[path = "support/pg_cluster.rs"]
mod pg_cluster;

// --- backends ------------------------------------------------------------------------------

/// A backend under test: makes fresh, empty stores.
trait Backend {
    fn name(&self) -> &'static str;
    fn create(&self) -> BoxFuture<'_, Box<dyn TestStore>>;
}

/// One store of a backend under test.
trait TestStore: Send + Sync {
    fn server(&self) -> Arc<dyn StoreServer>;
    /// Closes the store and opens the same data again, as a process restart would. The test
    /// drops its database handles first.
    fn restart(&mut self) -> BoxFuture<'_, ()>;
}

/// Every backend the suite runs against.
fn backends() -> Vec<Box<dyn Backend>> {
    vec![Box::new(Sled), Box::new(Postgres)]
}

/// PostgreSQL: each store a fresh PostgreSQL database on the test server (see `pg_cluster`).
struct Postgres;

struct PgTestStore {
    options: PgOptions,
    store: Option<Arc<PgStore>>,
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create(&self) -> BoxFuture<'_, Box<dyn TestStore>> {
        Box::pin(async {
            let options = PgOptions {
                url: pg_cluster::fresh_database(),
                pool_size: 8,
                notify: ChangeNotify::Listen,
            };
            let store = PgStore::open(&options).await.unwrap();
            Box::new(PgTestStore {
                options,
                store: Some(Arc::new(store)),
            }) as Box<dyn TestStore>
        })
    }
}

impl TestStore for PgTestStore {
    fn server(&self) -> Arc<dyn StoreServer> {
        self.store.clone().unwrap()
    }

    fn restart(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            drop(self.store.take());
            self.store = Some(Arc::new(PgStore::open(&self.options).await.unwrap()));
        })
    }
}

struct Sled;

struct SledStore {
    dir: tempfile::TempDir,
    store: Option<Arc<Store>>,
}

impl Backend for Sled {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn create(&self) -> BoxFuture<'_, Box<dyn TestStore>> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Box::pin(std::future::ready(Box::new(SledStore {
            dir,
            store: Some(Arc::new(store)),
        }) as Box<dyn TestStore>))
    }
}

impl TestStore for SledStore {
    fn server(&self) -> Arc<dyn StoreServer> {
        self.store.clone().unwrap()
    }

    fn restart(&mut self) -> BoxFuture<'_, ()> {
        let store = self.store.take().unwrap();
        store.flush().unwrap();
        drop(store);
        self.store = Some(Arc::new(Store::open(self.dir.path()).unwrap()));
        Box::pin(std::future::ready(()))
    }
}

/// Runs a test body against every backend, naming the backend when it fails.
macro_rules! conformance {
    ($($name:ident($store:ident) $body:block)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for backend in backends() {
                let name = backend.name();
                let mut store = backend.create().await;
                let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
                    let $store: &mut dyn TestStore = &mut *store;
                    $body
                }))
                .await;
                if let Err(e) = outcome {
                    eprintln!("backend {name}: {} failed", stringify!($name));
                    std::panic::resume_unwind(e);
                }
            }
        }
    )*};
}

// --- helpers -------------------------------------------------------------------------------

fn edit(id: &str, parent: Option<&str>, body: Value) -> DocWrite {
    DocWrite::Edit {
        id: id.into(),
        parent: parent.map(Into::into),
        deleted: false,
        body: serde_json::to_vec(&body).unwrap(),
        canonical: canonical_json(&body),
        attachments: vec![],
        channels: vec![],
        access: RevAccess::default(),
        revs_limit: 1000,
        must_exist: false,
    }
}

fn in_channels(w: DocWrite, chans: &[&str]) -> DocWrite {
    match w {
        DocWrite::Edit {
            id,
            parent,
            deleted,
            body,
            canonical,
            attachments,
            access,
            revs_limit,
            must_exist,
            ..
        } => DocWrite::Edit {
            id,
            parent,
            deleted,
            body,
            canonical,
            attachments,
            channels: chans.iter().map(|c| c.to_string()).collect(),
            access,
            revs_limit,
            must_exist,
        },
        other => other,
    }
}

fn delete(id: &str, parent: Option<&str>) -> DocWrite {
    DocWrite::Edit {
        id: id.into(),
        parent: parent.map(Into::into),
        deleted: true,
        body: b"{}".to_vec(),
        canonical: br#"{"_deleted":true}"#.to_vec(),
        attachments: vec![],
        channels: vec![],
        access: RevAccess::default(),
        revs_limit: 1000,
        must_exist: true,
    }
}

fn replicate(id: &str, history: &[&str], deleted: bool, chans: &[&str]) -> DocWrite {
    DocWrite::Replicate {
        id: id.into(),
        history: history.iter().map(|s| s.to_string()).collect(),
        deleted,
        body: b"{}".to_vec(),
        attachments: vec![],
        channels: chans.iter().map(|c| c.to_string()).collect(),
        access: RevAccess::default(),
        revs_limit: 1000,
    }
}

/// Writes through the shared (combining) path and waits until durable, as handlers do.
async fn write(
    db: &dyn DatabaseStore,
    w: Vec<DocWrite>,
) -> Vec<Result<WriteOutcome, StorageError>> {
    let (r, t) = db.write_docs_shared(w).await.unwrap();
    db.durable(t).await.unwrap();
    r
}

async fn one(db: &dyn DatabaseStore, w: DocWrite) -> Result<WriteOutcome, StorageError> {
    write(db, vec![w]).await.remove(0)
}

async fn winner(db: &dyn DatabaseStore, id: &str) -> String {
    db.doc_meta(id)
        .await
        .unwrap()
        .unwrap()
        .winner()
        .unwrap()
        .0
        .to_string()
}

async fn since(db: &dyn DatabaseStore, since: u64, descending: bool) -> Vec<ChangeEntry> {
    let view = db.changes_view();
    collect(view.since(since, descending)).await
}

async fn channel_rows(db: &dyn DatabaseStore, chans: &[&str], since: u64) -> Vec<ChangeEntry> {
    let chans: Vec<String> = chans.iter().map(|c| c.to_string()).collect();
    let view = db.changes_view();
    collect(view.in_channels(&chans, since)).await
}

async fn collect(mut entries: Entries<'_, '_>) -> Vec<ChangeEntry> {
    let mut rows = Vec::new();
    while let Some(e) = entries.next().await {
        rows.push(e.unwrap());
    }
    rows
}

async fn docs(mut docs: syncgate_storage::Docs<'_>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Some(d) = docs.next().await {
        ids.push(d.unwrap().0);
    }
    ids
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap()
}

fn ids(rows: &[ChangeEntry]) -> Vec<(&str, u64)> {
    rows.iter().map(|e| (e.id.as_str(), e.seq)).collect()
}

fn with_attachment(mut w: DocWrite, name: &str, input: AttachmentInput) -> DocWrite {
    match &mut w {
        DocWrite::Edit { attachments, .. } | DocWrite::Replicate { attachments, .. } => {
            attachments.push((name.into(), input))
        }
    }
    w
}

fn data(bytes: &[u8]) -> AttachmentInput {
    AttachmentInput::Data {
        content_type: "text/plain".into(),
        data: bytes.to_vec(),
        revpos: None,
    }
}

async fn stub(digest: Option<&str>) -> AttachmentInput {
    AttachmentInput::Stub {
        digest: digest.map(Into::into),
        revpos: None,
        content_type: None,
    }
}

// --- the suite -----------------------------------------------------------------------------

conformance! {
    rev_trees_and_conflicts(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let a = one(db, edit("doc", None, json!({"n": 1}))).await.unwrap();
        // deterministic: MD5 over parent, deleted flag and canonical body
        assert_eq!(a.rev, "1-50133ddd8e49efad34ad9ecae4cb9907");
        assert_eq!(a.seq, 1);
        // a live document needs its parent
        assert!(matches!(one(db, edit("doc", None, json!({}))).await, Err(StorageError::Conflict(_))));
        let b = one(db, edit("doc", Some(&a.rev), json!({"n": 2}))).await.unwrap();
        assert!(b.rev.starts_with("2-"));
        // the parent must be a current leaf
        assert!(matches!(
            one(db, edit("doc", Some(&a.rev), json!({}))).await,
            Err(StorageError::Conflict(_))
        ));
        assert!(matches!(
            one(db, edit("new", Some("1-abc"), json!({}))).await,
            Err(StorageError::Conflict(_))
        ));
        assert!(matches!(
            one(db, edit("doc", Some("x-y"), json!({}))).await,
            Err(StorageError::BadRequest(_))
        ));
        // a replicated branch makes a conflict; the winner is the highest rev string
        let r = one(db, replicate("doc", &["2-ffff", &a.rev], false, &[])).await.unwrap();
        assert_eq!((r.rev.as_str(), r.seq), ("2-ffff", 3));
        let meta = db.doc_meta("doc").await.unwrap().unwrap();
        assert_eq!(meta.tree.leaves().len(), 2);
        assert_eq!(winner(db, "doc").await, "2-ffff");
        // replicating a known revision is a no-op
        assert_eq!(one(db, replicate("doc", &["2-ffff", &a.rev], false, &[])).await.unwrap().seq, 0);
        // the change entry lists every leaf, winner first, at the latest sequence
        let rows = since(db, 0, false).await;
        assert_eq!(ids(&rows), vec![("doc", 3)]);
        let leaves: Vec<&str> = rows[0].leaves.iter().map(|l| l.rev.as_str()).collect();
        assert_eq!(leaves, vec!["2-ffff", b.rev.as_str()]);
        // a deleted branch loses to a live one of lower generation
        one(db, delete("doc", Some("2-ffff"))).await.unwrap();
        assert_eq!(winner(db, "doc").await, b.rev);
        // the same edit on another store gives the same revision
        let other = s.server().open_database("other").await.unwrap();
        assert_eq!(one(&*other, edit("doc", None, json!({"n": 1}))).await.unwrap().rev, a.rev);
        // same document twice in one batch: the second sees the first
        let r = write(db, vec![edit("t", None, json!({})), edit("t", None, json!({"x": 1}))]).await;
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(StorageError::Conflict(_))));
    }

    bodies_come_back_as_sent(s) {
        let db = s.server().open_database("db").await.unwrap();
        let text = br#"{"z":12345678901234567890123,"a":90.28571428571429,"e":1e400,"m":[1.0,{"y":2,"b":3}]}"#;
        let value: Value = serde_json::from_slice(text).unwrap_or(Value::Null);
        let w = DocWrite::Edit {
            id: "f".into(),
            parent: None,
            deleted: false,
            body: text.to_vec(),
            canonical: canonical_json(&value),
            attachments: vec![],
            channels: vec![],
            access: RevAccess::default(),
            revs_limit: 1000,
            must_exist: false,
        };
        let r = one(&*db, w).await.unwrap();
        assert_eq!(db.rev_body("f", &r.rev).await.unwrap().unwrap().json, text.to_vec());
        drop(db);
        s.restart().await;
        let db = s.server().open_database("db").await.unwrap();
        assert_eq!(db.rev_body("f", &r.rev).await.unwrap().unwrap().json, text.to_vec());
    }

    tombstones(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        assert!(matches!(one(db, delete("none", None)).await, Err(StorageError::NotFound(_))));
        let a = one(db, in_channels(edit("d", None, json!({})), &["red"])).await.unwrap();
        one(db, edit("e", None, json!({}))).await.unwrap();
        assert_eq!(db.doc_count().await.unwrap(), 2);
        let del = one(db, delete("d", Some(&a.rev))).await.unwrap();
        assert!(del.rev.starts_with("2-"));
        let meta = db.doc_meta("d").await.unwrap().unwrap();
        assert_eq!(meta.winner(), Some((del.rev.as_str(), true)));
        assert!(!meta.is_live());
        assert_eq!(db.doc_count().await.unwrap(), 1);
        // the tombstone stays in its parent's channels: the deletion reaches red's readers
        let red = channel_rows(db, &["red"], a.seq).await;
        assert_eq!(ids(&red), vec![("d", del.seq)]);
        assert!(red[0].deleted() && red[0].removed.is_empty());
        assert_eq!(red[0].channels, vec!["red".to_string()]);
        // deleting it again: conflict with the tombstone as parent, not found without one
        assert!(matches!(one(db, delete("d", Some(&del.rev))).await, Err(StorageError::Conflict(_))));
        assert!(matches!(one(db, delete("d", None)).await, Err(StorageError::NotFound(_))));
        // a new edit without a parent continues from the tombstone
        let again = one(db, edit("d", None, json!({"back": true}))).await.unwrap();
        assert!(again.rev.starts_with("3-"));
        assert_eq!(db.doc_count().await.unwrap(), 2);
        // a replicated tombstone inherits its nearest known ancestor's channels
        let r1 = one(db, replicate("r", &["1-a"], false, &["blue"])).await.unwrap();
        let r2 = one(db, replicate("r", &["3-c", "2-b", "1-a"], true, &[])).await.unwrap();
        let blue = channel_rows(db, &["blue"], r1.seq).await;
        assert_eq!(ids(&blue), vec![("r", r2.seq)]);
        assert!(blue[0].deleted());
    }

    revs_limit_prunes_ancestors_not_leaves(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let limited = |id: &str, parent: Option<&str>, n: u64| match edit(id, parent, json!({"n": n})) {
            DocWrite::Edit { id, parent, deleted, body, canonical, attachments, channels, access, must_exist, .. } => {
                DocWrite::Edit { id, parent, deleted, body, canonical, attachments, channels, access, revs_limit: 3, must_exist }
            }
            other => other,
        };
        let mut revs = vec![one(db, limited("d", None, 0)).await.unwrap().rev];
        for n in 1..6 {
            let r = one(db, limited("d", Some(revs.last().unwrap()), n)).await.unwrap();
            revs.push(r.rev);
        }
        // a conflicting leaf from early on survives pruning
        one(db, replicate("d", &["2-zzzz", &revs[0]], false, &[])).await.unwrap();
        let r = one(db, limited("d", Some(&revs[5]), 6)).await.unwrap();
        revs.push(r.rev);
        let meta = db.doc_meta("d").await.unwrap().unwrap();
        assert_eq!(meta.tree.history(&revs[6]).len(), 3, "the winner's branch keeps 3 revision ids");
        assert!(meta.tree.contains("2-zzzz"), "leaves are never pruned");
        assert!(!meta.tree.contains(&revs[2]));
        assert!(db.rev_body("d", &revs[2]).await.unwrap().is_none(), "pruned bodies are gone");
        assert!(db.rev_body("d", &revs[6]).await.unwrap().is_some());
    }

    sequences_are_never_reused(s) {
        let db = s.server().open_database("db").await.unwrap();
        let a = one(&*db, edit("a", None, json!({}))).await.unwrap();
        let b = one(&*db, edit("b", None, json!({}))).await.unwrap();
        let a2 = one(&*db, edit("a", Some(&a.rev), json!({"v": 2}))).await.unwrap();
        assert_eq!((a.seq, b.seq, a2.seq), (1, 2, 3));
        // principals take sequences from the same counter; local documents take none
        let (p, t) = db.put_principal(PrincipalKind::User, "u", &mut |_| Ok(b"{}".to_vec())).await.unwrap();
        db.durable(t).await.unwrap();
        assert_eq!(p, 4);
        let (_, t) = db.put_local("cp", None, raw("{}")).await.unwrap();
        db.durable(t).await.unwrap();
        assert_eq!(db.last_seq(), 4);
        // a refused write takes no sequence
        assert!(one(&*db, edit("a", None, json!({}))).await.is_err());
        assert_eq!(db.last_seq(), 4);
        drop(db);
        s.restart().await;
        let db = s.server().open_database("db").await.unwrap();
        assert_eq!(db.last_seq(), 4);
        let c = one(&*db, edit("c", None, json!({}))).await.unwrap();
        assert_eq!(c.seq, 5, "after a restart, numbering continues");
        assert_eq!(
            ids(&since(&*db, 0, false).await),
            vec![("b", 2), ("a", 3), ("c", 5)]
        );
    }

    changes_since_and_in_channels(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let mut rx = db.subscribe();
        for i in 0..30 {
            let ch = format!("ch{}", i % 5);
            one(db, in_channels(edit(&format!("d{i:02}"), None, json!({"i": i})), &[&ch, "all"])).await.unwrap();
        }
        assert!(rx.has_changed().unwrap(), "a durable write wakes subscribers");
        assert_eq!(*rx.borrow_and_update(), 30);
        assert_eq!(db.last_seq(), 30);
        let asc = since(db, 10, false).await;
        assert_eq!(asc.len(), 20);
        assert!(asc.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(asc[0].seq, 11);
        let desc = since(db, 25, true).await;
        assert_eq!(desc.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![30, 29, 28, 27, 26]);
        // a channel-limited read touches only its channels' entries
        let before = db.docs_read();
        let rows = channel_rows(db, &["ch1", "ch3"], 0).await;
        assert_eq!(rows.len(), 12);
        assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(db.docs_read() - before, 12, "reads only the matching entries");
        // a document in two asked channels appears once
        assert_eq!(channel_rows(db, &["ch1", "all"], 0).await.len(), 30);
        // a document that leaves a channel shows there once, at its new sequence, as removed
        let rev = winner(db, "d01").await;
        let moved = one(db, in_channels(edit("d01", Some(&rev), json!({})), &["ch2"])).await.unwrap();
        let ch1 = channel_rows(db, &["ch1"], 0).await;
        assert_eq!(ch1.iter().filter(|e| e.id == "d01").count(), 1);
        let row = ch1.iter().find(|e| e.id == "d01").unwrap();
        assert_eq!(row.seq, moved.seq);
        assert_eq!(row.removed, vec!["all".to_string(), "ch1".to_string()]);
        assert_eq!(row.channels, vec!["ch2".to_string()]);
        // the by-sequence index lists each document once, at its latest sequence
        let all = since(db, 0, false).await;
        assert_eq!(all.len(), 30);
        assert_eq!(all.last().map(|e| (e.id.as_str(), e.seq)), Some(("d01", 31)));
        // documents in id order, both ways, from a start key
        let from: Vec<String> = docs(db.docs_from("d28", false)).await;
        assert_eq!(from, vec!["d28", "d29"]);
        let back: Vec<String> = docs(db.docs_from("d01", true)).await;
        assert_eq!(back, vec!["d01", "d00"]);
    }

    attachments_by_digest_are_stored_once(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let a = one(db, with_attachment(edit("a", None, json!({})), "f.txt", data(b"hello"))).await.unwrap();
        let meta = db.rev_body("a", &a.rev).await.unwrap().unwrap().attachment("f.txt").unwrap().clone();
        assert_eq!(meta.digest, "md5-XUFAKrxLKna5cZ2REBfFkg==");
        assert_eq!((meta.length, meta.revpos, meta.content_type.as_str()), (5, 1, "text/plain"));
        // the same data in another document: one copy, by digest
        one(db, with_attachment(edit("b", None, json!({})), "g.txt", data(b"hello"))).await.unwrap();
        assert_eq!(db.attachment(&meta.digest).await.unwrap().unwrap(), b"hello");
        // a stub keeps the parent's attachment (and its revpos); the rev id covers digests
        let a2 = one(db, with_attachment(edit("a", Some(&a.rev), json!({"v": 2})), "f.txt", stub(None).await)).await.unwrap();
        let kept = db.rev_body("a", &a2.rev).await.unwrap().unwrap();
        assert_eq!(kept.attachment("f.txt").unwrap().revpos, 1);
        // a stub naming stored data by digest resolves in any document
        let c = one(db, with_attachment(edit("c", None, json!({})), "h", stub(Some(&meta.digest)).await)).await.unwrap();
        let h = db.rev_body("c", &c.rev).await.unwrap().unwrap().attachment("h").unwrap().clone();
        assert_eq!((h.length, h.digest.as_str()), (5, meta.digest.as_str()));
        // ... also when the data came earlier in the same batch
        let fresh = syncgate_storage::attachment_digest(b"brand new");
        let r = write(db, vec![
            with_attachment(edit("x", None, json!({})), "n", data(b"brand new")),
            with_attachment(edit("y", None, json!({})), "n", stub(Some(&fresh)).await),
        ]).await;
        let y = r[1].as_ref().unwrap();
        assert_eq!(db.rev_body("y", &y.rev).await.unwrap().unwrap().attachment("n").unwrap().length, 9);
        // a stub for data the store does not have is refused, and writes nothing
        let before = db.last_seq();
        assert!(matches!(
            one(db, with_attachment(edit("a", Some(&a2.rev), json!({})), "nope", stub(None).await)).await,
            Err(StorageError::PreconditionFailed(_))
        ));
        assert!(matches!(
            one(db, with_attachment(edit("z", None, json!({})), "q", stub(Some("md5-AAAAAAAAAAAAAAAAAAAAAA==")).await)).await,
            Err(StorageError::PreconditionFailed(_))
        ));
        assert_eq!(db.last_seq(), before);
        assert_eq!(winner(db, "a").await, a2.rev);
    }

    compaction(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let a = one(db, with_attachment(edit("a", None, json!({})), "f", data(b"old data"))).await.unwrap();
        let old_digest = syncgate_storage::attachment_digest(b"old data");
        let a2 = one(db, with_attachment(edit("a", Some(&a.rev), json!({"v": 2})), "f", data(b"new data"))).await.unwrap();
        let k = one(db, with_attachment(edit("k", None, json!({})), "f", data(b"kept"))).await.unwrap();
        let k2 = one(db, edit("k", Some(&k.rev), json!({"v": 2}))).await.unwrap();
        let k2b = db.rev_body("k", &k2.rev).await.unwrap().unwrap();
        assert!(k2b.attachments.is_empty());
        // a conflicting leaf keeps its body and attachments
        let c = one(db, with_attachment(edit("c", None, json!({})), "f", data(b"leaf"))).await.unwrap();
        one(db, replicate("c", &["1-zzzz"], false, &[])).await.unwrap();
        let stats = db.compact().await.unwrap();
        assert_eq!(stats.bodies_removed, 2, "a@1, k@1");
        assert_eq!(stats.attachments_removed, 2, "old data, kept");
        assert!(db.rev_body("a", &a.rev).await.unwrap().is_none());
        assert!(db.rev_body("a", &a2.rev).await.unwrap().is_some());
        assert!(db.attachment(&old_digest).await.unwrap().is_none());
        assert!(db.attachment(&syncgate_storage::attachment_digest(b"new data")).await.unwrap().is_some());
        assert!(db.rev_body("c", &c.rev).await.unwrap().is_some());
        assert!(db.attachment(&syncgate_storage::attachment_digest(b"leaf")).await.unwrap().is_some());
        // the tree remembers the revision, without its body
        let meta = db.doc_meta("a").await.unwrap().unwrap();
        assert!(meta.tree.get(&a.rev).is_some_and(|n| !n.has_body));
        // changes and documents read the same after compaction
        assert_eq!(since(db, 0, false).await.len(), 3);
        assert_eq!(db.doc_count().await.unwrap(), 3);
        assert_eq!(db.compact().await.unwrap().bodies_removed, 0);

        // a database that holds no attachment data yet: old bodies go, and attachments stored
        // after that compaction are kept by the next
        let plain = s.server().open_database("plain").await.unwrap();
        let plain = &*plain;
        let p1 = one(plain, edit("p", None, json!({"v": 1}))).await.unwrap();
        let p2 = one(plain, edit("p", Some(&p1.rev), json!({"v": 2}))).await.unwrap();
        let stats = plain.compact().await.unwrap();
        assert_eq!((stats.bodies_removed, stats.attachments_removed), (1, 0));
        assert!(plain.rev_body("p", &p1.rev).await.unwrap().is_none());
        assert!(plain.rev_body("p", &p2.rev).await.unwrap().is_some());
        one(plain, with_attachment(edit("q", None, json!({})), "f", data(b"later"))).await.unwrap();
        assert_eq!(plain.compact().await.unwrap().attachments_removed, 0);
        assert!(plain.attachment(&syncgate_storage::attachment_digest(b"later")).await.unwrap().is_some());
    }

    local_documents(s) {
        let db = s.server().open_database("db").await.unwrap();
        let body = r#"{"last":7,"big":12345678901234567890123}"#;
        let (r1, _) = db.put_local("cp", None, raw(body)).await.unwrap();
        assert_eq!(r1, "0-1");
        assert!(matches!(db.put_local("cp", None, raw("{}")).await, Err(StorageError::Conflict(_))));
        assert!(matches!(db.put_local("nope", Some("0-1"), raw("{}")).await, Err(StorageError::NotFound(_))));
        let (r2, t) = db.put_local("cp", Some("0-1"), raw(body)).await.unwrap();
        db.durable(t).await.unwrap();
        assert_eq!(r2, "0-2");
        let got = db.get_local("cp").await.unwrap().unwrap();
        assert_eq!((got.rev.as_str(), got.body.get()), ("0-2", body), "kept as sent");
        assert!(matches!(db.delete_local("cp", Some("0-1")).await, Err(StorageError::Conflict(_))));
        assert!(matches!(db.delete_local("nope", None).await, Err(StorageError::NotFound(_))));
        db.delete_local("cp", Some("0-2")).await.unwrap();
        assert!(db.get_local("cp").await.unwrap().is_none());
        assert_eq!(db.last_seq(), 0, "local documents take no sequence");
        assert!(since(&*db, 0, false).await.is_empty(), "nor appear in changes");
        assert_eq!(db.doc_count().await.unwrap(), 0);
    }

    concurrent_local_writers_one_wins_each_round(s) {
        // writers presenting the same revision at once: exactly one succeeds, the others are
        // conflicts, and the revisions count up without a gap
        let db = s.server().open_database("db").await.unwrap();
        let mut rev: Option<String> = None;
        for round in 1..=5u32 {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (db, rev) = (db.clone(), rev.clone());
                    tokio::spawn(async move {
                        match db.put_local("cp", rev.as_deref(), raw(&format!(r#"{{"w":{i}}}"#))).await {
                            Ok((r, _)) => Some(r),
                            Err(StorageError::Conflict(_)) => None,
                            Err(e) => panic!("{e:?}"),
                        }
                    })
                })
                .collect();
            let mut wins: Vec<String> = Vec::new();
            for h in handles {
                wins.extend(h.await.unwrap());
            }
            assert_eq!(wins, vec![format!("0-{round}")], "round {round}");
            rev = wins.into_iter().next();
        }
        assert_eq!(db.get_local("cp").await.unwrap().unwrap().rev, "0-5");
    }

    restamps_and_settings(s) {
        // the sync function's new decision for a winner: new channels and grants under a new
        // sequence, no new revision
        let store = s.server().open_database("db").await.unwrap();
        let db = &*store;
        let first = one(db, in_channels(edit("d", None, json!({"x": 1})), &["a"])).await.unwrap();
        let mut access = RevAccess::default();
        access.channels.insert("bob".into(), ["b".to_string()].into_iter().collect());
        let stamp = |rev: &str, chans: &[&str], access: &RevAccess| Restamp {
            id: "d".into(),
            rev: rev.into(),
            channels: chans.iter().map(|c| c.to_string()).collect(),
            access: access.clone(),
        };
        let (r, ticket) = db
            .restamp_docs(vec![stamp(&first.rev, &["b"], &access), stamp("1-stale", &["c"], &access)])
            .await.unwrap();
        db.durable(ticket).await.unwrap();
        let seq = r[0].expect("restamped");
        assert!(seq > first.seq);
        assert_eq!(r[1], None, "a revision that does not win is left alone");
        let meta = db.doc_meta("d").await.unwrap().unwrap();
        assert_eq!(meta.seq, seq);
        assert_eq!(meta.tree.nodes.len(), 1, "no new revision");
        assert_eq!(meta.tree.nodes[0].seq, first.seq);
        let rows = channel_rows(db, &["a"], first.seq).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].removed, ["a"]);
        assert_eq!(rows[0].channels, ["b"]);
        assert_eq!(ids(&since(db, 0, false).await), vec![("d", seq)]);
        let grants = db.doc_grants(PrincipalKind::User, "bob").await.unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].1.channels["b"], seq);
        assert!(db.rev_body("d", &first.rev).await.unwrap().is_some());
        // nothing changed: no new sequence
        let (r, _) = db.restamp_docs(vec![stamp(&first.rev, &["b"], &access)]).await.unwrap();
        assert_eq!(r, [None]);
        assert!(db.restamp_docs(vec![Restamp { id: "none".into(), ..stamp(&first.rev, &[], &access) }]).await.unwrap().0 == [None]);
        // settings
        assert_eq!(db.get_setting("k").await.unwrap(), None);
        db.put_setting("k", Some(b"v")).await.unwrap();
        assert_eq!(db.get_setting("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        db.put_setting("k", None).await.unwrap();
        assert_eq!(db.get_setting("k").await.unwrap(), None);
        let t = db.put_setting("kept", Some(b"w")).await.unwrap();
        db.durable(t).await.unwrap();
        drop(store);
        s.restart().await;
        let db = s.server().open_database("db").await.unwrap();
        assert_eq!(db.get_setting("kept").await.unwrap().as_deref(), Some(&b"w"[..]));
    }

    principal_writes_only_over_the_record_they_read(s) {
        let db = s.server().open_database("db").await.unwrap();
        let put_if = async |expected: Option<&[u8]>, value: &'static [u8]| {
            db.put_principal_if(PrincipalKind::User, "ann", expected, &mut |_| Ok(value.to_vec()))
                .await.unwrap()
        };
        // absent, expected absent: written
        let (seq, t) = put_if(None, b"v1").await.expect("written over nothing");
        db.durable(t).await.unwrap();
        // expected absent, but it exists now: refused, nothing written, no sequence spent
        assert!(put_if(None, b"lost").await.is_none());
        assert!(put_if(Some(b"v0"), b"lost").await.is_none());
        assert_eq!(db.get_principal(PrincipalKind::User, "ann").await.unwrap().unwrap(), b"v1");
        assert_eq!(db.last_seq(), seq);
        // the record read: written, under the next sequence
        let (seq2, t) = put_if(Some(b"v1"), b"v2").await.expect("written over what was read");
        db.durable(t).await.unwrap();
        assert_eq!(seq2, seq + 1);
        assert_eq!(db.get_principal(PrincipalKind::User, "ann").await.unwrap().unwrap(), b"v2");
        // a role of the same name is another record
        assert!(db
            .put_principal_if(PrincipalKind::Role, "ann", None, &mut |_| Ok(b"r".to_vec()))
            .await.unwrap()
            .is_some());
        // deleted: only a write expecting it absent goes through
        let t = db.delete_principal(PrincipalKind::User, "ann").await.unwrap();
        db.durable(t).await.unwrap();
        assert!(put_if(Some(b"v2"), b"lost").await.is_none());
        assert!(put_if(None, b"v3").await.is_some());
    }

    principals_sessions_and_logins(s) {
        let db = s.server().open_database("db").await.unwrap();
        let mut seen = 0;
        let (seq, t) = db
            .put_principal(PrincipalKind::User, "ann", &mut |seq| {
                seen = seq;
                Ok(format!("{{\"seq\":{seq}}}").into_bytes())
            })
            .await.unwrap();
        db.durable(t).await.unwrap();
        assert_eq!((seq, seen), (1, 1), "the record carries its own sequence");
        assert_eq!(db.get_principal(PrincipalKind::User, "ann").await.unwrap().unwrap(), br#"{"seq":1}"#);
        assert!(db.get_principal(PrincipalKind::Role, "ann").await.unwrap().is_none());
        db.put_principal(PrincipalKind::Role, "admin", &mut |_| Ok(b"{}".to_vec())).await.unwrap();
        db.put_principal(PrincipalKind::User, "bob", &mut |_| Ok(b"{}".to_vec())).await.unwrap();
        assert!(matches!(
            db.put_principal(PrincipalKind::User, "bad", &mut |_| Err("no".into())).await,
            Err(StorageError::Corrupt(_))
        ));
        assert!(db.get_principal(PrincipalKind::User, "bad").await.unwrap().is_none());
        let mut users = db.list_principals(PrincipalKind::User).await.unwrap();
        users.sort();
        assert_eq!(users, vec!["ann", "bob"]);
        assert_eq!(db.list_principals(PrincipalKind::Role).await.unwrap(), vec!["admin"]);
        let t = db.delete_principal(PrincipalKind::User, "bob").await.unwrap();
        db.durable(t).await.unwrap();
        assert_eq!(db.list_principals(PrincipalKind::User).await.unwrap(), vec!["ann"]);
        // sessions
        db.put_session("k1", b"one".to_vec()).await.unwrap();
        db.put_session("k2", b"two".to_vec()).await.unwrap();
        assert_eq!(db.get_session("k1").await.unwrap().unwrap(), b"one");
        let mut all = db.list_sessions().await.unwrap();
        all.sort();
        assert_eq!(all, vec![("k1".to_string(), b"one".to_vec()), ("k2".to_string(), b"two".to_vec())]);
        let t = db.delete_sessions(&["k1".to_string()]).await.unwrap();
        db.durable(t).await.unwrap();
        assert!(db.get_session("k1").await.unwrap().is_none());
        assert_eq!(db.list_sessions().await.unwrap().len(), 1);
        // login transactions are single use
        db.put_login("l", b"state".to_vec()).await.unwrap();
        assert_eq!(db.list_logins().await.unwrap().len(), 1);
        assert_eq!(db.take_login("l").await.unwrap().unwrap(), b"state");
        assert!(db.take_login("l").await.unwrap().is_none());
        db.put_login("m", b"x".to_vec()).await.unwrap();
        db.delete_logins(&["m".to_string()]).await.unwrap();
        assert!(db.list_logins().await.unwrap().is_empty());
        // all of it survives a restart
        drop(db);
        s.restart().await;
        let db = s.server().open_database("db").await.unwrap();
        assert!(db.get_principal(PrincipalKind::User, "ann").await.unwrap().is_some());
        assert_eq!(db.get_session("k2").await.unwrap().unwrap(), b"two");
        assert_eq!(db.last_seq(), 4, "principal writes took sequences 1-4");
    }

    grants_of_documents(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let access = |user: &str, chans: &[&str]| {
            let mut a = RevAccess::default();
            a.channels.insert(user.to_string(), chans.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>());
            a
        };
        let granting = |parent: Option<&str>, a: RevAccess| match edit("g", parent, json!({"p": parent})) {
            DocWrite::Edit { id, parent, deleted, body, canonical, attachments, channels, revs_limit, must_exist, .. } => {
                DocWrite::Edit { id, parent, deleted, body, canonical, attachments, channels, access: a, revs_limit, must_exist }
            }
            other => other,
        };
        let v0 = db.grants_version();
        let g1 = one(db, granting(None, access("ann", &["x", "y"]))).await.unwrap();
        assert_ne!(db.grants_version(), v0);
        let grants = db.doc_grants(PrincipalKind::User, "ann").await.unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].0, "g");
        assert_eq!(grants[0].1.channels, BTreeMap::from([("x".to_string(), g1.seq), ("y".to_string(), g1.seq)]));
        // the next winner drops y: x keeps its sequence, y is revoked at the new one
        let v1 = db.grants_version();
        let g2 = one(db, granting(Some(&g1.rev), access("ann", &["x"]))).await.unwrap();
        let grants = db.doc_grants(PrincipalKind::User, "ann").await.unwrap();
        assert_eq!(grants[0].1.channels, BTreeMap::from([("x".to_string(), g1.seq)]));
        // a cache of effective channels catches up from the changes, not from scratch: each
        // write's changed entries, with their new state
        let (v, changes) = db.grant_changes_since(v0).expect("this node's grant changes are kept");
        assert_eq!(v, db.grants_version());
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.kind == PrincipalKind::User && c.name == "ann" && c.doc == "g"));
        assert_eq!(changes[1].grant.as_ref(), Some(&grants[0].1));
        assert_eq!(db.grant_changes_since(v1).unwrap().1, changes[1..]);
        assert_eq!(grants[0].1.revoked_channels, BTreeMap::from([("y".to_string(), g2.seq)]));
        assert!(db.doc_grants(PrincipalKind::Role, "ann").await.unwrap().is_empty());
        // a write without grants leaves the version alone
        let v = db.grants_version();
        one(db, edit("plain", None, json!({}))).await.unwrap();
        assert_eq!(db.grants_version(), v);
    }

    databases_on_the_server(s) {
        let server = s.server();
        server.create_database("b", br#"{"n":"b"}"#).await.unwrap();
        server.create_database("a", br#"{"n":"a"}"#).await.unwrap();
        let a = server.open_database("a").await.unwrap();
        one(&*a, edit("doc", None, json!({}))).await.unwrap();
        let b = server.open_database("b").await.unwrap();
        assert!(b.doc_meta("doc").await.unwrap().is_none(), "databases are separate");
        assert_eq!(b.name(), "b");
        let key = server.server_value("k", &mut || b"first".to_vec()).await.unwrap();
        assert_eq!(server.server_value("k", &mut || b"second".to_vec()).await.unwrap(), key);
        drop((a, b, server));
        s.restart().await;
        let server = s.server();
        assert_eq!(
            server.list_databases().await.unwrap(),
            vec![("a".to_string(), br#"{"n":"a"}"#.to_vec()), ("b".to_string(), br#"{"n":"b"}"#.to_vec())]
        );
        assert_eq!(server.server_value("k", &mut || b"third".to_vec()).await.unwrap(), b"first");
        assert!(server.open_database("a").await.unwrap().doc_meta("doc").await.unwrap().is_some());
        server.delete_database("a").await.unwrap();
        assert_eq!(server.list_databases().await.unwrap().len(), 1);
        let a = server.open_database("a").await.unwrap();
        assert!(a.doc_meta("doc").await.unwrap().is_none(), "a deleted database's data is gone");
        assert_eq!(a.last_seq(), 0);
    }

    concurrent_writers(s) {
        const WRITERS: usize = 8;
        const EACH: usize = 25;
        let db = s.server().open_database("db").await.unwrap();
        let outcomes: Vec<WriteOutcome> = async {
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for i in 0..EACH {
                            // everyone also fights over one shared document
                            let (r, t) = db
                                .write_docs_shared(vec![
                                    edit(&format!("w{w}-{i}"), None, json!({ "i": i })),
                                    edit("shared", None, json!({ "w": w })),
                                ])
                                .await
                                .unwrap();
                            db.durable(t).await.unwrap();
                            let mut r = r.into_iter();
                            out.push(r.next().unwrap().unwrap());
                            if let Some(Ok(o)) = r.next() {
                                out.push(o);
                            }
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        }.await;
        let seqs: BTreeSet<u64> = outcomes.iter().map(|o| o.seq).collect();
        assert_eq!(seqs.len(), outcomes.len(), "every accepted write has its own sequence");
        assert_eq!(outcomes.iter().filter(|o| o.id == "shared").count(), 1, "one creator wins");
        assert_eq!(db.last_seq(), *seqs.iter().last().unwrap());
        assert_eq!(db.last_seq(), (WRITERS * EACH + 1) as u64, "no gaps: refused writes take none");
        assert_eq!(db.doc_count().await.unwrap(), (WRITERS * EACH + 1) as u64);
        let rows = since(&*db, 0, false).await;
        assert_eq!(rows.len(), WRITERS * EACH + 1);
        let by_id: HashMap<&str, u64> = rows.iter().map(|e| (e.id.as_str(), e.seq)).collect();
        for o in &outcomes {
            assert_eq!(by_id.get(o.id.as_str()), Some(&o.seq), "{}", o.id);
        }
    }

    feed_invariant_under_concurrent_writers(s) {
        // A continuous reader (wake on subscribe, read a view since its checkpoint, advance the
        // checkpoint to the view's sequence) while writers create and update documents: it
        // sees sequences strictly increasing, never one at or below a checkpoint it already
        // reported, every created document, and every document at its final sequence.
        const WRITERS: usize = 3;
        const ROUNDS: usize = 40;
        let db = s.server().open_database("db").await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let db = db.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut rx = db.subscribe();
                let mut checkpoint = 0u64;
                let mut last_shown = 0u64;
                let mut seen: Vec<(String, u64)> = Vec::new();
                loop {
                    let done = stop.load(Ordering::SeqCst);
                    let view = db.changes_view();
                    let mut entries = view.since(checkpoint, false);
                    while let Some(e) = entries.next().await {
                        let e = e.unwrap();
                        assert!(e.seq > checkpoint, "seq {} behind checkpoint {checkpoint}", e.seq);
                        assert!(e.seq > last_shown, "seq {} after {last_shown}", e.seq);
                        assert!(e.seq <= view.seq());
                        last_shown = e.seq;
                        seen.push((e.id, e.seq));
                    }
                    checkpoint = view.seq();
                    drop(entries);
                    drop(view);
                    if done {
                        return seen;
                    }
                    async {
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(50),
                            rx.changed(),
                        )
                        .await;
                    }.await;
                }
            })
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut created = Vec::new();
                    let mine = format!("u{w}");
                    let mut rev: Option<String> = None;
                    for i in 0..ROUNDS {
                        let mut writes = vec![edit(&format!("n{w}-{i}"), None, json!({}))];
                        writes.push(edit(&mine, rev.as_deref(), json!({ "i": i })));
                        let r = async {
                            let (r, t) = db.write_docs_shared(writes).await.unwrap();
                            db.durable(t).await.unwrap();
                            r
                        }.await;
                        created.push(r[0].clone().unwrap());
                        rev = Some(r[1].as_ref().unwrap().rev.clone());
                    }
                    created
                })
            })
            .collect();
        let mut created = Vec::new();
        for w in writers {
            created.extend(w.await.unwrap());
        }
        stop.store(true, Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let seen_ids: HashMap<&str, Vec<u64>> = seen.iter().fold(HashMap::new(), |mut m, (id, seq)| {
            m.entry(id.as_str()).or_default().push(*seq);
            m
        });
        for c in &created {
            assert_eq!(seen_ids.get(c.id.as_str()), Some(&vec![c.seq]), "{} exactly once", c.id);
        }
        for e in since(&*db, 0, false).await {
            assert_eq!(seen_ids[e.id.as_str()].last(), Some(&e.seq), "{} at its final seq", e.id);
        }
        assert_eq!(seen.last().map(|(_, s)| *s), Some(db.last_seq()));
    }

    copy_database_moves_everything(s) {
        let server = s.server();
        let src = server.open_database("src").await.unwrap();
        let src = &*src;
        // a document with a conflict, attachments and channels; a tombstone; a grant
        let a = one(src, in_channels(edit("doc", None, json!({"n": 1.0e-7, "s": "x"})), &["c1"])).await.unwrap();
        let b = one(src, with_attachment(edit("doc", Some(&a.rev), json!({"n": 2})), "f.txt", data(b"hello"))).await.unwrap();
        one(src, replicate("doc", &["2-ffff", &a.rev], false, &["c2"])).await.unwrap();
        let gone = one(src, edit("gone", None, json!({}))).await.unwrap();
        one(src, delete("gone", Some(&gone.rev))).await.unwrap();
        let mut grant = edit("list", None, json!({"members": ["ann"]}));
        if let DocWrite::Edit { access, .. } = &mut grant {
            access.channels.insert("ann".into(), ["list-1".to_string()].into());
        }
        one(src, grant).await.unwrap();
        src.put_principal(PrincipalKind::User, "ann", &mut |_| Ok(br#"{"name":"ann","h":"$argon2id$x"}"#.to_vec())).await.unwrap();
        src.put_principal(PrincipalKind::Role, "mod", &mut |_| Ok(br#"{"name":"mod"}"#.to_vec())).await.unwrap();
        src.put_session("k1", b"session".to_vec()).await.unwrap();
        src.put_setting("sync_function", Some(b"function(){}")).await.unwrap();
        src.put_setting("other", Some(b"x")).await.unwrap();
        let src_last = src.last_seq();

        let dst = server.open_database("dst").await.unwrap();
        let dst = &*dst;
        let mut seen = Vec::new();
        let stats = syncgate_storage::migrate::copy_database(src, dst, true, &["sync_function"], &mut |n| seen.push(n))
            .await
            .unwrap();
        assert_eq!((stats.documents, stats.revisions, stats.users, stats.roles, stats.sessions, stats.settings), (3, 4, 1, 1, 1, 1));
        assert_eq!(seen.last(), Some(&3));
        for id in ["doc", "gone", "list"] {
            let want = src.doc_meta(id).await.unwrap().unwrap();
            let got = dst.doc_meta(id).await.unwrap().unwrap();
            let shape = |m: &syncgate_storage::DocMeta| {
                m.tree.sorted_leaves().iter().map(|l| (l.rev.clone(), l.deleted, l.channels.clone(), l.access.clone(), m.tree.history(&l.rev))).collect::<Vec<_>>()
            };
            assert_eq!(shape(&got), shape(&want), "{id}");
            for leaf in want.tree.leaves() {
                assert_eq!(dst.rev_body(id, &leaf.rev).await.unwrap(), src.rev_body(id, &leaf.rev).await.unwrap(), "{id} {}", leaf.rev);
            }
            // every copied change comes after every sequence a client of the source can hold
            assert!(got.seq > src_last, "{id}: {} <= {src_last}", got.seq);
        }
        let body = dst.rev_body("doc", &b.rev).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(body.json).unwrap(), r#"{"n":2}"#);
        assert_eq!(dst.attachment(&body.attachments[0].1.digest).await.unwrap().unwrap(), b"hello");
        let first = dst.rev_body("doc", &a.rev).await.unwrap();
        assert!(first.is_none(), "non-leaf bodies are not carried");
        assert_eq!(dst.doc_count().await.unwrap(), src.doc_count().await.unwrap());
        assert_eq!(dst.get_principal(PrincipalKind::User, "ann").await.unwrap(), src.get_principal(PrincipalKind::User, "ann").await.unwrap());
        assert_eq!(dst.get_principal(PrincipalKind::Role, "mod").await.unwrap().unwrap(), br#"{"name":"mod"}"#);
        assert_eq!(dst.get_session("k1").await.unwrap().unwrap(), b"session");
        assert_eq!(dst.get_setting("sync_function").await.unwrap().unwrap(), b"function(){}");
        assert_eq!(dst.get_setting("other").await.unwrap(), None);
        assert_eq!(dst.doc_grants(PrincipalKind::User, "ann").await.unwrap().len(), 1);
        // the feed of the copy lists the documents in the source's order
        let order = async |db: &dyn DatabaseStore| since(db, 0, false).await.into_iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(order(dst).await, order(src).await);
        // a target that is not empty is refused
        // without sessions (a target with another session key): none copied
        let bare = server.open_database("bare").await.unwrap();
        let stats = syncgate_storage::migrate::copy_database(src, &*bare, false, &[], &mut |_| {})
            .await
            .unwrap();
        assert_eq!((stats.documents, stats.sessions), (3, 0));
        assert_eq!(bare.get_session("k1").await.unwrap(), None);
        let again = syncgate_storage::migrate::copy_database(src, dst, true, &[], &mut |_| {}).await;
        assert!(matches!(again, Err(StorageError::Conflict(_))), "{again:?}");
    }

    batched_reads_answer_like_single_reads(s) {
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let live = one(db, edit("live", None, json!({"n": 1}))).await.unwrap();
        let gone = one(db, edit("gone", None, json!({"n": 2}))).await.unwrap();
        let tomb = one(db, delete("gone", Some(&gone.rev))).await.unwrap();
        let c1 = one(db, edit("conflicted", None, json!({"n": 3}))).await.unwrap();
        let c2 = one(db, replicate("conflicted", &["2-bbbb", &c1.rev], false, &[])).await.unwrap();
        let c3 = one(db, replicate("conflicted", &["2-aaaa", &c1.rev], false, &[])).await.unwrap();
        // in the order asked, an id asked twice answered twice, a missing one as None
        let ids = ["conflicted", "nothing", "live", "gone", "live"];
        let metas = db.doc_metas(&ids).await.unwrap();
        assert_eq!(metas.len(), ids.len());
        for (id, m) in ids.iter().zip(&metas) {
            let single = db.doc_meta(id).await.unwrap();
            assert_eq!(m.is_some(), single.is_some(), "{id}");
            if let (Some(m), Some(single)) = (m, single) {
                assert_eq!(serde_json::to_value(m).unwrap(), serde_json::to_value(&single).unwrap(), "{id}");
            }
        }
        assert!(metas[1].is_none());
        assert_eq!(metas[2].as_ref().unwrap().winner(), Some((live.rev.as_str(), false)));
        assert_eq!(metas[3].as_ref().unwrap().winner(), Some((tomb.rev.as_str(), true)));
        assert_eq!(metas[0].as_ref().unwrap().tree.leaves().len(), 2);
        assert!(db.doc_metas(&[]).await.unwrap().is_empty());
        let revs = [
            ("conflicted", c2.rev.as_str()),
            ("live", "9-0000"),
            ("nothing", "1-0000"),
            ("gone", tomb.rev.as_str()),
            ("conflicted", c3.rev.as_str()),
            ("live", live.rev.as_str()),
            ("conflicted", c1.rev.as_str()),
            ("live", live.rev.as_str()),
        ];
        let bodies = db.rev_bodies(&revs).await.unwrap();
        assert_eq!(bodies.len(), revs.len());
        for ((id, rev), b) in revs.iter().zip(&bodies) {
            let single = db.rev_body(id, rev).await.unwrap();
            assert_eq!(b.as_ref().map(|b| &b.json), single.as_ref().map(|b| &b.json), "{id} {rev}");
        }
        assert!(bodies[1].is_none() && bodies[2].is_none());
        assert_eq!(bodies[5].as_ref().unwrap().json, br#"{"n":1}"#.to_vec());
        assert_eq!(bodies[7].as_ref().unwrap().json, br#"{"n":1}"#.to_vec());
        assert_eq!(bodies[0].as_ref().unwrap().json, b"{}".to_vec());
        assert!(bodies[3].is_some(), "a tombstone's body is kept");
        assert!(db.rev_bodies(&[]).await.unwrap().is_empty());
        // metadata with the body kept beside it: the same metadata, and a body (where the
        // backend keeps one) that is that revision's stored body
        let with = db.doc_metas_with_bodies(&ids).await.unwrap();
        assert_eq!(with.len(), ids.len());
        for ((id, w), m) in ids.iter().zip(&with).zip(&metas) {
            assert_eq!(w.is_some(), m.is_some(), "{id}");
            let (Some((w, body)), Some(m)) = (w, m) else { continue };
            assert_eq!(serde_json::to_value(w).unwrap(), serde_json::to_value(m).unwrap(), "{id}");
            if let Some((rev, body)) = body {
                assert!(m.tree.contains(rev), "{id} {rev}");
                let single = db.rev_body(id, rev).await.unwrap().unwrap();
                assert_eq!(body.json, single.json, "{id} {rev}");
            }
        }
        assert!(db.doc_metas_with_bodies(&[]).await.unwrap().is_empty());
    }

    one_batch_writing_a_document_twice(s) {
        // what the second write's revision will be, learnt on another database
        let scratch = s.server().open_database("scratch").await.unwrap();
        let first = one(&*scratch, in_channels(edit("t", None, json!({"n": 1})), &["red"])).await.unwrap();
        let db = s.server().open_database("db").await.unwrap();
        let db = &*db;
        let before = one(db, in_channels(edit("old", None, json!({})), &["red"])).await.unwrap();
        let r = write(db, vec![
            in_channels(edit("t", None, json!({"n": 1})), &["red"]),
            in_channels(edit("t", Some(&first.rev), json!({"n": 2})), &["blue"]),
            in_channels(edit("old", Some(&before.rev), json!({"x": 1})), &["blue"]),
            edit("u", None, json!({})),
        ]).await;
        let r: Vec<WriteOutcome> = r.into_iter().map(Result::unwrap).collect();
        assert_eq!(r[0].rev, first.rev);
        let t = db.doc_meta("t").await.unwrap().unwrap();
        assert_eq!(t.winner(), Some((r[1].rev.as_str(), false)));
        assert!(db.rev_body("t", &first.rev).await.unwrap().is_some());
        assert_eq!(db.rev_body("t", &r[1].rev).await.unwrap().unwrap().json, br#"{"n":2}"#.to_vec());
        // each document once in the feed, at its last sequence
        let rows = since(db, 0, false).await;
        assert_eq!(ids(&rows), vec![("t", r[1].seq), ("old", r[2].seq), ("u", r[3].seq)]);
        assert_eq!(db.last_seq(), r[3].seq);
        // t was only briefly red: red's readers see it (as removed), blue's see it
        let red = channel_rows(db, &["red"], 0).await;
        assert_eq!(ids(&red), vec![("t", r[1].seq), ("old", r[2].seq)]);
        assert_eq!(red[0].removed, vec!["red".to_string()]);
        let blue = channel_rows(db, &["blue"], 0).await;
        assert_eq!(ids(&blue), vec![("t", r[1].seq), ("old", r[2].seq)]);
        assert_eq!(db.doc_count().await.unwrap(), 3);
        drop(scratch);
    }
}
