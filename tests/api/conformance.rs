//! CouchDB/PouchDB conformance (issue 13): consistent `_changes` snapshots under concurrent
//! writes, in-place attachment updates, lenient `new_edits:false`, eventsource resume,
//! `_all_docs` keys and parameters, `_local` semantics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::*;

/// Ids of a `_changes` body, in order.
fn change_ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every `_changes?since=0` read that overlaps `_bulk_docs` updates lists every document exactly
/// once: at its old sequence or its new one, never at neither, never at both. Checked for the
/// admin feed (by-sequence index) and a channel-limited user's feed (channel index).
#[test]
fn changes_snapshot_lists_every_doc_once_under_concurrent_updates() {
    const DOCS: usize = 20;
    const READS: usize = 150;
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    post(
        &format!("{db}/_user/"),
        &json!({"name": "reader", "password": "pw-reader-1", "admin_channels": ["c"]}),
    );
    let docs: Vec<Value> = (0..DOCS)
        .map(|i| json!({"_id": format!("d{i:02}"), "channels": ["c"], "n": 0}))
        .collect();
    let (st, res) = post(&format!("{db}/_bulk_docs"), &json!({"docs": docs}));
    assert_eq!(st, 201, "{res}");
    let mut revs: HashMap<String, String> = res
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["rev"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<String> = {
        let mut v: Vec<String> = revs.keys().cloned().collect();
        v.sort();
        v
    };
    let stop = Arc::new(AtomicBool::new(false));
    // one writer updating every document, one small batch after the other
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let c = client();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // a few documents per batch, so feeds overlap many separate batches
                let ids: Vec<String> = (0..3)
                    .map(|k| format!("d{:02}", (n as usize * 3 + k) % DOCS))
                    .collect();
                let docs: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"_id": id, "_rev": revs[id], "channels": ["c"], "n": n}))
                    .collect();
                let r: Value = c
                    .post(format!("{db}/_bulk_docs"))
                    .json(&json!({"docs": docs}))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                for row in r.as_array().unwrap() {
                    let rev = row["rev"].as_str().unwrap_or_else(|| panic!("{row}"));
                    revs.insert(row["id"].as_str().unwrap().to_string(), rev.to_string());
                }
            }
            n
        })
    };
    let reader = |url: String, auth: Option<(&'static str, &'static str)>| {
        let expected = expected.clone();
        std::thread::spawn(move || {
            let c = client();
            for i in 0..READS {
                let mut rb = c.get(&url);
                if let Some((u, p)) = auth {
                    rb = rb.basic_auth(u, Some(p));
                }
                let body: Value = rb.send().unwrap().json().unwrap();
                let mut ids = change_ids(&body);
                ids.sort();
                assert_eq!(
                    ids, expected,
                    "read {i}: every document exactly once, got {body}"
                );
            }
        })
    };
    let readers = vec![
        reader(format!("{db}/_changes?since=0"), None),
        reader(
            format!("{}/db/_changes?since=0", s.public),
            Some(("reader", "pw-reader-1")),
        ),
    ];
    let mut failure = None;
    for r in readers {
        if let Err(e) = r.join() {
            failure.get_or_insert(e);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let batches = writer.join().unwrap();
    if let Some(e) = failure {
        std::panic::resume_unwind(e);
    }
    assert!(batches > 1, "the writer ran alongside the readers");
}
