//! PostgreSQL-only behaviour: several nodes (independently opened stores) on one PostgreSQL
//! database, change wake-ups by LISTEN/NOTIFY and by polling, the schema under concurrent
//! opens, connection failures. The conformance suite covers the rest on this backend.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use syncgate_storage::{
    canonical_json, ChangeNotify, DatabaseStore, DocWrite, PgOptions, PgStore, RevAccess,
    StorageError, StoreServer, WriteOutcome,
};

#[path = "support/pg_cluster.rs"]
mod pg_cluster;

fn node(url: &str, notify: ChangeNotify) -> PgStore {
    PgStore::open(&PgOptions {
        url: url.to_string(),
        pool_size: 4,
        notify,
    })
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

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

fn write(db: &dyn DatabaseStore, w: Vec<DocWrite>) -> Vec<Result<WriteOutcome, StorageError>> {
    rt().block_on(async {
        let (r, t) = db.write_docs_shared(w).await.unwrap();
        db.durable(t).await.unwrap();
        r
    })
}

/// Waits until `rx` shows at least `seq` (a guard against hanging, not a speed check).
fn wait_for(rx: &mut tokio::sync::watch::Receiver<u64>, seq: u64) -> u64 {
    rt().block_on(async {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v >= seq))
            .await
            .expect("no wake-up within 20 s")
            .map(|v| *v)
            .unwrap()
    })
}

#[test]
fn two_nodes_write_one_database_and_a_reader_never_sees_the_past() {
    const ROUNDS: usize = 30;
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen);
    let b = node(&url, ChangeNotify::Listen);
    let da = a.database("db").unwrap();
    let db_b = b.database("db").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // a continuous reader on node B: checkpoints at each view's sequence
    let reader = {
        let db = db_b.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = rt();
            let mut rx = db.subscribe();
            let mut checkpoint = 0u64;
            let mut seen: Vec<(String, u64)> = Vec::new();
            loop {
                let done = stop.load(Ordering::SeqCst);
                let view = db.changes_view();
                for e in view.since(checkpoint, false) {
                    let e = e.unwrap();
                    assert!(
                        e.seq > checkpoint,
                        "seq {} appeared behind checkpoint {checkpoint}",
                        e.seq
                    );
                    assert!(seen.last().is_none_or(|(_, s)| e.seq > *s));
                    seen.push((e.id, e.seq));
                }
                checkpoint = view.seq();
                drop(view);
                if done {
                    return seen;
                }
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
                });
            }
        })
    };
    // two writers per node; all fight over one shared document too
    let writers: Vec<_> = [da.clone(), da.clone(), db_b.clone(), db_b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, db)| {
            std::thread::spawn(move || {
                let mut created = Vec::new();
                for i in 0..ROUNDS {
                    let r = write(
                        &*db,
                        vec![
                            edit(&format!("n{w}-{i}"), None, json!({ "i": i })),
                            edit("shared", None, json!({ "w": w })),
                        ],
                    );
                    created.push(r[0].clone().unwrap());
                    if let Ok(o) = &r[1] {
                        created.push(o.clone());
                    }
                }
                created
            })
        })
        .collect();
    let mut created: Vec<WriteOutcome> = Vec::new();
    for w in writers {
        created.extend(w.join().unwrap());
    }
    let seqs: BTreeSet<u64> = created.iter().map(|o| o.seq).collect();
    assert_eq!(
        seqs.len(),
        created.len(),
        "every write has its own sequence across nodes"
    );
    assert_eq!(
        created.iter().filter(|o| o.id == "shared").count(),
        1,
        "one creator wins"
    );
    let last = *seqs.iter().last().unwrap();
    assert_eq!(last, (4 * ROUNDS + 1) as u64, "no gaps");
    // node B learns of node A's last writes, then the reader finishes
    wait_for(&mut db_b.subscribe(), last);
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let by_id: HashMap<&str, Vec<u64>> = seen.iter().fold(HashMap::new(), |mut m, (id, s)| {
        m.entry(id.as_str()).or_default().push(*s);
        m
    });
    for c in &created {
        assert_eq!(
            by_id.get(c.id.as_str()),
            Some(&vec![c.seq]),
            "{} exactly once",
            c.id
        );
    }
    assert_eq!(seen.last().map(|(_, s)| *s), Some(last));
    assert_eq!(da.doc_count().unwrap(), (4 * ROUNDS + 1) as u64);
    assert_eq!(db_b.doc_count().unwrap(), (4 * ROUNDS + 1) as u64);
}

/// A write through one store wakes a subscriber of another store (another node) on the same
/// PostgreSQL database: by NOTIFY, or by polling.
fn wakes_other_node(mode: ChangeNotify) {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen);
    let b = node(&url, mode);
    let da = a.database("db").unwrap();
    let db_b = b.database("db").unwrap();
    let other = b.database("other").unwrap();
    let mut rx = db_b.subscribe();
    let other_rx = other.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let first = write(&*da, vec![edit("x", None, json!({}))])
        .remove(0)
        .unwrap();
    assert_eq!(wait_for(&mut rx, first.seq), first.seq);
    assert_eq!(db_b.last_seq(), first.seq);
    // later writes too (with LISTEN, only a notification can bring these)
    for i in 0..3 {
        let w = write(&*da, vec![edit(&format!("y{i}"), None, json!({}))])
            .remove(0)
            .unwrap();
        assert_eq!(wait_for(&mut rx, w.seq), w.seq);
        let view = db_b.changes_view();
        let ids: Vec<String> = view.since(0, false).map(|e| e.unwrap().id).collect();
        assert!(ids.contains(&format!("y{i}")));
    }
    // a principal write moves the sequence and wakes too
    let (seq, _) = da
        .put_principal(syncgate_storage::PrincipalKind::User, "u", &mut |_| {
            Ok(b"{}".to_vec())
        })
        .unwrap();
    assert_eq!(wait_for(&mut rx, seq), seq);
    // another database of the same PostgreSQL database was not woken
    assert!(!other_rx.has_changed().unwrap());
    assert_eq!(other.last_seq(), 0);
}

#[test]
fn notify_wakes_a_subscriber_on_another_node() {
    wakes_other_node(ChangeNotify::Listen);
}

#[test]
fn polling_wakes_a_subscriber_on_another_node() {
    wakes_other_node(ChangeNotify::Poll(Duration::from_millis(50)));
}

#[test]
fn nodes_starting_together_create_the_schema_once() {
    let url = pg_cluster::fresh_database();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                PgStore::open(&PgOptions {
                    url,
                    pool_size: 2,
                    notify: ChangeNotify::Listen,
                })
            })
        })
        .collect();
    let stores: Vec<PgStore> = opens
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let dbs: Vec<_> = stores.iter().map(|s| s.database("db").unwrap()).collect();
    let w = write(&*dbs[0], vec![edit("d", None, json!({}))])
        .remove(0)
        .unwrap();
    assert!(dbs[5].doc_meta("d").unwrap().is_some());
    // server values: whichever node stores first, all agree
    let values: Vec<Vec<u8>> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| s.server_value("key", &mut || vec![i as u8]).unwrap())
        .collect();
    assert!(values.iter().all(|v| *v == values[0]));
    assert_eq!(w.seq, 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let url = pg_cluster::fresh_database();
    drop(node(&url, ChangeNotify::Listen));
    let rt = rt();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("INSERT INTO syncgate_schema_version (version) VALUES (99)")
            .await
            .unwrap();
    });
    let err = PgStore::open(&PgOptions {
        url,
        pool_size: 2,
        notify: ChangeNotify::Listen,
    })
    .err()
    .expect("a newer schema must be refused");
    assert!(err.to_string().contains("version 99, newer"), "{err}");
}

#[test]
fn an_unreachable_server_is_unavailable_not_an_engine_failure() {
    // a loopback port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PgStore::open(&PgOptions {
        url: format!("postgres://nobody:secret@127.0.0.1:{port}/none"),
        pool_size: 2,
        notify: ChangeNotify::Listen,
    })
    .err()
    .expect("nothing listens there");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("secret"));
}

#[test]
fn writes_from_a_multi_thread_runtime_and_a_plain_thread() {
    let url = pg_cluster::fresh_database();
    let store = node(&url, ChangeNotify::Listen);
    let db = store.database("db").unwrap();
    // synchronous calls from a worker of the caller's multi-thread runtime (as handlers do)
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = db.clone();
    let seq = rt
        .block_on(rt.spawn(async move {
            let (r, t) = d.write_docs(vec![edit("mt", None, json!({}))]).unwrap();
            d.durable(t).await.unwrap();
            assert!(d.doc_meta("mt").unwrap().is_some());
            r[0].as_ref().unwrap().seq
        }))
        .unwrap();
    // and from a plain thread
    let (r, _) = db.write_docs(vec![edit("plain", None, json!({}))]).unwrap();
    assert_eq!(r[0].as_ref().unwrap().seq, seq + 1);
}

/// A setting written on node A moves the settings watch of node B's handle (the signal to
/// reload the sync function), and another database's watch stays still.
fn settings_reach_other_node(mode: ChangeNotify) {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen);
    let b = node(&url, mode);
    let (da, db_b, other) = (
        a.database("db").unwrap(),
        b.database("db").unwrap(),
        b.database("other").unwrap(),
    );
    let mut rx = db_b
        .settings_changes()
        .expect("PostgreSQL reports settings changes");
    let other_rx = other.settings_changes().unwrap();
    let v0 = *rx.borrow_and_update();
    da.put_setting("sync_function", Some(b"one")).unwrap();
    let v1 = wait_for(&mut rx, v0 + 1);
    assert_eq!(db_b.get_setting("sync_function").unwrap().unwrap(), b"one");
    da.put_setting("sync_function", None).unwrap();
    wait_for(&mut rx, v1 + 1);
    assert_eq!(db_b.get_setting("sync_function").unwrap(), None);
    // a document write moves no settings version
    let before = *rx.borrow_and_update();
    let w = write(&*da, vec![edit("d", None, json!({}))])
        .remove(0)
        .unwrap();
    wait_for(&mut db_b.subscribe(), w.seq);
    assert_eq!(*rx.borrow_and_update(), before);
    assert!(!other_rx.has_changed().unwrap());
}

#[test]
fn notify_brings_settings_changes_to_another_node() {
    settings_reach_other_node(ChangeNotify::Listen);
}

#[test]
fn polling_brings_settings_changes_to_another_node() {
    settings_reach_other_node(ChangeNotify::Poll(Duration::from_millis(50)));
}

/// A database made by a build of schema version 1 is migrated to version 2 at open, data
/// kept.
#[test]
fn a_version_1_schema_is_migrated() {
    let url = pg_cluster::fresh_database();
    {
        let a = node(&url, ChangeNotify::Listen);
        write(
            &*a.database("db").unwrap(),
            vec![edit("kept", None, json!({}))],
        );
    }
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // what a version 1 build left
        client
            .batch_execute(
                "ALTER TABLE syncgate_counters DROP COLUMN settings_version; \
                 UPDATE syncgate_schema_version SET version = 1",
            )
            .await
            .unwrap();
    });
    let a = node(&url, ChangeNotify::Listen);
    let db = a.database("db").unwrap();
    assert!(db.doc_meta("kept").unwrap().is_some());
    db.put_setting("k", Some(b"v")).unwrap();
    assert_eq!(db.get_setting("k").unwrap().unwrap(), b"v");
}

/// A write transaction PostgreSQL aborts to break a deadlock (SQLSTATE 40P01) is run again
/// and succeeds: an outside transaction holds a document's row while the write (holding the
/// counter row) waits for it, then asks for the counter row itself.
#[test]
fn a_write_aborted_by_a_deadlock_is_retried() {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen);
    let db = a.database("db").unwrap();
    let first = write(&*db, vec![edit("x", None, json!({"n": 1}))])
        .remove(0)
        .unwrap();
    let rt = rt();
    let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // the writer (default deadlock_timeout, 1 s) is the one that finds the deadlock
        client
            .batch_execute(
                "SET deadlock_timeout = '10min'; BEGIN; \
                 SELECT 1 FROM syncgate_docs WHERE db = 'db' AND id = 'x'::bytea FOR UPDATE",
            )
            .await
            .unwrap();
        client
    });
    let writer = {
        let db = db.clone();
        let parent = first.rev.clone();
        std::thread::spawn(move || write(&*db, vec![edit("x", Some(&parent), json!({"n": 2}))]))
    };
    // wait until the writer waits for the row (a guard against hanging, not a speed check)
    rt.block_on(async {
        for _ in 0..1500 {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                     AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the write never waited for the locked row");
    });
    // now the deadlock: PostgreSQL aborts the writer's transaction, this one gets the row
    rt.block_on(async {
        client
            .query_one(
                "SELECT last_seq FROM syncgate_counters WHERE db = 'db' FOR UPDATE",
                &[],
            )
            .await
            .unwrap();
        client.batch_execute("COMMIT").await.unwrap();
    });
    let out = writer.join().unwrap().remove(0).unwrap();
    assert!(out.rev.starts_with("2-"), "{}", out.rev);
    let meta = db.doc_meta("x").unwrap().unwrap();
    assert_eq!(meta.winner(), Some((out.rev.as_str(), false)));
    assert_eq!(meta.seq, out.seq);
}
