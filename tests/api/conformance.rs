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

/// The events of an eventsource body: (id line, row).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| e.contains("data: "))
        .map(|e| {
            let line = |p: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(p))
                    .unwrap_or_else(|| panic!("no {p} in {e:?}"))
                    .to_string()
            };
            (line("id: "), serde_json::from_str(&line("data: ")).unwrap())
        })
        .collect()
}

/// An EventSource reconnects to the same URL (here `since` of the first connection) with
/// `Last-Event-ID`: that wins, including the compound `"G:S"` id of a backfill row, so no event
/// comes twice.
#[test]
fn eventsource_last_event_id_wins_over_since_and_round_trips_compound_ids() {
    let s = TestServer::start();
    let admin = format!("{}/db", s.admin);
    post(
        &format!("{admin}/_user/"),
        &json!({"name": "u", "password": "pw-u-12345", "admin_channels": ["a"]}),
    );
    let docs: Vec<Value> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| json!({"_id": id, "channels": ["b"]}))
        .chain([json!({"_id": "a1", "channels": ["a"]})])
        .collect();
    assert_eq!(
        post(&format!("{admin}/_bulk_docs"), &json!({"docs": docs})).0,
        201
    );
    let (_, info) = get(&format!("{admin}/"));
    let checkpoint = info["update_seq"].as_u64().unwrap();
    // granting b adds backfill rows "G:S" for b1..b3 at the grant's sequence G
    assert_eq!(
        put(
            &format!("{admin}/_user/u"),
            &json!({"admin_channels": ["a", "b"]})
        )
        .0,
        200
    );
    let url = format!(
        "{}/db/_changes?feed=eventsource&since={checkpoint}&timeout=300",
        s.public
    );
    let open = |last: Option<&str>| {
        let mut rb = client()
            .get(&url)
            .basic_auth("u", Some("pw-u-12345"))
            .header("accept", "text/event-stream");
        if let Some(l) = last {
            rb = rb.header("last-event-id", l);
        }
        let r = rb.send().unwrap();
        assert_eq!(r.status(), 200);
        events(&r.text().unwrap())
    };
    let first = open(None);
    let ids: Vec<&str> = first
        .iter()
        .map(|(_, r)| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "b2", "b3"], "{first:?}");
    for (id, row) in &first {
        assert!(row["seq"].is_string(), "backfill rows are compound: {row}");
        assert_eq!(*id, row["seq"].to_string(), "the id is the row's JSON seq");
    }
    // reconnect after the second event: the rest of the group, nothing twice
    let again = open(Some(&first[1].0));
    let ids: Vec<&str> = again
        .iter()
        .map(|(_, r)| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b3"], "{again:?}");
    // a new change, then a reconnect from the last event: only the new one
    put(&format!("{admin}/a2"), &json!({"channels": ["a"]}));
    let last = open(Some(&first[2].0));
    let ids: Vec<&str> = last
        .iter()
        .map(|(_, r)| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a2"], "{last:?}");
    assert!(last[0].1["seq"].is_u64());
    // and from a plain id: nothing after it
    assert!(open(Some(&last[0].0)).is_empty());
    // a malformed Last-Event-ID is refused like a malformed since
    let r = client()
        .get(&url)
        .basic_auth("u", Some("pw-u-12345"))
        .header("last-event-id", "x:y")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Ids of an `_all_docs` body, in order.
fn row_ids(v: &Value) -> Vec<String> {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"))
        .iter()
        .map(|r| r["id"].as_str().or(r["key"].as_str()).unwrap().to_string())
        .collect()
}

/// `_all_docs`: `key` gives that row (never one outside the caller's channels), `keys` with a
/// range is refused as CouchDB does, and a parameter it does not support is a 400 naming it.
#[test]
fn all_docs_key_keys_and_unsupported_parameters() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let docs: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| json!({"_id": id, "channels": ["pub"], "v": id}))
        .chain([json!({"_id": "secret", "channels": ["hidden"]})])
        .collect();
    assert_eq!(
        post(&format!("{db}/_bulk_docs"), &json!({"docs": docs})).0,
        201
    );
    let ids = |q: &str| {
        let (st, r) = get(&format!("{db}/_all_docs?{q}"));
        assert_eq!(st, 200, "{q}: {r}");
        row_ids(&r)
    };
    // key: JSON-encoded (as PouchDB sends it) or bare
    assert_eq!(ids("key=%22b%22"), ["b"]);
    assert_eq!(ids("key=b"), ["b"]);
    assert_eq!(ids("key=%22zz%22"), Vec::<String>::new());
    assert_eq!(ids("key=%22b%22&inclusive_end=false"), Vec::<String>::new());
    let (_, r) = get(&format!("{db}/_all_docs?key=%22b%22&include_docs=true"));
    assert_eq!(r["rows"][0]["doc"]["v"], "b", "{r}");
    // key with a startkey or endkey beside it: that bound replaces the key's (no error, as
    // CouchDB answers PouchDB)
    assert_eq!(ids("key=%22b%22&endkey=%22c%22"), ["b", "c"]);
    // ranges, descending, and keys in their order (reversed when descending, as CouchDB)
    assert_eq!(ids("startkey=%22b%22&endkey=%22c%22"), ["b", "c"]);
    assert_eq!(ids("startkey=%22c%22&endkey=%22b%22"), Vec::<String>::new());
    assert_eq!(
        ids("startkey=%22c%22&endkey=%22b%22&descending=true"),
        ["c", "b"]
    );
    assert_eq!(ids("startkey_docid=c&endkey_docid=d"), ["c", "d"]);
    assert_eq!(ids("keys=%5B%22c%22,%22a%22%5D"), ["c", "a"]);
    assert_eq!(
        ids("keys=%5B%22c%22,%22a%22%5D&descending=true"),
        ["a", "c"]
    );
    // no-op hints are accepted (validated)
    assert_eq!(
        ids("stable=true&stale=ok&update=lazy&sorted=true&reduce=false&att_encoding_info=true")
            .len(),
        5
    );
    // keys with key/startkey/endkey: 400 with CouchDB's reason, by query or POST body
    for q in [
        "keys=%5B%22a%22%5D&key=%22a%22",
        "keys=%5B%22a%22%5D&startkey=%22a%22",
        "keys=%5B%22a%22%5D&end_key=%22a%22",
    ] {
        let r = get(&format!("{db}/_all_docs?{q}"));
        assert_error(&r, 400, "bad_request");
        assert!(
            r.1["reason"]
                .as_str()
                .unwrap()
                .contains("`keys` is incompatible"),
            "{q}: {}",
            r.1
        );
    }
    assert_error(
        &post(
            &format!("{db}/_all_docs?startkey=%22a%22"),
            &json!({"keys": ["a"]}),
        ),
        400,
        "bad_request",
    );
    let (st, r) = post(&format!("{db}/_all_docs"), &json!({"keys": ["b", "nope"]}));
    assert_eq!(st, 200);
    assert_eq!(r["rows"][1], json!({"key": "nope", "error": "not_found"}));
    // anything _all_docs does not support: 400 naming it, never silently ignored
    for (q, name) in [
        ("group_level=1", "group_level"),
        ("channels=true", "channels"),
        ("revs=true", "revs"),
        ("includedocs=true", "includedocs"),
        ("reduce=true", "reduce"),
        ("group=true", "group"),
        ("stale=never", "stale"),
        ("update=maybe", "update"),
        ("inclusive_end=maybe", "inclusive_end"),
        ("key=1", "key"),
    ] {
        let r = get(&format!("{db}/_all_docs?{q}"));
        assert_error(&r, 400, "bad_request");
        assert!(
            r.1["reason"].as_str().unwrap().contains(name),
            "{q}: {}",
            r.1
        );
    }
    let r = post(
        &format!("{db}/_all_docs"),
        &json!({"keys": ["a"], "bogus": 1}),
    );
    assert_error(&r, 400, "bad_request");
    assert!(r.1["reason"].as_str().unwrap().contains("bogus"), "{}", r.1);
    // POST body parameters as CouchDB accepts them
    let (st, r) = post(
        &format!("{db}/_all_docs"),
        &json!({"keys": ["a", "b"], "include_docs": true, "limit": 1}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (row_ids(&r), r["rows"][0]["doc"]["v"].clone()),
        (vec!["a".to_string()], json!("a"))
    );
    // the public port: key never reveals a document outside the user's channels
    post(
        &format!("{db}/_user/"),
        &json!({"name": "u", "password": "pw-u-12345", "admin_channels": ["pub"]}),
    );
    let as_u = |q: &str| {
        let r = send(
            client()
                .get(format!("{}/db/_all_docs?{q}", s.public))
                .basic_auth("u", Some("pw-u-12345")),
        );
        assert_eq!(r.0, 200, "{q}: {}", r.1);
        r.1
    };
    assert_eq!(row_ids(&as_u("key=%22a%22")), ["a"]);
    let hidden = as_u("key=%22secret%22&include_docs=true");
    assert_eq!(hidden["rows"], json!([]), "{hidden}");
    assert!(!hidden.to_string().contains("secret"), "{hidden}");
    assert_eq!(row_ids(&as_u("")), ["a", "b", "c", "d"]);
}

/// `_local` docs as CouchDB: `DELETE` answers `{"ok","id","rev":"0-0"}`; a write with
/// `_deleted:true` deletes (PUT and `_bulk_docs`); missing → 404, rev mismatch → 409.
#[test]
fn local_docs_delete_and_deleted_writes() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, r) = put(&format!("{db}/_local/x"), &json!({"v": 1}));
    assert_eq!(
        (st, r.clone()),
        (201, json!({"ok": true, "id": "_local/x", "rev": "0-1"}))
    );
    // DELETE: the rev must match; the answer carries rev 0-0
    assert_error(&delete(&format!("{db}/_local/x?rev=0-7")), 409, "conflict");
    assert_error(&delete(&format!("{db}/_local/x")), 409, "conflict");
    let (st, r) = delete(&format!("{db}/_local/x?rev=0-1"));
    assert_eq!(
        (st, r),
        (200, json!({"ok": true, "id": "_local/x", "rev": "0-0"}))
    );
    assert_error(&get(&format!("{db}/_local/x")), 404, "not_found");
    assert_error(&delete(&format!("{db}/_local/x?rev=0-1")), 404, "not_found");
    // a new doc after the delete starts again at 0-1
    let (st, r) = put(&format!("{db}/_local/x"), &json!({"v": 2}));
    assert_eq!((st, r["rev"].clone()), (201, json!("0-1")));
    // PUT with _deleted:true deletes it (not stored as 0-2)
    assert_error(
        &put(
            &format!("{db}/_local/x"),
            &json!({"_rev": "0-9", "_deleted": true}),
        ),
        409,
        "conflict",
    );
    let (st, r) = put(
        &format!("{db}/_local/x"),
        &json!({"_rev": "0-1", "_deleted": true, "v": 3}),
    );
    assert_eq!(
        (st, r),
        (201, json!({"ok": true, "id": "_local/x", "rev": "0-0"}))
    );
    assert_error(&get(&format!("{db}/_local/x")), 404, "not_found");
    assert_error(
        &put(&format!("{db}/_local/x"), &json!({"_deleted": true})),
        404,
        "not_found",
    );
    assert_error(
        &put(&format!("{db}/_local/x"), &json!({"_deleted": "yes"})),
        400,
        "bad_request",
    );
    // the same through _bulk_docs, with per-document errors beside other documents
    put(&format!("{db}/_local/y"), &json!({}));
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"docs": [
            {"_id": "_local/y", "_rev": "0-1", "_deleted": true},
            {"_id": "_local/godzilla", "_rev": "0-1", "_deleted": true},
            {"_id": "plain"},
        ]}),
    );
    assert_eq!(st, 201, "{r}");
    assert_eq!(r[0], json!({"ok": true, "id": "_local/y", "rev": "0-0"}));
    assert_eq!(
        (r[1]["id"].clone(), r[1]["error"].clone()),
        (json!("_local/godzilla"), json!("not_found"))
    );
    assert_eq!(r[2]["ok"], true);
    assert_error(&get(&format!("{db}/_local/y")), 404, "not_found");
    // local docs never enter the feed
    let (_, ch) = get(&format!("{db}/_changes"));
    assert_eq!(change_ids(&ch), ["plain"]);
}

#[test]
fn latest_bulk_get_revs_and_all_docs_attachments() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (_, r1) = put(&format!("{db}/lt"), &json!({"v": 1}));
    let rev1 = r1["rev"].as_str().unwrap().to_string();
    let (_, r2) = put(&format!("{db}/lt?rev={rev1}"), &json!({"v": 2}));
    let rev2 = r2["rev"].as_str().unwrap().to_string();
    // item 2: ?rev=R&latest=true answers the leaf of R's branch
    let (st, d) = get(&format!("{db}/lt?rev={rev1}&latest=true"));
    assert_eq!(st, 200);
    assert_eq!(d["_rev"], rev2.as_str());
    assert_eq!(d["v"], 2);
    let (_, d) = get(&format!("{db}/lt?rev={rev1}"));
    assert_eq!(
        d["_rev"],
        rev1.as_str(),
        "without latest, the asked revision"
    );
    // item 3: _bulk_get gives _revisions only when revs=true
    let body = json!({"docs": [{"id": "lt", "rev": rev2}]});
    let (st, b) = post(&format!("{db}/_bulk_get"), &body);
    assert_eq!(st, 200);
    let doc = &b["results"][0]["docs"][0]["ok"];
    assert_eq!(doc["_rev"], rev2.as_str());
    assert!(doc.get("_revisions").is_none(), "{doc}");
    let (_, b) = post(&format!("{db}/_bulk_get?revs=true"), &body);
    assert_eq!(b["results"][0]["docs"][0]["ok"]["_revisions"]["start"], 2);
    // item 7: _all_docs?include_docs&attachments=true inlines attachment data
    let (st, _) = put(
        &format!("{db}/att"),
        &json!({"_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}}),
    );
    assert_eq!(st, 201);
    let (_, all) = get(&format!(
        "{db}/_all_docs?include_docs=true&attachments=true&keys=[\"att\"]"
    ));
    let a = &all["rows"][0]["doc"]["_attachments"]["a.txt"];
    assert_eq!(a["data"], "aGVsbG8=", "{all}");
    assert!(a.get("stub").is_none());
    let (_, all) = get(&format!("{db}/_all_docs?include_docs=true"));
    let row = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "att")
        .unwrap()
        .clone();
    assert_eq!(row["doc"]["_attachments"]["a.txt"]["stub"], true);
}

/// A feed of more rows than one page (1,000) is sent a page at a time: still one JSON body
/// with every row once, in sequence order, documents included, the right `last_seq` — for a
/// normal feed, a channel-limited user's feed, a `limit` inside the second page and a
/// longpoll that has changes ready.
#[test]
fn a_feed_larger_than_a_page_is_one_body_in_order() {
    const DOCS: usize = 2_345;
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    for chunk in (0..DOCS).collect::<Vec<_>>().chunks(500) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(
                |i| json!({"_id": format!("d{i:05}"), "channels": [format!("c{}", i % 2)], "n": i}),
            )
            .collect();
        let (st, _) = post(&format!("{db}/_bulk_docs"), &json!({"docs": docs}));
        assert_eq!(st, 201);
    }
    let all: Vec<String> = (0..DOCS).map(|i| format!("d{i:05}")).collect();
    let check = |url: &str, want: &[String], last_seq: u64| {
        let resp = client().get(url).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&resp.text().unwrap())
            .unwrap_or_else(|e| panic!("{url}: not one JSON body: {e}"));
        assert_eq!(change_ids(&v), want, "{url}");
        let seqs: Vec<u64> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{url}: sequence order"
        );
        assert_eq!(v["last_seq"], last_seq, "{url}");
        v
    };
    let v = check(
        &format!("{db}/_changes?include_docs=true"),
        &all,
        DOCS as u64,
    );
    let rows = v["results"].as_array().unwrap();
    assert!(rows.iter().enumerate().all(|(i, r)| r["doc"]["n"] == i));
    check(&format!("{db}/_changes?limit=1500"), &all[..1500], 1500);
    check(
        &format!("{db}/_changes?feed=longpoll&since=0"),
        &all,
        DOCS as u64,
    );
    // a user reading one channel: every other document, across the page boundaries
    post(
        &format!("{db}/_user/"),
        &json!({"name": "half", "password": "pw-half-1", "admin_channels": ["c1"]}),
    );
    let odd: Vec<String> = all.iter().skip(1).step_by(2).cloned().collect();
    for query in ["", "?include_docs=true"] {
        let resp = client()
            .get(format!("{}/db/_changes{query}", s.public))
            .basic_auth("half", Some("pw-half-1"))
            .send()
            .unwrap();
        let v: Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
        let rows: Vec<&Value> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["id"].as_str().unwrap().starts_with('d'))
            .collect();
        let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, odd, "{query}");
        if !query.is_empty() {
            // each page's documents rendered for its rows
            assert!(rows
                .iter()
                .all(|r| r["doc"]["_id"] == r["id"] && r["doc"]["channels"] == json!(["c1"])));
        }
    }
}
