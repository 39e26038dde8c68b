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

async fn node(url: &str, notify: ChangeNotify) -> PgStore {
    PgStore::open(&PgOptions {
        url: url.to_string(),
        pool_size: 4,
        notify,
    })
    .await
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

async fn write(
    db: &dyn DatabaseStore,
    w: Vec<DocWrite>,
) -> Vec<Result<WriteOutcome, StorageError>> {
    let (r, t) = db.write_docs_shared(w).await.unwrap();
    db.durable(t).await.unwrap();
    r
}

/// Waits until `rx` shows at least `seq` (a guard against hanging, not a speed check).
async fn wait_for(rx: &mut tokio::sync::watch::Receiver<u64>, seq: u64) -> u64 {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v >= seq))
        .await
        .expect("no wake-up within 20 s")
        .map(|v| *v)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_write_one_database_and_a_reader_never_sees_the_past() {
    const ROUNDS: usize = 30;
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen).await;
    let b = node(&url, ChangeNotify::Listen).await;
    let da = a.database("db").await.unwrap();
    let db_b = b.database("db").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // a continuous reader on node B: checkpoints at each view's sequence
    let reader = {
        let db = db_b.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rx = db.subscribe();
            let mut checkpoint = 0u64;
            let mut seen: Vec<(String, u64)> = Vec::new();
            loop {
                let done = stop.load(Ordering::SeqCst);
                let view = db.changes_view();
                let mut entries = view.since(checkpoint, false);
                while let Some(e) = entries.next().await {
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
                drop(entries);
                drop(view);
                if done {
                    return seen;
                }
                async {
                    let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
                }
                .await;
            }
        })
    };
    // two writers per node; all fight over one shared document too
    let writers: Vec<_> = [da.clone(), da.clone(), db_b.clone(), db_b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, db)| {
            tokio::spawn(async move {
                let mut created = Vec::new();
                for i in 0..ROUNDS {
                    let r = write(
                        &*db,
                        vec![
                            edit(&format!("n{w}-{i}"), None, json!({ "i": i })),
                            edit("shared", None, json!({ "w": w })),
                        ],
                    )
                    .await;
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
        created.extend(w.await.unwrap());
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
    wait_for(&mut db_b.subscribe(), last).await;
    stop.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
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
    assert_eq!(da.doc_count().await.unwrap(), (4 * ROUNDS + 1) as u64);
    assert_eq!(db_b.doc_count().await.unwrap(), (4 * ROUNDS + 1) as u64);
}

/// A write through one store wakes a subscriber of another store (another node) on the same
/// PostgreSQL database: by NOTIFY, or by polling.
async fn wakes_other_node(mode: ChangeNotify) {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen).await;
    let b = node(&url, mode).await;
    let da = a.database("db").await.unwrap();
    let db_b = b.database("db").await.unwrap();
    let other = b.database("other").await.unwrap();
    let mut rx = db_b.subscribe();
    let other_rx = other.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let first = write(&*da, vec![edit("x", None, json!({}))])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(wait_for(&mut rx, first.seq).await, first.seq);
    assert_eq!(db_b.last_seq(), first.seq);
    // later writes too (with LISTEN, only a notification can bring these)
    for i in 0..3 {
        let w = write(&*da, vec![edit(&format!("y{i}"), None, json!({}))])
            .await
            .remove(0)
            .unwrap();
        assert_eq!(wait_for(&mut rx, w.seq).await, w.seq);
        let view = db_b.changes_view();
        let mut entries = view.since(0, false);
        let mut ids: Vec<String> = Vec::new();
        while let Some(e) = entries.next().await {
            ids.push(e.unwrap().id);
        }
        assert!(ids.contains(&format!("y{i}")));
    }
    // a principal write moves the sequence and wakes too
    let (seq, _) = da
        .put_principal(syncgate_storage::PrincipalKind::User, "u", &mut |_| {
            Ok(b"{}".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(wait_for(&mut rx, seq).await, seq);
    // another database of the same PostgreSQL database was not woken
    assert!(!other_rx.has_changed().unwrap());
    assert_eq!(other.last_seq(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_wakes_a_subscriber_on_another_node() {
    wakes_other_node(ChangeNotify::Listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_wakes_a_subscriber_on_another_node() {
    wakes_other_node(ChangeNotify::Poll(Duration::from_millis(50))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_create_the_schema_once() {
    let url = pg_cluster::fresh_database();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                PgStore::open(&PgOptions {
                    url,
                    pool_size: 2,
                    notify: ChangeNotify::Listen,
                })
                .await
            })
        })
        .collect();
    let mut stores: Vec<PgStore> = Vec::new();
    for t in opens {
        stores.push(t.await.unwrap().unwrap());
    }
    let mut dbs = Vec::new();
    for s in &stores {
        dbs.push(s.database("db").await.unwrap());
    }
    let w = write(&*dbs[0], vec![edit("d", None, json!({}))])
        .await
        .remove(0)
        .unwrap();
    assert!(dbs[5].doc_meta("d").await.unwrap().is_some());
    // server values: whichever node stores first, all agree
    let mut values: Vec<Vec<u8>> = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        values.push(s.server_value("key", &mut || vec![i as u8]).await.unwrap());
    }
    assert!(values.iter().all(|v| *v == values[0]));
    assert_eq!(w.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_schema_is_refused() {
    let url = pg_cluster::fresh_database();
    drop(node(&url, ChangeNotify::Listen).await);
    async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("INSERT INTO syncgate_schema_version (version) VALUES (99)")
            .await
            .unwrap();
    }
    .await;
    let err = PgStore::open(&PgOptions {
        url,
        pool_size: 2,
        notify: ChangeNotify::Listen,
    })
    .await
    .err()
    .expect("a newer schema must be refused");
    assert!(err.to_string().contains("version 99, newer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_server_is_unavailable_not_an_engine_failure() {
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
    .await
    .err()
    .expect("nothing listens there");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("secret"));
}

/// A store serves callers on any runtime: the pool's connections run on the backend's own
/// runtime, so a connection made for a caller on one runtime serves a caller on another one
/// while the first sits idle (its tasks not polled) or is gone.
#[test]
fn a_store_serves_callers_on_runtimes_that_come_and_go() {
    let url = pg_cluster::fresh_database();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let store = first.block_on(node(&url, ChangeNotify::Listen));
    let db = first.block_on(store.database("db")).unwrap();
    let seq = first.block_on(async {
        let r = write(&*db, vec![edit("a", None, json!({}))]).await;
        r[0].as_ref().unwrap().seq
    });
    // `first` stays alive but idle: a connection whose task lived there would never answer
    let second = runtime();
    second.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            let r = write(&*db, vec![edit("b", None, json!({}))]).await;
            assert_eq!(r[0].as_ref().unwrap().seq, seq + 1);
            assert!(db.doc_meta("a").await.unwrap().is_some());
        })
        .await
        .expect("a call from another runtime hung (a guard, not a speed check)");
    });
    drop(first);
    let third = runtime();
    third.block_on(async {
        assert!(db.doc_meta("b").await.unwrap().is_some());
    });
}

/// A setting written on node A moves the settings watch of node B's handle (the signal to
/// reload the sync function), and another database's watch stays still.
async fn settings_reach_other_node(mode: ChangeNotify) {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen).await;
    let b = node(&url, mode).await;
    let (da, db_b, other) = (
        a.database("db").await.unwrap(),
        b.database("db").await.unwrap(),
        b.database("other").await.unwrap(),
    );
    let mut rx = db_b
        .settings_changes()
        .expect("PostgreSQL reports settings changes");
    let other_rx = other.settings_changes().unwrap();
    let v0 = *rx.borrow_and_update();
    da.put_setting("sync_function", Some(b"one")).await.unwrap();
    let v1 = wait_for(&mut rx, v0 + 1).await;
    assert_eq!(
        db_b.get_setting("sync_function").await.unwrap().unwrap(),
        b"one"
    );
    da.put_setting("sync_function", None).await.unwrap();
    wait_for(&mut rx, v1 + 1).await;
    assert_eq!(db_b.get_setting("sync_function").await.unwrap(), None);
    // a document write moves no settings version
    let before = *rx.borrow_and_update();
    let w = write(&*da, vec![edit("d", None, json!({}))])
        .await
        .remove(0)
        .unwrap();
    wait_for(&mut db_b.subscribe(), w.seq).await;
    assert_eq!(*rx.borrow_and_update(), before);
    assert!(!other_rx.has_changed().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_brings_settings_changes_to_another_node() {
    settings_reach_other_node(ChangeNotify::Listen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_brings_settings_changes_to_another_node() {
    settings_reach_other_node(ChangeNotify::Poll(Duration::from_millis(50))).await;
}

/// A database made by a build of schema version 1 is migrated to version 2 at open, data
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_1_schema_is_migrated() {
    let url = pg_cluster::fresh_database();
    {
        let a = node(&url, ChangeNotify::Listen).await;
        write(
            &*a.database("db").await.unwrap(),
            vec![edit("kept", None, json!({}))],
        )
        .await;
    }
    async {
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
    }
    .await;
    let a = node(&url, ChangeNotify::Listen).await;
    let db = a.database("db").await.unwrap();
    assert!(db.doc_meta("kept").await.unwrap().is_some());
    db.put_setting("k", Some(b"v")).await.unwrap();
    assert_eq!(db.get_setting("k").await.unwrap().unwrap(), b"v");
}

/// `change_notify: "poll"` sends no `NOTIFY` (engines without `pg_notify`, such as
/// CockroachDB, would refuse every write): a `LISTEN`ing connection hears nothing of a poll
/// node's document, principal and settings writes, which another poll node still sees; the
/// same writes from a `LISTEN` node are heard (the listener works).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_nodes_send_no_notify_and_still_see_each_other() {
    let url = pg_cluster::fresh_database();
    let heard = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let _listener = {
        let heard = heard.clone();
        let url = url.clone();
        async move {
            use futures_util::StreamExt;
            let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(m)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = m {
                        heard.lock().unwrap().push(n.payload().to_string());
                    }
                }
            });
            client
                .batch_execute("LISTEN syncgate_changes")
                .await
                .unwrap();
            client
        }
        .await
    };
    let poll = ChangeNotify::Poll(Duration::from_millis(50));
    let (a, b) = (node(&url, poll).await, node(&url, poll).await);
    let (da, db_b) = (
        a.database("db").await.unwrap(),
        b.database("db").await.unwrap(),
    );
    let mut rx = db_b.subscribe();
    let mut settings = db_b.settings_changes().unwrap();
    let v0 = *settings.borrow_and_update();
    let w = write(&*da, vec![edit("x", None, json!({}))])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(wait_for(&mut rx, w.seq).await, w.seq);
    let (seq, _) = da
        .put_principal(syncgate_storage::PrincipalKind::User, "u", &mut |_| {
            Ok(b"{}".to_vec())
        })
        .await
        .unwrap();
    assert_eq!(wait_for(&mut rx, seq).await, seq);
    da.put_setting("sync_function", Some(b"one")).await.unwrap();
    wait_for(&mut settings, v0 + 1).await;
    da.raise_seq(seq + 10).await.unwrap();
    assert_eq!(wait_for(&mut rx, seq + 10).await, seq + 10);
    // the same writes from a LISTEN node are heard (so silence above means none was sent)
    let l = node(&url, ChangeNotify::Listen).await;
    let dl = l.database("db").await.unwrap();
    let w = write(&*dl, vec![edit("y", None, json!({}))])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(wait_for(&mut rx, w.seq).await, w.seq);
    dl.put_setting("sync_function", None).await.unwrap();
    async {
        tokio::time::timeout(Duration::from_secs(20), async {
            while heard.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the LISTEN node's notifications never arrived")
    }
    .await;
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard,
        vec![format!("{} db", w.seq), "settings 2 db".to_string()],
        "only the LISTEN node notifies"
    );
}

/// TLS to PostgreSQL (a cluster that refuses unencrypted connections, its certificate signed
/// by a CA made for the test): `verify-full` with that CA opens, as do `verify-ca`, `require`
/// and `prefer`; `verify-full` with another CA is refused with a TLS error saying so (at
/// startup: `Incompatible`, exit 2), never repeating the password; `disable` cannot connect.
/// The cluster authenticates with SCRAM (over TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_sslmode_and_sslrootcert() {
    let (cluster, ca, other_ca) = pg_cluster::Dedicated::start_tls();
    let port = cluster
        .url()
        .rsplit_once(':')
        .and_then(|(_, r)| r.split_once('/'))
        .map(|(p, _)| p.to_string())
        .unwrap();
    let url = |host: &str, params: &str| {
        format!("postgres://postgres:hunter2@{host}:{port}/postgres?{params}")
    };
    let opens = async |u: String| {
        PgStore::open(&PgOptions {
            url: u,
            pool_size: 2,
            notify: ChangeNotify::Listen,
        })
        .await
    };
    let ca = ca.display().to_string();
    for (host, params) in [
        ("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        ("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        ("127.0.0.1", "sslmode=require".to_string()),
        ("127.0.0.1", String::new()),
    ] {
        // the store works over it: the listener (LISTEN connection) too
        let a = opens(url(host, &params))
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        let b = opens(url(host, &params)).await.unwrap();
        let (da, db_b) = (
            a.database("db").await.unwrap(),
            b.database("db").await.unwrap(),
        );
        let mut rx = db_b.subscribe();
        let w = write(
            &*da,
            vec![edit(&format!("{host}{params}"), None, json!({}))],
        )
        .await
        .remove(0)
        .unwrap();
        assert_eq!(wait_for(&mut rx, w.seq).await, w.seq, "{params}");
    }
    for params in [
        format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
        format!("sslmode=verify-ca&sslrootcert={}", other_ca.display()),
    ] {
        let e = opens(url("127.0.0.1", &params))
            .await
            .err()
            .unwrap()
            .to_string();
        let StorageError::Incompatible(_) = opens(url("127.0.0.1", &params)).await.err().unwrap()
        else {
            panic!("{params}: not a startup error: {e}");
        };
        assert!(
            e.contains("TLS") && e.contains("certificate"),
            "{params}: {e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
    // a Unix socket (no TLS there: PostgreSQL never offers it) works with the default `prefer`
    let socket = format!(
        "postgres://postgres@localhost:{port}/postgres?host={}",
        cluster.socket_dir().display()
    );
    let s = opens(socket)
        .await
        .unwrap_or_else(|e| panic!("over the socket: {e}"));
    s.database("db").await.unwrap();
    // a missing CA file is named
    let e = opens(url(
        "127.0.0.1",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    // the password is checked (SCRAM over TLS above)
    let e =
        opens(url("127.0.0.1", "sslmode=require").replace(pg_cluster::TLS_PASSWORD, "wrong-pw"))
            .await
            .err()
            .unwrap();
    assert!(e.to_string().contains("password"), "{e}");
    // the cluster refuses unencrypted connections: TLS really was used above
    let e = opens(url("127.0.0.1", "sslmode=disable"))
        .await
        .err()
        .unwrap();
    assert!(!matches!(e, StorageError::Incompatible(_)), "{e}");
    assert!(e.to_string().contains("no encryption"), "{e}");
}

/// Compaction works through the database a page at a time (past the first page), while
/// another node writes: every old body goes, every write lands, the leaves stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_pages_through_the_documents_while_another_node_writes() {
    const DOCS: usize = 700;
    let url = pg_cluster::fresh_database();
    let (a, b) = (
        node(&url, ChangeNotify::Listen).await,
        node(&url, ChangeNotify::Listen).await,
    );
    let (da, db_b) = (
        a.database("db").await.unwrap(),
        b.database("db").await.unwrap(),
    );
    // each revision with an attachment of its own: the first ones' go with their bodies
    let attach = |mut w: DocWrite, bytes: String| {
        if let DocWrite::Edit { attachments, .. } = &mut w {
            attachments.push((
                "f".into(),
                syncgate_storage::AttachmentInput::Data {
                    content_type: "text/plain".into(),
                    data: bytes.into_bytes(),
                    revpos: None,
                },
            ));
        }
        w
    };
    let firsts: Vec<_> = write(
        &*da,
        (0..DOCS)
            .map(|i| {
                attach(
                    edit(&format!("d{i:04}"), None, json!({"v": 1})),
                    format!("old {i}"),
                )
            })
            .collect(),
    )
    .await;
    let seconds: Vec<DocWrite> = firsts
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let rev = w.as_ref().unwrap().rev.clone();
            attach(
                edit(&format!("d{i:04}"), Some(&rev), json!({"v": 2})),
                format!("new {i}"),
            )
        })
        .collect();
    write(&*da, seconds).await;
    let writer = {
        let db = db_b.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let r = write(&*db, vec![edit(&format!("during{i}"), None, json!({}))]).await;
                r.into_iter().for_each(|r| {
                    r.unwrap();
                });
            }
        })
    };
    let stats = da.compact().await.unwrap();
    writer.await.unwrap();
    assert_eq!(stats.bodies_removed, DOCS as u64);
    assert_eq!(stats.attachments_removed, DOCS as u64);
    for i in (0..DOCS).step_by(97) {
        let digest = |t: String| syncgate_storage::attachment_digest(t.as_bytes());
        assert!(da
            .attachment(&digest(format!("old {i}")))
            .await
            .unwrap()
            .is_none());
        assert!(da
            .attachment(&digest(format!("new {i}")))
            .await
            .unwrap()
            .is_some());
    }
    for (i, w) in firsts.iter().enumerate().step_by(97) {
        let id = format!("d{i:04}");
        assert!(da
            .rev_body(&id, &w.as_ref().unwrap().rev)
            .await
            .unwrap()
            .is_none());
        let meta = da.doc_meta(&id).await.unwrap().unwrap();
        for l in meta.tree.leaves() {
            assert!(da.rev_body(&id, &l.rev).await.unwrap().is_some());
        }
    }
    assert_eq!(db_b.doc_count().await.unwrap(), (DOCS + 50) as u64);
    assert_eq!(da.compact().await.unwrap().bodies_removed, 0);
}

/// A write transaction PostgreSQL aborts to break a deadlock (SQLSTATE 40P01) is run again
/// and succeeds: an outside transaction holds a document's row while the write (holding the
/// counter row) waits for it, then asks for the counter row itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_aborted_by_a_deadlock_is_retried() {
    let url = pg_cluster::fresh_database();
    let a = node(&url, ChangeNotify::Listen).await;
    let db = a.database("db").await.unwrap();
    let first = write(&*db, vec![edit("x", None, json!({"n": 1}))])
        .await
        .remove(0)
        .unwrap();
    let client = async {
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
    }
    .await;
    let writer = {
        let db = db.clone();
        let parent = first.rev.clone();
        tokio::spawn(
            async move { write(&*db, vec![edit("x", Some(&parent), json!({"n": 2}))]).await },
        )
    };
    // wait until the writer waits for the row (a guard against hanging, not a speed check)
    async {
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
    }
    .await;
    // now the deadlock: PostgreSQL aborts the writer's transaction, this one gets the row
    async {
        client
            .query_one(
                "SELECT last_seq FROM syncgate_counters WHERE db = 'db' FOR UPDATE",
                &[],
            )
            .await
            .unwrap();
        client.batch_execute("COMMIT").await.unwrap();
    }
    .await;
    let out = writer.await.unwrap().remove(0).unwrap();
    assert!(out.rev.starts_with("2-"), "{}", out.rev);
    let meta = db.doc_meta("x").await.unwrap().unwrap();
    assert_eq!(meta.winner(), Some((out.rev.as_str(), false)));
    assert_eq!(meta.seq, out.seq);
}
