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

fn doc_ids(v: &Value) -> Vec<String> {
    v["docs"]
        .as_array()
        .unwrap_or_else(|| panic!("no docs: {v}"))
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_string())
        .collect()
}

const NO_INDEX: &str = "No matching index found, create an index to optimize query time.";

#[test]
fn find_on_the_admin_port() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    vault(&db);
    let (st, _) = put(&format!("{db}/_design/x"), &json!({"type": "plain"}));
    assert_eq!(st, 201);
    let find = |body: Value| post(&format!("{db}/_find"), &body);
    let (st, r) = find(json!({"selector": {"type": "leaf"}}));
    assert_eq!(st, 200, "{r}");
    assert_eq!(doc_ids(&r), ["h:1", "h:2"]);
    assert_eq!(r["docs"][0]["data"], "abc");
    assert!(r["docs"][0]["_rev"].as_str().unwrap().starts_with("1-"));
    assert_eq!(r["warning"], NO_INDEX);
    assert!(r["bookmark"].as_str().is_some_and(|b| !b.is_empty()));
    // live documents only, design documents excluded
    let (_, r) = find(json!({"selector": {"type": "plain"}}));
    assert_eq!(doc_ids(&r), ["note1"]);
    let (_, r) = find(json!({"selector": {}}));
    assert_eq!(doc_ids(&r), ["h:1", "h:2", "note1", "note2", "plainish"]);
    // projection
    let (_, r) = find(json!({"selector": {"size": {"$gte": 3}}, "fields": ["_id", "path"]}));
    assert_eq!(
        r["docs"],
        json!([{"_id": "note1", "path": "a.md"}, {"_id": "note2", "path": "b.md"}])
    );
    // default limit 25, bookmarks page through, an empty page echoes the bookmark
    let chunks: Vec<Value> = (10..40)
        .map(|i| json!({"_id": format!("h:{i}"), "type": "leaf"}))
        .collect();
    assert_eq!(
        post(&format!("{db}/_bulk_docs"), &json!({"docs": chunks})).0,
        201
    );
    let mut all: Vec<String> = (1..3).chain(10..40).map(|i| format!("h:{i}")).collect();
    all.sort();
    let (_, p1) = find(json!({"selector": {"type": "leaf"}}));
    assert_eq!(doc_ids(&p1), all[..25]);
    let (_, p2) = find(json!({"selector": {"type": "leaf"}, "bookmark": p1["bookmark"]}));
    assert_eq!(doc_ids(&p2), all[25..]);
    let (_, p3) = find(json!({"selector": {"type": "leaf"}, "bookmark": p2["bookmark"]}));
    assert_eq!(doc_ids(&p3), Vec::<String>::new());
    assert_eq!(p3["bookmark"], p2["bookmark"]);
    // limit, skip, sort on _id
    let (_, r) = find(json!({"selector": {"type": "leaf"}, "limit": 2, "skip": 1}));
    assert_eq!(doc_ids(&r), all[1..3]);
    let (_, r) = find(json!({"selector": {"type": "leaf"}, "limit": 3, "sort": [{"_id": "desc"}]}));
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(doc_ids(&r), rev[..3]);
    let (_, r2) = find(json!({"selector": {"type": "leaf"}, "limit": 3,
                              "sort": [{"_id": "desc"}], "bookmark": r["bookmark"]}));
    assert_eq!(doc_ids(&r2), rev[3..6]);
    let (st, r) = find(json!({"selector": {"type": "leaf"}, "sort": ["_id"], "limit": 0}));
    assert_eq!((st, doc_ids(&r)), (200, vec![]));
    // execution stats and index hints (there are no indexes)
    let (_, r) = find(
        json!({"selector": {"type": "newnote"}, "execution_stats": true,
                             "use_index": "by_type", "r": 1, "conflicts": false}),
    );
    assert_eq!(doc_ids(&r), ["note2"]);
    assert_eq!(r["execution_stats"]["results_returned"], 1);
    assert!(
        r["execution_stats"]["total_docs_examined"]
            .as_u64()
            .unwrap()
            >= 30
    );
    assert_eq!(
        r["warning"],
        format!(
            "_design/by_type was not used because it does not contain a valid index for this query.\n{NO_INDEX}"
        )
    );
    // conflicts
    for rev in ["1-aaa", "1-bbb"] {
        put(
            &format!("{db}/c?new_edits=false"),
            &json!({"_rev": rev, "type": "dup"}),
        );
    }
    let (_, r) = find(json!({"selector": {"type": "dup"}, "conflicts": true}));
    assert_eq!(r["docs"][0]["_rev"], "1-bbb");
    assert_eq!(r["docs"][0]["_conflicts"], json!(["1-aaa"]));
}

#[test]
fn find_refuses_bad_queries_with_couchdb_errors() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    put(&format!("{db}/d"), &json!({"type": "x"}));
    let find = |body: Value| post(&format!("{db}/_find"), &body);
    for (body, error, needle) in [
        (json!({}), "missing_required_key", "selector"),
        (json!({"selector": {}, "nope": 1}), "invalid_key", "nope"),
        (
            json!({"selector": []}),
            "invalid_selector_json",
            "JSON object",
        ),
        (
            json!({"selector": {"type": {"$foo": 1}}}),
            "invalid_operator",
            "$foo",
        ),
        (
            json!({"selector": {"type": {"$where": "1"}}}),
            "not_supported",
            "$where",
        ),
        (json!({"selector": {"type": {"$in": 1}}}), "bad_arg", "$in"),
        (
            json!({"selector": {"a..b": 1}}),
            "invalid_field_name",
            "a..b",
        ),
        (
            json!({"selector": {}, "sort": ["type"]}),
            "no_usable_index",
            "sort",
        ),
        (
            json!({"selector": {}, "sort": [{"_id": "up"}]}),
            "invalid_sort_dir",
            "up",
        ),
        (
            json!({"selector": {}, "sort": "_id"}),
            "invalid_sort_json",
            "_id",
        ),
        (
            json!({"selector": {}, "sort": ["_id", {"_id": "desc"}]}),
            "unsupported_mixed_sort",
            "direction",
        ),
        (
            json!({"selector": {}, "limit": -1}),
            "invalid_non_neg_integer",
            "-1",
        ),
        (
            json!({"selector": {}, "skip": "2"}),
            "invalid_non_neg_integer",
            "2",
        ),
        (
            json!({"selector": {}, "bookmark": "!!"}),
            "invalid_bookmark",
            "!!",
        ),
        (
            json!({"selector": {}, "bookmark": 3}),
            "invalid_bookmark",
            "3",
        ),
        (
            json!({"selector": {}, "fields": "_id"}),
            "invalid_fields",
            "_id",
        ),
        (json!({"selector": {}, "fields": [1]}), "invalid_field", "1"),
        (
            json!({"selector": {}, "conflicts": "yes"}),
            "invalid_boolean",
            "yes",
        ),
        (json!({"selector": {}, "r": 0}), "invalid_pos_integer", "0"),
        (
            json!({"selector": {}, "use_index": 5}),
            "invalid_index_name",
            "5",
        ),
        (
            json!({"selector": {}, "use_index": "a", "allow_fallback": false}),
            "invalid_index",
            "_design/a",
        ),
    ] {
        let r = find(body.clone());
        assert_error(&r, 400, error);
        let reason = r.1["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "{body}: {}", r.1);
    }
    assert_error(&find(json!([1])), 400, "bad_request");
    assert_error(&get(&format!("{db}/_find")), 405, "method_not_allowed");
    // the database still answers
    let (st, r) = find(json!({"selector": {"type": "x"}}));
    assert_eq!((st, doc_ids(&r)), (200, vec!["d".to_string()]));
}

#[test]
fn find_on_the_public_port_sees_only_the_users_channels() {
    let s = channel_server();
    channel_docs(&format!("{}/db", s.admin));
    let url = format!("{}/db/_find", s.public);
    let find = |body: Value| as_bob(client().post(&url).json(&body));
    let (st, r) = find(json!({"selector": {"type": "plain"}}));
    assert_eq!(st, 200, "{r}");
    assert_eq!(doc_ids(&r), ["b1"]);
    let (_, r) = find(json!({"selector": {"_id": {"$in": ["s1", "s2"]}}}));
    assert_eq!(doc_ids(&r), Vec::<String>::new());
    let (_, r) = find(json!({"selector": {"n": {"$gt": 0}}, "fields": ["_id", "n"]}));
    assert_eq!(
        r["docs"],
        json!([{"_id": "b1", "n": 1}, {"_id": "b2", "n": 3}])
    );
    // paging and descending order through the channel index
    let (_, p1) = find(json!({"selector": {}, "limit": 1, "sort": [{"_id": "desc"}]}));
    assert_eq!(doc_ids(&p1), ["b2"]);
    let (_, p2) = find(
        json!({"selector": {}, "limit": 1, "sort": [{"_id": "desc"}],
                              "bookmark": p1["bookmark"]}),
    );
    assert_eq!(doc_ids(&p2), ["b1"]);
    let (_, p3) =
        find(json!({"selector": {}, "bookmark": p2["bookmark"], "sort": [{"_id": "desc"}]}));
    assert_eq!(doc_ids(&p3), Vec::<String>::new());
    // documents outside bob's channels are not even read
    let others: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("x{i:03}"), "type": "plain", "channels": ["secret"]}))
        .collect();
    assert_eq!(
        post(
            &format!("{}/db/_bulk_docs", s.admin),
            &json!({"docs": others})
        )
        .0,
        201
    );
    let before = s.metric("syncgate_docs_read_total");
    let (_, r) = find(json!({"selector": {"type": "plain"}}));
    assert_eq!(doc_ids(&r), ["b1"]);
    let read = s.metric("syncgate_docs_read_total") - before;
    assert!(
        read < 50.0,
        "_find read {read} records for a one-channel user"
    );
    // without credentials (GUEST is disabled): 401
    let (st, _) = post(&url, &json!({"selector": {}}));
    assert_eq!(st, 401);
    // the admin port sees everything
    let (_, r) = post(
        &format!("{}/db/_find", s.admin),
        &json!({"selector": {"type": "plain"}, "limit": 3}),
    );
    assert_eq!(doc_ids(&r), ["b1", "s1", "x000"]);
}

fn post_raw(url: &str, body: &str) -> (u16, String) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn find_and_selector_feeds_keep_the_documents_text() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, _) = post_raw(
        &format!("{db}/_bulk_docs"),
        r#"{"docs":[{"_id":"n","z":90.28571428571429,"big":12345678901234567890123,"a":{"y":1.50,"x":[1e2]},"type":"num"}]}"#,
    );
    assert_eq!(st, 201);
    let (st, text) = post_raw(&format!("{db}/_find"), r#"{"selector":{"type":"num"}}"#);
    assert_eq!(st, 200, "{text}");
    assert!(
        text.contains(r#""z":90.28571428571429,"big":12345678901234567890123,"a":{"y":1.50,"x":[1e2]},"type":"num"}"#),
        "{text}"
    );
    // numbers compare by value, projections keep text and the order asked for
    let (_, text) = post_raw(
        &format!("{db}/_find"),
        r#"{"selector":{"a.x":[100],"big":{"$gt":1e22}},"fields":["a.y","big","_id"]}"#,
    );
    assert!(
        text.starts_with(
            r#"{"docs":[{"a":{"y":1.50},"big":12345678901234567890123,"_id":"n"}],"bookmark":"#
        ),
        "{text}"
    );
    let (_, text) = post_raw(
        &format!("{db}/_changes?filter=_selector&include_docs=true"),
        r#"{"selector":{"z":{"$lt":91}},"fields":["z","a"]}"#,
    );
    assert!(
        text.contains(r#""doc":{"z":90.28571428571429,"a":{"y":1.50,"x":[1e2]}}"#),
        "{text}"
    );
}
