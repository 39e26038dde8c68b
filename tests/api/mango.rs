//! Mango: `_changes?filter=_selector`, `filter=_doc_ids` and `POST /{db}/_find`, on both ports.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::users::basic;

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn revs(row: &Value) -> Vec<String> {
    row["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rev"].as_str().unwrap().to_string())
        .collect()
}

/// A vault-like database: notes, chunks (`leaf`), a doc without `type`, and a tombstone.
fn vault(db: &str) {
    let docs = json!({"docs": [
        {"_id": "note1", "type": "plain", "path": "a.md", "size": 3, "children": ["h:1"]},
        {"_id": "note2", "type": "newnote", "path": "b.md", "size": 10},
        {"_id": "h:1", "type": "leaf", "data": "abc"},
        {"_id": "h:2", "type": "leaf", "data": "def"},
        {"_id": "plainish", "kind": "x"},
        {"_id": "gone", "type": "plain"},
    ]});
    let (st, _) = post(&format!("{db}/_bulk_docs"), &docs);
    assert_eq!(st, 201);
    let (_, doc) = get(&format!("{db}/gone"));
    let (st, _) = delete(&format!("{db}/gone?rev={}", doc["_rev"].as_str().unwrap()));
    assert_eq!(st, 200);
}

#[test]
fn changes_selector_filter_on_the_admin_port() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    vault(&db);
    // LiveSync's exact request
    let url = format!("{db}/_changes?style=all_docs&filter=_selector");
    let (st, ch) = post(&url, &json!({"selector": {"type": {"$ne": "leaf"}}}));
    assert_eq!(st, 200, "{ch}");
    // as CouchDB: a tombstone and a doc without `type` have no field to compare, so `$ne` is false
    assert_eq!(ids(&ch), ["note1", "note2"], "{ch}");
    assert_eq!(ch["last_seq"], 7);
    // deleted docs are matched as {_id, _rev, _deleted: true}
    let (_, ch) = post(&url, &json!({"selector": {"_deleted": true}}));
    assert_eq!(ids(&ch), ["gone"]);
    assert_eq!(ch["results"][0]["deleted"], true);
    let (_, ch) = post(&url, &json!({"selector": {"type": {"$exists": false}}}));
    assert_eq!(ids(&ch), ["plainish", "gone"]);
    // nested operators, include_docs and the `fields` projection
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&include_docs=true"),
        &json!({"selector": {"$or": [{"size": {"$gt": 5}}, {"children": {"$all": ["h:1"]}}]},
                "fields": ["_id", "path"]}),
    );
    assert_eq!(ids(&ch), ["note1", "note2"]);
    assert_eq!(
        ch["results"][0]["doc"],
        json!({"_id": "note1", "path": "a.md"})
    );
    // limit counts matching rows; last_seq is where the next page starts
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&limit=1"),
        &json!({"selector": {"type": "leaf"}}),
    );
    assert_eq!(ids(&ch), ["h:1"]);
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&since={}", ch["last_seq"]),
        &json!({"selector": {"type": "leaf"}}),
    );
    assert_eq!(ids(&ch), ["h:2"]);
    // descending
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&descending=true"),
        &json!({"selector": {"type": {"$in": ["plain", "newnote"]}}}),
    );
    assert_eq!(ids(&ch), ["note2", "note1"]);
    // GET with the selector in the query string
    let (st, ch) = get(&format!(
        "{db}/_changes?filter=_selector&selector={}",
        urlencode(r#"{"path":{"$regex":"^b\\."}}"#)
    ));
    assert_eq!(st, 200, "{ch}");
    assert_eq!(ids(&ch), ["note2"]);
    // evaluating reads bodies, and that counts
    let before = s.metric("syncgate_docs_read_total");
    post(&url, &json!({"selector": {"type": "plain"}}));
    let read = s.metric("syncgate_docs_read_total") - before;
    assert!(read >= 6.0, "read {read}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn changes_selector_with_conflicts_follows_style() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    for (rev, ty) in [("1-aaa", "leaf"), ("1-bbb", "plain")] {
        let (st, r) = put(
            &format!("{db}/c?new_edits=false"),
            &json!({"_rev": rev, "type": ty}),
        );
        assert_eq!(st, 201, "{r}");
    }
    // the winner (1-bbb) is not a leaf: without style=all_docs the change does not pass
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector"),
        &json!({"selector": {"type": "leaf"}}),
    );
    assert_eq!(ids(&ch), Vec::<String>::new());
    // with style=all_docs every leaf is tested and only the passing ones are listed
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&style=all_docs"),
        &json!({"selector": {"type": "leaf"}}),
    );
    assert_eq!(ids(&ch), ["c"]);
    assert_eq!(revs(&ch["results"][0]), ["1-aaa"]);
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_selector&style=all_docs"),
        &json!({"selector": {"type": {"$exists": true}}}),
    );
    assert_eq!(revs(&ch["results"][0]), ["1-bbb", "1-aaa"]);
}

#[test]
fn changes_filters_refuse_bad_input_naming_it() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    put(&format!("{db}/d"), &json!({"type": "x"}));
    let url = format!("{db}/_changes?filter=_selector");
    let reason = |r: &(u16, Value)| r.1["reason"].as_str().unwrap_or_default().to_string();
    for (body, needle) in [
        (json!({"selector": {"type": {"$foo": 1}}}), "$foo"),
        (json!({"selector": {"type": {"$mod": [2, 0]}}}), "$mod"),
        (json!({"selector": {"type": {"$in": "x"}}}), "$in"),
        (
            json!({"selector": {"type": {"$regex": "(?<=a)b"}}}),
            "$regex",
        ),
        (json!({"selector": {"type": {"$size": "1"}}}), "$size"),
        (json!({"selector": ["type"]}), "JSON object"),
        (json!({"selector": {"a..b": 1}}), "a..b"),
        (json!({}), "Selector must be specified"),
        (json!({"selector": {}, "fields": "type"}), "fields"),
    ] {
        let r = post(&url, &body);
        assert_error(&r, 400, "bad_request");
        assert!(reason(&r).contains(needle), "{body}: {}", r.1);
    }
    let r = get(&format!("{db}/_changes?filter=_selector"));
    assert_error(&r, 400, "bad_request");
    let r = get(&format!("{db}/_changes?filter=_selector&selector=%7Bx"));
    assert_error(&r, 400, "bad_request");
    let r = get(&format!("{db}/_changes?filter=_view"));
    assert_error(&r, 400, "bad_request");
    assert!(reason(&r).contains("_view"), "{}", r.1);
    // _doc_ids
    for body in [json!({}), json!({"doc_ids": "d"}), json!({"doc_ids": [1]})] {
        assert_error(
            &post(&format!("{db}/_changes?filter=_doc_ids"), &body),
            400,
            "bad_request",
        );
    }
    // a valid one still answers
    let (st, ch) = post(&url, &json!({"selector": {"type": "x"}}));
    assert_eq!((st, ids(&ch)), (200, vec!["d".to_string()]));
}

/// A longpoll started now, answered by the first matching write: returns its result.
fn longpoll_after(
    url: String,
    auth: Option<String>,
    body: Value,
    writes: impl FnOnce(),
) -> (u16, Value) {
    let t = std::thread::spawn(move || {
        let mut rb = client().post(url).json(&body);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        send(rb)
    });
    std::thread::sleep(Duration::from_millis(400));
    writes();
    t.join().unwrap()
}

#[test]
fn live_feeds_wait_for_a_matching_change() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    vault(&db);
    // longpoll: a non-matching write does not end it, the matching one does
    let db2 = db.clone();
    let (st, lp) = longpoll_after(
        format!("{db}/_changes?feed=longpoll&since=now&filter=_selector&timeout=20000"),
        None,
        json!({"selector": {"type": {"$ne": "leaf"}}}),
        move || {
            put(&format!("{db2}/h:3"), &json!({"type": "leaf"}));
            std::thread::sleep(Duration::from_millis(400));
            put(&format!("{db2}/note3"), &json!({"type": "plain"}));
        },
    );
    assert_eq!(st, 200);
    assert_eq!(ids(&lp), ["note3"], "{lp}");
    assert_eq!(lp["last_seq"], 9);
    // longpoll with a match already there answers at once
    let (_, lp) = post(
        &format!("{db}/_changes?feed=longpoll&since=7&filter=_selector&timeout=20000"),
        &json!({"selector": {"type": "leaf"}}),
    );
    assert_eq!(ids(&lp), ["h:3"]);
    // longpoll times out empty when nothing matches, and says how far it looked
    let (_, lp) = post(
        &format!("{db}/_changes?feed=longpoll&since=0&filter=_selector&timeout=300"),
        &json!({"selector": {"type": "nothing"}}),
    );
    assert_eq!(
        (lp["results"].clone(), lp["last_seq"].clone()),
        (json!([]), json!(9))
    );
    // continuous and eventsource: only matching rows
    for feed in ["continuous", "eventsource"] {
        let text = client()
            .post(format!(
                "{db}/_changes?feed={feed}&since=0&filter=_selector&timeout=500"
            ))
            .json(&json!({"selector": {"type": "newnote"}}))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let rows: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").or(Some(l)))
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &Value| v.get("id").is_some())
            .collect();
        assert_eq!(rows.len(), 1, "{feed}: {text}");
        assert_eq!(rows[0]["id"], "note2", "{feed}: {text}");
    }
}

fn channel_server() -> TestServer {
    TestServer::start_with(|c| {
        c["databases"]["db"]["users"] = json!({
            "bob": {"password": "pw-bob-1", "admin_channels": ["b"]},
        });
    })
}

/// Docs in bob's channel `b` and in `secret`, all of `type` plain.
fn channel_docs(admin_db: &str) {
    let docs = json!({"docs": [
        {"_id": "b1", "type": "plain", "channels": ["b"], "n": 1},
        {"_id": "s1", "type": "plain", "channels": ["secret"], "n": 2},
        {"_id": "b2", "type": "leaf", "channels": ["b"], "n": 3},
        {"_id": "s2", "type": "leaf", "channels": ["secret"], "n": 4},
    ]});
    assert_eq!(post(&format!("{admin_db}/_bulk_docs"), &docs).0, 201);
}

fn as_bob(rb: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    send(rb.header("authorization", basic("bob", "pw-bob-1")))
}

#[test]
fn changes_selector_and_doc_ids_stay_inside_the_users_channels() {
    let s = channel_server();
    channel_docs(&format!("{}/db", s.admin));
    let db = format!("{}/db", s.public);
    let url = format!("{db}/_changes?filter=_selector&style=all_docs");
    let (st, ch) = as_bob(
        client()
            .post(&url)
            .json(&json!({"selector": {"type": "plain"}})),
    );
    assert_eq!(st, 200, "{ch}");
    assert_eq!(ids(&ch), ["b1"]);
    // naming a hidden doc in the selector tells nothing
    let (_, ch) = as_bob(
        client()
            .post(&url)
            .json(&json!({"selector": {"_id": "s1"}})),
    );
    assert_eq!(ids(&ch), Vec::<String>::new());
    let (_, ch) = as_bob(
        client()
            .post(&url)
            .json(&json!({"selector": {"n": {"$gte": 2}}})),
    );
    assert_eq!(ids(&ch), ["b2"]);
    // doc_ids, in the body or the query
    let (_, ch) = as_bob(
        client()
            .post(format!("{db}/_changes?filter=_doc_ids"))
            .json(&json!({"doc_ids": ["s1", "b1", "s2"]})),
    );
    assert_eq!(ids(&ch), ["b1"]);
    let (_, ch) = as_bob(client().get(format!(
        "{db}/_changes?filter=_doc_ids&doc_ids={}",
        urlencode(r#"["s2","b2"]"#)
    )));
    assert_eq!(ids(&ch), ["b2"]);
    // the admin port sees both
    let (_, ch) = post(
        &format!("{}/db/_changes?filter=_doc_ids", s.admin),
        &json!({"doc_ids": ["s1", "b1"]}),
    );
    assert_eq!(ids(&ch), ["b1", "s1"]);
    // a live feed is not woken by a matching write bob cannot read
    let admin_db = format!("{}/db", s.admin);
    let (st, lp) = longpoll_after(
        format!("{db}/_changes?feed=longpoll&since=now&filter=_selector&timeout=20000"),
        Some(basic("bob", "pw-bob-1")),
        json!({"selector": {"type": "plain"}}),
        move || {
            put(
                &format!("{admin_db}/s3"),
                &json!({"type": "plain", "channels": ["secret"]}),
            );
            std::thread::sleep(Duration::from_millis(400));
            put(
                &format!("{admin_db}/b3"),
                &json!({"type": "plain", "channels": ["b"]}),
            );
        },
    );
    assert_eq!(st, 200);
    assert_eq!(ids(&lp), ["b3"], "{lp}");
}
