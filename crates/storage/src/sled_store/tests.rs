//! Tests of the sled engine itself: its key layout, group commit, change views and the
//! collection of superseded entries. What every backend must do is in
//! `tests/conformance.rs`.

use super::*;

/// The engine's synchronous operations (the trait's are futures).
fn ops(db: &SledDatabase) -> &dyn SledOps {
    db
}
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
    let (r, ticket) = ops(db).write_docs(w)?;
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
    let view = db.open_view();
    let rows = view.since(since, false).map(|c| c.unwrap()).collect();
    rows
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
    db.combiner.hold_lead();
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
    assert_eq!(db.combiner.state(), (true, 5));
    // the batch ends: the lead passes to the first queued writer, which takes the rest
    db.combiner.release_lead();
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
    assert!(!db.combiner.state().0);
    assert_eq!(db.assigned_seq(), 6);
    assert_eq!(ops(&db).doc_count().unwrap(), 6);
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
    let (r, ticket) = ops(&db)
        .write_docs(vec![edit("a", None, serde_json::json!({}))])
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap().seq, 1);
    // applied, not yet flushed: invisible, and nobody is woken
    assert_eq!(db.last_seq(), 0);
    assert!(!rx.has_changed().unwrap());
    // the next writer numbers after it all the same
    let (r2, ticket2) = ops(&db)
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
    let (r, ticket) = ops(&db).write_docs(vec![with("a", Some(&a1.rev))]).unwrap();
    let a2 = r.into_iter().next().unwrap().unwrap();
    assert_eq!(a2.seq, 3);
    type Rows = Vec<(String, u64)>;
    let seqs = |v: &views::View<'_>| -> (Rows, Rows) {
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
    let old_view = db.open_view();
    assert_eq!(old_view.seq, 2);
    assert_eq!(seqs(&old_view), (at_two.clone(), at_two.clone()));
    let desc: Vec<u64> = old_view.since(0, true).map(|e| e.unwrap().seq).collect();
    assert_eq!(desc, vec![2, 1]);
    rt.block_on(db.durable(ticket)).unwrap();
    let at_three = vec![("b".to_string(), 2), ("a".to_string(), 3)];
    {
        let new_view = db.open_view();
        assert_eq!(new_view.seq, 3);
        assert_eq!(seqs(&new_view), (at_three.clone(), at_three.clone()));
    }
    // a write while the old view is open must not collect what it shows
    one(&db, with("c", None)).unwrap();
    assert_eq!(seqs(&old_view), (at_two.clone(), at_two));
    assert_eq!(db.raw_changes(0, false).count(), 4, "a@1 kept for the view");
    drop(old_view);
    // the next write collects it: the entry, its channel key and its record
    one(&db, with("d", None)).unwrap();
    let raw: Vec<u64> = db.raw_changes(0, false).map(|e| e.unwrap().seq).collect();
    assert_eq!(raw, vec![2, 3, 4, 5]);
    assert_eq!(db.scan(b'g').count(), 0);
    assert!(db.tree.get(channel_key("c", 1)).unwrap().is_none());
    // a document written twice in one batch: only its last entry, superseding the old one
    let b1 = ops(&db).doc_meta("b").unwrap().unwrap();
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
    db.compact_now().unwrap();
    assert_eq!(db.scan(b'g').count(), 0);
    assert_eq!(db.raw_changes(0, false).count(), 5);
    drop(db);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    assert_eq!(since(&db, 0).len(), 5);
}

/// An update that carries no attachment stubs reads the document's record once (its tree);
/// the parent's body is read only to resolve stubs.
#[test]
fn an_update_without_stubs_does_not_read_the_parent_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let a = one(&db, edit("a", None, serde_json::json!({"v": 1}))).unwrap();
    let before = db.docs_read.load(Ordering::Relaxed);
    one(&db, edit("a", Some(&a.rev), serde_json::json!({"v": 2}))).unwrap();
    assert_eq!(db.docs_read.load(Ordering::Relaxed) - before, 1);
}

/// A document's metadata comes with its winner's body (inline in the same record) in one
/// read: what GET and `include_docs` render without a second read.
#[test]
fn metadata_comes_with_the_winners_body_in_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let a = one(&db, edit("a", None, serde_json::json!({"v": 1}))).unwrap();
    let a2 = one(&db, edit("a", Some(&a.rev), serde_json::json!({"v": 2}))).unwrap();
    let before = db.docs_read.load(Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let got = rt
        .block_on(DatabaseStore::doc_metas_with_bodies(&*db, &["a", "none"]))
        .unwrap();
    assert_eq!(db.docs_read.load(Ordering::Relaxed) - before, 1);
    let (meta, body) = got[0].as_ref().unwrap();
    assert_eq!(meta.winner(), Some((a2.rev.as_str(), false)));
    let (rev, body) = body.as_ref().unwrap();
    assert_eq!(rev, &a2.rev);
    assert_eq!(body.json, br#"{"v":2}"#.to_vec());
    assert!(got[1].is_none());
}

/// Compaction collects superseded entries in steps (a single sled batch of tens of thousands
/// of removals held every node it replaced until it ended): more than one step's worth, kept
/// by an open view while they were superseded, all go.
#[test]
fn compaction_collects_superseded_entries_beyond_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    const N: usize = 5_000;
    let ids: Vec<String> = (0..N).map(|i| format!("doc-{i:05}")).collect();
    let created = durable_write(
        &db,
        ids.iter()
            .map(|id| edit(id, None, serde_json::json!({"v": 1})))
            .collect(),
    )
    .unwrap();
    let view = db.open_view();
    let updates = ids
        .iter()
        .zip(&created)
        .map(|(id, r)| {
            edit(
                id,
                Some(&r.as_ref().unwrap().rev),
                serde_json::json!({"v": 2}),
            )
        })
        .collect();
    durable_write(&db, updates).unwrap();
    assert_eq!(db.scan(b'g').count(), N, "kept for the open view");
    drop(view);
    db.compact_now().unwrap();
    assert_eq!(db.scan(b'g').count(), 0);
    assert_eq!(db.raw_changes(0, false).count(), N);
    assert_eq!(since(&db, 0).len(), N);
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
    // batches written so far: the readers go on until the writers did several (on a busy
    // machine 300 views can be over before a writer's first flush)
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // two writers, each owning half the documents, one or two documents per batch
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = db.clone();
            let stop = stop.clone();
            let written = written.clone();
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
                            let rev = ops(&db).doc_meta(id).unwrap().unwrap();
                            let rev = rev.winner().unwrap().0.to_string();
                            with(id, Some(rev), n)
                        })
                        .collect();
                    let (r, t) = ops(&db).write_docs(writes).unwrap();
                    assert!(r.iter().all(|r| r.is_ok()));
                    rt.block_on(db.durable(t)).unwrap();
                    written.fetch_add(1, Ordering::SeqCst);
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
            let written = written.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut views = 0;
                while views < 300
                    || (written.load(Ordering::SeqCst) < 20
                        && started.elapsed() < std::time::Duration::from_secs(60))
                {
                    views += 1;
                    let view = db.open_view();
                    let v = view.seq;
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
    let rev = ops(&db).doc_meta("d00").unwrap().unwrap();
    let rev = rev.winner().unwrap().0.to_string();
    one(&db, with("d00", Some(rev), 0)).unwrap();
    assert!(db.scan(b'g').count() <= 1);
    assert_eq!(since(&db, 0).len(), DOCS);
}

#[test]
fn a_corrupt_body_is_an_error_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let (mut r, _) = ops(&db)
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
    // the body is inline in the document's record: corrupt it there
    let meta = ops(&db).doc_meta("doc-x").unwrap().unwrap();
    let record = encode_doc("doc-x", &meta, Some((&rev, b"\x01\xff"))).unwrap();
    db.tree.insert(doc_key("doc-x"), record).unwrap();
    let err = ops(&db).rev_body("doc-x", &rev).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("doc-x"), "{err}");
    // and a body under its own key
    db.tree
        .insert(body_key("doc-x", "1-abc"), &b"\x01\xff"[..])
        .unwrap();
    let err = ops(&db).rev_body("doc-x", "1-abc").unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("doc-x"), "{err}");
    for bad in [&b"not json"[..], b"\x01\x00\x00", b"\x02{}", b""] {
        db.tree.insert(doc_key("doc-x"), bad).unwrap();
        let err = ops(&db).doc_meta("doc-x").unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("doc-x"), "{err}");
    }
}

/// The body keys a document has (revision ids).
fn body_keys(db: &SledDatabase, id: &str) -> Vec<String> {
    let prefix = body_key(id, "");
    db.tree
        .scan_prefix(&prefix)
        .map(|r| String::from_utf8(r.unwrap().0[prefix.len()..].to_vec()).unwrap())
        .collect()
}

fn inline_rev(db: &SledDatabase, id: &str) -> Option<String> {
    let v = db.tree.get(doc_key(id)).unwrap().unwrap();
    split_doc(id, &v)
        .unwrap()
        .inline
        .map(|(r, _)| r.to_string())
}

#[test]
fn a_new_document_is_two_keys_and_its_winner_body_stays_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let a = one(&db, edit("doc", None, serde_json::json!({"v": 1}))).unwrap();
    assert_eq!(inline_rev(&db, "doc"), Some(a.rev.clone()));
    assert!(body_keys(&db, "doc").is_empty());
    // an update: the new winner inline, the old body under its own key
    let b = one(&db, edit("doc", Some(&a.rev), serde_json::json!({"v": 2}))).unwrap();
    assert_eq!(inline_rev(&db, "doc"), Some(b.rev.clone()));
    assert_eq!(body_keys(&db, "doc"), vec![a.rev.clone()]);
    assert_eq!(
        ops(&db).rev_body("doc", &a.rev).unwrap().unwrap().json,
        br#"{"v":1}"#
    );
    assert_eq!(
        ops(&db).rev_body("doc", &b.rev).unwrap().unwrap().json,
        br#"{"v":2}"#
    );
    // a losing conflict does not displace the winner
    let c = one(
        &db,
        DocWrite::Replicate {
            id: "doc".into(),
            history: vec!["2-000".into(), a.rev.clone()],
            deleted: false,
            body: br#"{"v":3}"#.to_vec(),
            attachments: vec![],
            channels: vec![],
            access: Default::default(),
            revs_limit: 1000,
        },
    )
    .unwrap();
    assert_eq!(
        ops(&db)
            .doc_meta("doc")
            .unwrap()
            .unwrap()
            .winner()
            .unwrap()
            .0,
        b.rev
    );
    assert_eq!(inline_rev(&db, "doc"), Some(b.rev.clone()));
    assert_eq!(
        ops(&db).rev_body("doc", &c.rev).unwrap().unwrap().json,
        br#"{"v":3}"#
    );
    // two writes of one document in one batch
    let r = durable_write(
        &db,
        vec![
            edit("two", None, serde_json::json!({"n": 1})),
            edit("other", None, serde_json::json!({})),
        ],
    )
    .unwrap();
    let t1 = r[0].as_ref().unwrap().rev.clone();
    let r = durable_write(
        &db,
        vec![
            edit("two", Some(&t1), serde_json::json!({"n": 2})),
            edit("other2", None, serde_json::json!({})),
        ],
    )
    .unwrap();
    let t2 = r[0].as_ref().unwrap().rev.clone();
    assert_eq!(inline_rev(&db, "two"), Some(t2.clone()));
    assert_eq!(body_keys(&db, "two"), vec![t1.clone()]);
    // compaction drops the old bodies, not the inline winner
    let stats = db.compact_now().unwrap();
    assert_eq!(stats.bodies_removed, 2, "{stats:?}");
    assert!(body_keys(&db, "two").is_empty());
    assert_eq!(body_keys(&db, "doc"), vec![c.rev.clone()]);
    assert_eq!(inline_rev(&db, "doc"), Some(b.rev.clone()));
    assert_eq!(
        ops(&db).rev_body("doc", &b.rev).unwrap().unwrap().json,
        br#"{"v":2}"#
    );
    assert_eq!(
        ops(&db).rev_body("two", &t2).unwrap().unwrap().json,
        br#"{"n":2}"#
    );
    assert!(ops(&db).rev_body("two", &t1).unwrap().is_none());
}

#[test]
fn pruning_drops_an_inline_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let mut w = edit("doc", None, serde_json::json!({"v": 0}));
    if let DocWrite::Edit { revs_limit, .. } = &mut w {
        *revs_limit = 1;
    }
    let a = one(&db, w).unwrap();
    let mut w = edit("doc", Some(&a.rev), serde_json::json!({"v": 1}));
    if let DocWrite::Edit { revs_limit, .. } = &mut w {
        *revs_limit = 1;
    }
    let b = one(&db, w).unwrap();
    assert_eq!(inline_rev(&db, "doc"), Some(b.rev.clone()));
    assert!(
        body_keys(&db, "doc").is_empty(),
        "{:?}",
        body_keys(&db, "doc")
    );
    assert!(ops(&db).rev_body("doc", &a.rev).unwrap().is_none());
}

#[test]
fn documents_in_the_first_format_are_read_updated_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let a = one(&db, edit("old", None, serde_json::json!({"v": 1}))).unwrap();
    // rewrite it as the first format stored it: JSON metadata, the body under `b`
    let meta = ops(&db).doc_meta("old").unwrap().unwrap();
    let body = ops(&db).rev_body("old", &a.rev).unwrap().unwrap();
    db.tree
        .insert(doc_key("old"), serde_json::to_vec(&meta).unwrap())
        .unwrap();
    db.tree
        .insert(body_key("old", &a.rev), body.encode().unwrap())
        .unwrap();
    assert_eq!(inline_rev(&db, "old"), None);
    assert_eq!(ops(&db).doc_meta("old").unwrap().unwrap().seq, meta.seq);
    assert_eq!(
        ops(&db).rev_body("old", &a.rev).unwrap().unwrap().json,
        br#"{"v":1}"#
    );
    let all: Vec<_> = ops(&db)
        .docs_from("", false)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(all, vec!["old".to_string()]);
    // an update writes the second format; the old body stays under its key
    let b = one(&db, edit("old", Some(&a.rev), serde_json::json!({"v": 2}))).unwrap();
    assert_eq!(inline_rev(&db, "old"), Some(b.rev.clone()));
    assert_eq!(body_keys(&db, "old"), vec![a.rev.clone()]);
    assert_eq!(
        ops(&db).rev_body("old", &a.rev).unwrap().unwrap().json,
        br#"{"v":1}"#
    );
    assert_eq!(db.compact_now().unwrap().bodies_removed, 1);
    assert!(body_keys(&db, "old").is_empty());
    assert_eq!(
        ops(&db).rev_body("old", &b.rev).unwrap().unwrap().json,
        br#"{"v":2}"#
    );
}

#[test]
fn document_metadata_round_trips_through_the_binary_encoding() {
    use crate::revtree::{RevNode, RevTree};
    let node = |rev: &str, parent: Option<&str>| RevNode {
        rev: rev.into(),
        parent: parent.map(Into::into),
        deleted: false,
        seq: 7,
        has_body: true,
        channels: vec![],
        access: Default::default(),
    };
    let mut access = RevAccess::default();
    access
        .channels
        .insert("alice".into(), ["c1".to_string(), "c2".to_string()].into());
    access.roles.insert("bob".into(), ["r".to_string()].into());
    let mut nodes = vec![
        // a root left by pruning: its parent is not in the tree
        node("3-0123456789abcdef0123456789abcdef", Some("2-gone")),
        node(
            "4-fedcba9876543210fedcba9876543210",
            Some("3-0123456789abcdef0123456789abcdef"),
        ),
        // ids that are not `N-<32 lowercase hex>` are kept as text
        node("5-ABCDEF", Some("4-fedcba9876543210fedcba9876543210")),
        node("05-0123456789abcdef0123456789abcdef", None),
        node("6-0123456789abcdef0123456789abcdeg", Some("5-ABCDEF")),
        node("7-é", Some("6-0123456789abcdef0123456789abcdeg")),
    ];
    nodes[1].deleted = true;
    nodes[2].has_body = false;
    nodes[3].channels = vec!["a".into(), "b\u{0}c".into()];
    nodes[4].access = access;
    nodes[5].seq = u64::MAX;
    // a parent listed after its child
    nodes.push(node("9-00000000000000000000000000000000", Some("10-x")));
    nodes.push(node("10-x", None));
    // a sign is not the printed form (kept as text); generation 0 is
    nodes.push(node("+8-0123456789abcdef0123456789abcdef", None));
    nodes.push(node("0-0123456789abcdef0123456789abcdef", None));
    let small = DocMeta {
        seq: 300,
        tree: RevTree {
            nodes: nodes.clone(),
        },
        channel_history: vec!["a".into(), "z".into()],
    };
    // more than 8 revisions: parents found through an index
    let mut big = nodes.clone();
    for g in 11..40u64 {
        let parent = big.last().map(|n| n.rev.clone());
        big.push(node(&format!("{g}-{:032x}", g * 7919), parent.as_deref()));
    }
    let big = DocMeta {
        seq: 1,
        tree: RevTree { nodes: big },
        channel_history: vec![],
    };
    for meta in [small, big, DocMeta::default()] {
        let mut out = Vec::new();
        encode_meta(&mut out, &meta).unwrap();
        let back = decode_meta(&out).unwrap();
        assert_eq!(back.seq, meta.seq);
        assert_eq!(back.tree, meta.tree);
        assert_eq!(back.channel_history, meta.channel_history);
        // and inside a record, with and without an inline body
        for inline in [None, Some(("1-a", &b"\x01body"[..]))] {
            let rec = encode_doc("d", &meta, inline).unwrap();
            assert_eq!(decode_doc("d", &rec).unwrap().tree, meta.tree);
            assert_eq!(split_doc("d", &rec).unwrap().inline, inline);
        }
        // every truncation, and trailing bytes, are errors (never a default)
        for cut in 0..out.len() {
            assert!(decode_meta(&out[..cut]).is_err(), "cut at {cut}");
        }
        out.push(0);
        assert!(decode_meta(&out).is_err());
    }
}

#[test]
fn a_revision_tree_in_binary_is_under_a_fifth_of_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    let mut rev = one(&db, edit("doc", None, serde_json::json!({"v": 0})))
        .unwrap()
        .rev;
    for v in 1..30 {
        rev = one(&db, edit("doc", Some(&rev), serde_json::json!({ "v": v })))
            .unwrap()
            .rev;
    }
    let meta = ops(&db).doc_meta("doc").unwrap().unwrap();
    let mut bin = Vec::new();
    encode_meta(&mut bin, &meta).unwrap();
    let json = serde_json::to_vec(&meta).unwrap();
    assert!(
        bin.len() * 5 < json.len(),
        "{} vs {}",
        bin.len(),
        json.len()
    );
}

#[test]
fn change_entries_round_trip_and_the_first_format_is_read() {
    let entries = [
        ChangeEntry {
            seq: 1,
            id: "doc".into(),
            leaves: vec![ChangeRev {
                rev: "1-0123456789abcdef0123456789abcdef".into(),
                deleted: false,
            }],
            channels: vec![],
            removed: vec![],
            superseded: None,
        },
        ChangeEntry {
            seq: u64::MAX - 1,
            id: "é \u{0}x".into(),
            leaves: vec![
                ChangeRev {
                    rev: "12-ABC".into(),
                    deleted: true,
                },
                ChangeRev {
                    rev: "3-fedcba9876543210fedcba9876543210".into(),
                    deleted: true,
                },
            ],
            channels: vec!["a".into(), "b".into()],
            removed: vec!["gone".into()],
            superseded: Some(u64::MAX),
        },
    ];
    for e in &entries {
        let key = seq_key(e.seq);
        let bin = encode_change(e);
        assert_eq!(&decode_change(&key, &bin).unwrap(), e);
        let json = serde_json::to_vec(e).unwrap();
        assert!(bin.len() < json.len(), "{} vs {}", bin.len(), json.len());
        assert_eq!(&decode_change(&key, &json).unwrap(), e);
        for cut in 0..bin.len() {
            let err = decode_change(&key, &bin[..cut]).unwrap_err();
            assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        }
        let mut long = bin.clone();
        long.push(0);
        assert!(decode_change(&key, &long).is_err());
    }
    let err = decode_change(&seq_key(42), b"\x07").unwrap_err();
    assert!(err.to_string().contains("sequence 42"), "{err}");

    // entries stored as JSON by an earlier version are served by the views
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let db = store.database("db").unwrap();
    one(&db, edit("a", None, serde_json::json!({}))).unwrap();
    let b = one(&db, edit("b", None, serde_json::json!({}))).unwrap();
    let stored = since(&db, 0);
    let old = stored.iter().find(|e| e.id == "a").unwrap();
    db.tree
        .insert(seq_key(old.seq), serde_json::to_vec(old).unwrap())
        .unwrap();
    assert_eq!(since(&db, 0), stored);
    // and an update supersedes it in the current format
    one(
        &db,
        edit("a", Some(&old.leaves[0].rev), serde_json::json!({"v": 1})),
    )
    .unwrap();
    let rows = since(&db, 0);
    assert_eq!(
        rows.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec!["b", "a"]
    );
    assert_eq!(rows[0].seq, b.seq);
}
