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

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// PouchDB updates an attachment in place: new `data` beside the old `digest` and `revpos`. The
/// digest is recomputed from the data (CouchDB), and the attachment is new at this revision, so
/// `atts_since` the old revision carries its data.
#[test]
fn attachment_updated_in_place_gets_a_new_digest_and_revpos() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, r1) = put(
        &format!("{db}/doc"),
        &json!({"v": 1, "_attachments": {"a.txt": {"content_type": "text/plain", "data": b64(b"hello")}}}),
    );
    assert_eq!(st, 201, "{r1}");
    let rev1 = r1["rev"].as_str().unwrap().to_string();
    let (_, mut doc) = get(&format!("{db}/doc?attachments=true"));
    let old = doc["_attachments"]["a.txt"].clone();
    assert_eq!(
        (old["revpos"].clone(), old["data"].clone()),
        (json!(1), json!(b64(b"hello")))
    );
    doc["_attachments"]["a.txt"]["data"] = json!(b64(b"hello, world"));
    doc["v"] = json!(2);
    let (st, r2) = put(&format!("{db}/doc"), &doc);
    assert_eq!(st, 201, "old digest beside new data is accepted: {r2}");
    let rev2 = r2["rev"].as_str().unwrap().to_string();
    let (_, now) = get(&format!("{db}/doc"));
    let att = &now["_attachments"]["a.txt"];
    assert_ne!(
        att["digest"], old["digest"],
        "digest recomputed from the data"
    );
    assert_eq!(
        (att["length"].clone(), att["revpos"].clone()),
        (json!(12), json!(2))
    );
    let body = client()
        .get(format!("{db}/doc/a.txt"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(body, "hello, world");
    // a replicator that has rev 1 gets the new data, not a stub
    let (_, since) = get(&format!(
        "{db}/doc?rev={rev2}&attachments=true&atts_since=[\"{rev1}\"]"
    ));
    assert_eq!(
        since["_attachments"]["a.txt"]["data"],
        json!(b64(b"hello, world")),
        "{since}"
    );
    // the same with a digest that matches nothing at all, through _bulk_docs
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"docs": [{"_id": "doc", "_rev": rev2, "_attachments": {"a.txt": {
            "content_type": "text/plain", "data": b64(b"third"),
            "digest": "md5-AAAAAAAAAAAAAAAAAAAAAA==", "revpos": 1, "length": 99}}}]}),
    );
    assert_eq!(st, 201, "{r}");
    assert!(r[0]["rev"].as_str().unwrap().starts_with("3-"), "{r}");
    let (_, now) = get(&format!("{db}/doc"));
    let att = &now["_attachments"]["a.txt"];
    assert_eq!(
        (att["length"].clone(), att["revpos"].clone()),
        (json!(5), json!(3))
    );
    assert_ne!(att["digest"], "md5-AAAAAAAAAAAAAAAAAAAAAA==");
}

/// `new_edits:false` as CouchDB: `_revisions` decides over a `_rev` that disagrees; a history
/// that cannot be read refuses only its document (a replicator must not stall on one).
#[test]
fn lenient_new_edits_false() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    // _rev disagrees with _revisions: _revisions decides
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"new_edits": false, "docs": [
            {"_id": "a", "_rev": "3-zzz", "_revisions": {"start": 2, "ids": ["bbb", "aaa"]}, "v": 1}
        ]}),
    );
    assert_eq!(st, 201, "{r}");
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|row| row.get("error").is_none()),
        "{r}"
    );
    let (_, doc) = get(&format!("{db}/a?revs=true"));
    assert_eq!(doc["_rev"], "2-bbb");
    assert_eq!(
        doc["_revisions"],
        json!({"start": 2, "ids": ["bbb", "aaa"]})
    );
    assert_eq!(get(&format!("{db}/a?rev=3-zzz")).0, 404);
    // the same through PUT ?new_edits=false
    let (st, r) = put(
        &format!("{db}/p?new_edits=false"),
        &json!({"_rev": "9-x", "_revisions": {"start": 1, "ids": ["one"]}}),
    );
    assert_eq!((st, r["rev"].clone()), (201, json!("1-one")), "{r}");
    // a bare "1-" (PouchDB #7829) or an unreadable history: that document alone is refused
    for bad in [
        json!({"_id": "x", "_rev": "1-"}),
        json!({"_id": "x", "_rev": "nonsense"}),
        json!({"_id": "x", "_rev": "2-b", "_revisions": {"start": 1, "ids": ["b", "a"]}}),
        json!({"_id": "x", "_revisions": {"start": 2, "ids": "ab"}}),
    ] {
        let (st, r) = post(
            &format!("{db}/_bulk_docs"),
            &json!({"new_edits": false, "docs": [bad, {"_id": "ok", "_rev": "1-k"}]}),
        );
        assert_eq!(st, 201, "{bad}: {r}");
        let rows = r.as_array().unwrap();
        let x = rows.iter().find(|row| row["id"] == "x").unwrap();
        assert_eq!(x["error"], "bad_request", "{bad}: {r}");
        assert!(x["reason"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(rows
            .iter()
            .all(|row| row["id"] == "x" || row.get("error").is_none()));
        assert_eq!(get(&format!("{db}/ok")).1["_rev"], "1-k");
        assert_eq!(get(&format!("{db}/x")).0, 404);
    }
    // no history at all is a bad request, as CouchDB ("needs _rev or _revisions")
    assert_error(
        &post(
            &format!("{db}/_bulk_docs"),
            &json!({"new_edits": false, "docs": [{"_id": "y", "v": 1}]}),
        ),
        400,
        "bad_request",
    );
}
