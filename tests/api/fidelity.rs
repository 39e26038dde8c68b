//! Bodies come back exactly as sent: number digits and member order, on every read path.

use serde_json::{json, Value};

use crate::helpers::*;

/// Members whose text a `Value` round trip would change: a 17-digit double, an integer beyond
/// u64, exponents, negative zero, member order that is not sorted, nested objects and arrays.
const BODY: &str = r#"{"neg":-0.0,"f":90.28571428571429,"big":12345678901234567890123,"e":1.5E+300,"small":5e-324,"i":-42,"z":{"y":1.0,"x":[3.14159265358979323,1e2,{"b":2,"a":1}]},"a":"text","channels":["c"]}"#;

/// The members of BODY as they must appear in any rendering of the document.
fn members() -> &'static str {
    &BODY[1..BODY.len() - 1]
}

fn put_text(url: &str, text: &str) -> (u16, String) {
    let r = client()
        .put(url)
        .header("content-type", "application/json")
        .body(text.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn post_text(url: &str, text: &str) -> (u16, String) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(text.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn get_text(url: &str) -> String {
    let r = client().get(url).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{url}");
    r.text().unwrap()
}

fn rev_of(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap();
    v["rev"].as_str().unwrap().to_string()
}

fn assert_has_members(what: &str, text: &str) {
    assert!(
        text.contains(members()),
        "{what}: the body's members are not there as sent:\n  sent: {}\n  got:  {text}",
        members()
    );
}

#[test]
fn numbers_and_member_order_survive_every_read_path() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    // pretty-printed input: only insignificant whitespace may go
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>("{}").unwrap())
        .unwrap()
        .replace(
            "{}",
            &BODY.replace(",\"", ",\n  \"").replace("\":", "\" : "),
        );
    let (st, r) = put_text(&format!("{db}/n1"), &pretty);
    assert_eq!(st, 201, "{r}");
    let rev1 = rev_of(&r);

    let doc = get_text(&format!("{db}/n1"));
    assert!(
        doc.starts_with(&format!(r#"{{"_id":"n1","_rev":"{rev1}","#)),
        "{doc}"
    );
    assert_has_members("GET", &doc);
    assert_has_members(
        "GET ?revs=true&conflicts=true",
        &get_text(&format!("{db}/n1?revs=true&conflicts=true")),
    );
    assert_has_members(
        "open_revs=all",
        &get_text(&format!("{db}/n1?open_revs=all")),
    );
    assert_has_members(
        "open_revs=[rev]",
        &get_text(&format!("{db}/n1?open_revs=[\"{rev1}\"]")),
    );
    let (st, bulk) = post_text(
        &format!("{db}/_bulk_get?revs=true"),
        &format!(r#"{{"docs":[{{"id":"n1","rev":"{rev1}"}},{{"id":"n1"}}]}}"#),
    );
    assert_eq!(st, 200);
    assert_eq!(bulk.matches(members()).count(), 2, "_bulk_get: {bulk}");
    assert_has_members(
        "_all_docs?include_docs",
        &get_text(&format!("{db}/_all_docs?include_docs=true")),
    );
    assert_has_members(
        "_all_docs?keys&include_docs",
        &get_text(&format!("{db}/_all_docs?include_docs=true&keys=[\"n1\"]")),
    );
    assert_has_members(
        "_changes?include_docs",
        &get_text(&format!("{db}/_changes?include_docs=true")),
    );
    let (st, ch) = post_text(
        &format!("{db}/_changes?include_docs=true&feed=longpoll&since=0"),
        "{}",
    );
    assert_eq!(st, 200);
    assert_has_members("_changes longpoll include_docs", &ch);

    // through _bulk_docs, new_edits:false and an attachment
    let (st, r) = post_text(
        &format!("{db}/_bulk_docs"),
        &format!(
            r#"{{"docs":[{}]}}"#,
            BODY.replacen('{', r#"{"_id":"n2","#, 1)
        ),
    );
    assert_eq!(st, 201, "{r}");
    let n3 = BODY
        .replacen(
            '{',
            r#"{"_id":"n3","_rev":"1-0123456789abcdef0123456789abcdef","_revisions":{"start":1,"ids":["0123456789abcdef0123456789abcdef"]},"#,
            1,
        )
        .replace(
            "\"a\":\"text\"",
            r#""a":"text","_attachments":{"t.txt":{"content_type":"text/plain","data":"aGk="}}"#,
        );
    let (st, r) = post_text(
        &format!("{db}/_bulk_docs"),
        &format!(r#"{{"new_edits":false,"docs":[{n3}]}}"#),
    );
    assert_eq!(st, 201, "{r}");
    assert_has_members("_bulk_docs", &get_text(&format!("{db}/n2")));
    let n3 = get_text(&format!("{db}/n3?attachments=true"));
    assert_has_members("new_edits:false", &n3);
    let n3: Value = serde_json::from_str(&n3).unwrap();
    assert_eq!(n3["_attachments"]["t.txt"]["data"], "aGk=");
    assert_eq!(n3["_attachments"]["t.txt"]["content_type"], "text/plain");

    // an update, then compaction: the leaf keeps its text
    let (st, r) = put_text(
        &format!("{db}/n1?rev={rev1}"),
        &BODY.replace("\"a\":\"text\"", "\"a\":\"text2\""),
    );
    assert_eq!(st, 201, "{r}");
    let (st, _) = post(&format!("{db}/_compact"), &json!({}));
    assert_eq!(st, 202);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let doc = get_text(&format!("{db}/n1"));
    assert!(
        doc.contains(&members().replace("\"a\":\"text\"", "\"a\":\"text2\"")),
        "after compaction: {doc}"
    );

    // and after a restart
    let s = s.restart();
    let db = format!("{}/db", s.admin);
    assert_has_members("after restart", &get_text(&format!("{db}/n2")));
}

#[test]
fn revision_ids_do_not_depend_on_member_order_or_spacing() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (_, a) = put_text(&format!("{db}/a"), r#"{"x":1,"y":[1,2]}"#);
    let (_, b) = put_text(&format!("{db}/b"), r#"{ "y" : [1, 2], "x" : 1 }"#);
    assert_eq!(rev_of(&a), rev_of(&b));
    // Sync Gateway's test vector
    let (_, c) = put_text(&format!("{db}/c"), r#"{"n":1}"#);
    assert_eq!(rev_of(&c), "1-50133ddd8e49efad34ad9ecae4cb9907");
}

#[test]
fn numbers_beyond_double_range_are_refused_not_altered() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, r) = put_text(&format!("{db}/inf"), r#"{"x":1e400}"#);
    assert_eq!(st, 400, "{r}");
    let v: Value = serde_json::from_str(&r).unwrap();
    assert_eq!(v["error"], "bad_request");
    assert!(v["reason"].as_str().unwrap().contains("\"x\""), "{r}");
    assert_eq!(get(&format!("{db}/inf")).0, 404);
}

#[test]
fn responses_follow_couchdb_member_order() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (_, r) = put_text(&format!("{db}/o"), r#"{"v":1}"#);
    assert!(r.starts_with(r#"{"ok":true,"id":"o","rev":"#), "{r}");
    let doc = get_text(&format!("{db}/o?revs=true"));
    assert!(doc.contains(r#""_revisions":{"start":1,"ids":["#), "{doc}");
    let ch = get_text(&format!("{db}/_changes"));
    assert!(
        ch.starts_with(r#"{"results":[{"seq":1,"id":"o","changes":[{"rev":"#),
        "{ch}"
    );
    let all = get_text(&format!("{db}/_all_docs"));
    assert!(
        all.starts_with(
            r#"{"total_rows":1,"offset":0,"rows":[{"id":"o","key":"o","value":{"rev":"#
        ),
        "{all}"
    );
}

#[test]
fn local_documents_keep_numbers_and_member_order() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, _) = put_text(&format!("{db}/_local/cp"), BODY);
    assert_eq!(st, 201);
    let expected = format!(r#"{{"_id":"_local/cp","_rev":"0-1",{}}}"#, members());
    assert_eq!(get_text(&format!("{db}/_local/cp")), expected);
    // an update through _bulk_docs, with _rev first and pretty-printed members
    let pretty = format!(
        "{{\"docs\":[{{\"_id\":\"_local/bulk\",\n  {}}}]}}",
        members()
    );
    let (st, text) = post_text(&format!("{db}/_bulk_docs"), &pretty);
    assert_eq!(st, 201, "{text}");
    assert_eq!(
        get_text(&format!("{db}/_local/bulk")),
        format!(r#"{{"_id":"_local/bulk","_rev":"0-1",{}}}"#, members())
    );
    // a repeated member: the last one wins
    let (st, _) = put_text(
        &format!("{db}/_local/cp"),
        r#"{"_rev":"0-1","a":1,"b":2,"a":3}"#,
    );
    assert_eq!(st, 201);
    assert_eq!(
        get_text(&format!("{db}/_local/cp")),
        r#"{"_id":"_local/cp","_rev":"0-2","b":2,"a":3}"#
    );
    let (st, text) = put_text(&format!("{db}/_local/cp"), r#"{"_rev":"0-2","_foo":1}"#);
    assert_eq!(st, 400, "{text}");
    // too big a number is refused, not altered
    let (st, text) = put_text(&format!("{db}/_local/n"), r#"{"x":1e400}"#);
    assert_eq!(st, 400, "{text}");
    let s = s.restart();
    let db = format!("{}/db", s.admin);
    assert_eq!(
        get_text(&format!("{db}/_local/bulk")),
        format!(r#"{{"_id":"_local/bulk","_rev":"0-1",{}}}"#, members())
    );
}
