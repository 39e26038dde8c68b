//! Documents, attachments, `_all_docs`, `_local`, error cases, restart.

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn root_ping_and_db_info() {
    let s = TestServer::start();
    let (st, root) = get(&format!("{}/", s.admin));
    assert_eq!(st, 200);
    assert_eq!(root["couchdb"], "Welcome");
    assert_eq!(root["ADMIN"], true);
    let (_, root) = get(&format!("{}/", s.public));
    assert!(root.get("ADMIN").is_none());
    let r = client().get(format!("{}/_ping", s.public)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "OK");
    let (st, info) = get(&format!("{}/db/", s.admin));
    assert_eq!(st, 200);
    assert_eq!(info["db_name"], "db");
    assert_eq!(info["state"], "Online");
    assert_eq!(info["doc_count"], 0);
    assert_error(&get(&format!("{}/nope/", s.admin)), 404, "not_found");
    // public: unknown db is 401 (no enumeration), GUEST disabled so the db is closed too
    assert_error(&get(&format!("{}/nope/", s.public)), 401, "unauthorized");
    assert_error(&get(&format!("{}/db/", s.public)), 401, "unauthorized");
    // admin-only routes do not exist on the public port
    assert_error(&get(&format!("{}/_all_dbs", s.public)), 404, "not_found");
    assert_error(&get(&format!("{}/db/_user/", s.public)), 404, "not_found");
    let (st, dbs) = get(&format!("{}/_all_dbs", s.admin));
    assert_eq!((st, dbs), (200, json!(["db"])));
}

#[test]
fn crud_revisions_and_conflicts() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (st, r1) = put(&format!("{db}/doc1"), &json!({"n": 1}));
    assert_eq!(st, 201);
    assert_eq!(
        r1["rev"], "1-50133ddd8e49efad34ad9ecae4cb9907",
        "deterministic SG-compatible rev"
    );
    // PUT without rev on an existing doc is a conflict
    assert_error(
        &put(&format!("{db}/doc1"), &json!({"n": 2})),
        409,
        "conflict",
    );
    let rev1 = r1["rev"].as_str().unwrap();
    let (st, r2) = put(&format!("{db}/doc1"), &json!({"_rev": rev1, "n": 2}));
    assert_eq!(st, 201);
    let rev2 = r2["rev"].as_str().unwrap().to_string();
    assert!(rev2.starts_with("2-"));
    // stale rev → 409
    assert_error(
        &put(&format!("{db}/doc1?rev={rev1}"), &json!({"n": 3})),
        409,
        "conflict",
    );
    let (st, doc) = get(&format!("{db}/doc1?revs=true&revs_info=true"));
    assert_eq!(st, 200);
    assert_eq!(doc["n"], 2);
    assert_eq!(doc["_revisions"]["start"], 2);
    assert_eq!(doc["_revisions"]["ids"].as_array().unwrap().len(), 2);
    // old revision is still readable until compaction
    let (st, old) = get(&format!("{db}/doc1?rev={rev1}"));
    assert_eq!((st, old["n"].clone()), (200, json!(1)));
    // POST generates an id
    let (st, p) = post(&format!("{db}/"), &json!({"hello": "world"}));
    assert_eq!(st, 201);
    assert_eq!(p["id"].as_str().unwrap().len(), 32);
    // delete → tombstone, GET 404 deleted, changes show deleted
    let (st, d) = delete(&format!("{db}/doc1?rev={rev2}"));
    assert_eq!(st, 200);
    let (st, body) = get(&format!("{db}/doc1"));
    assert_eq!((st, body["reason"].as_str()), (404, Some("deleted")));
    let (_, tomb) = get(&format!("{db}/doc1?rev={}", d["rev"].as_str().unwrap()));
    assert_eq!(tomb["_deleted"], true);
    assert_error(&delete(&format!("{db}/never?rev=1-abc")), 404, "not_found");
    // recreate after delete without rev
    let (st, re) = put(&format!("{db}/doc1"), &json!({"n": 9}));
    assert_eq!(st, 201);
    assert!(re["rev"].as_str().unwrap().starts_with("4-"));
    // a conflicting branch via new_edits=false, winner rule and _conflicts
    let (st, _) = put(
        &format!("{db}/c?new_edits=false"),
        &json!({"_rev": "2-aaa", "_revisions": {"start": 2, "ids": ["aaa", "root"]}, "v": "a"}),
    );
    assert_eq!(st, 201);
    let (st, _) = put(
        &format!("{db}/c?new_edits=false"),
        &json!({"_rev": "2-bbb", "_revisions": {"start": 2, "ids": ["bbb", "root"]}, "v": "b"}),
    );
    assert_eq!(st, 201);
    let (_, c) = get(&format!("{db}/c?conflicts=true"));
    assert_eq!(c["_rev"], "2-bbb");
    assert_eq!(c["_conflicts"], json!(["2-aaa"]));
    let (_, open) = get(&format!("{db}/c?open_revs=all"));
    assert_eq!(open.as_array().unwrap().len(), 2);
    let (_, open) = get(&format!("{db}/c?open_revs=%5B%222-aaa%22,%223-zzz%22%5D"));
    assert_eq!(open[0]["ok"]["v"], "a");
    assert_eq!(open[1]["missing"], "3-zzz");
    // doc ids with %2F stay one id
    let (st, _) = put(&format!("{db}/a%2Fb"), &json!({"x": 1}));
    assert_eq!(st, 201);
    let (st, ab) = get(&format!("{db}/a%2Fb"));
    assert_eq!((st, ab["_id"].clone()), (200, json!("a/b")));
    // design docs are stored
    let (st, _) = put(&format!("{db}/_design/app"), &json!({"views": {}}));
    assert_eq!(st, 201);
    let (st, dd) = get(&format!("{db}/_design/app"));
    assert_eq!((st, dd["_id"].clone()), (200, json!("_design/app")));
}

#[test]
fn bad_input_gets_clear_4xx() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let c = client();
    let raw = |m: reqwest::Method, url: String, ct: &str, body: &'static str| {
        send(c.request(m, url).header("content-type", ct).body(body))
    };
    assert_error(
        &raw(
            reqwest::Method::PUT,
            format!("{db}/d"),
            "application/json",
            "{not json",
        ),
        400,
        "bad_request",
    );
    assert_error(
        &raw(
            reqwest::Method::PUT,
            format!("{db}/d"),
            "application/json",
            "[1,2]",
        ),
        400,
        "bad_request",
    );
    assert_error(
        &raw(
            reqwest::Method::PUT,
            format!("{db}/d"),
            "application/json",
            "",
        ),
        400,
        "bad_request",
    );
    assert_error(
        &raw(reqwest::Method::PUT, format!("{db}/d"), "text/html", "{}"),
        415,
        "bad_content_type",
    );
    assert_error(&put(&format!("{db}/_bad"), &json!({})), 404, "not_found");
    assert_error(
        &post(&format!("{db}/"), &json!({"_id": "_bad"})),
        400,
        "bad_request",
    );
    assert_error(
        &put(&format!("{db}/d"), &json!({"_id": "other"})),
        400,
        "bad_request",
    );
    assert_error(
        &put(&format!("{db}/d?rev=garbage"), &json!({})),
        400,
        "bad_request",
    );
    assert_error(
        &put(&format!("{db}/d"), &json!({"_rev": 5})),
        400,
        "bad_request",
    );
    assert_error(
        &put(&format!("{db}/d"), &json!({"_unknown": 1})),
        400,
        "bad_request",
    );
    assert_error(&get(&format!("{db}/d?rev=nope")), 400, "bad_request");
    assert_error(&get(&format!("{db}/missing")), 404, "not_found");
    assert_error(
        &get(&format!("{db}/d?open_revs=%5Bbroken")),
        400,
        "bad_request",
    );
    assert_error(&get(&format!("{db}/d?revs=maybe")), 400, "bad_request");
    let long = "x".repeat(1025);
    assert_error(
        &put(&format!("{db}/{long}"), &json!({})),
        400,
        "bad_request",
    );
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    assert_error(
        &put(&format!("{db}/deep"), &json!({"d": deep})),
        400,
        "bad_request",
    );
    assert_error(
        &put(
            &format!("{db}/att"),
            &json!({"_attachments": {"a": {"data": "!!!notbase64"}}}),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &put(
            &format!("{db}/att"),
            &json!({"_attachments": {"a": {"content_type": "text/plain"}}}),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &put(
            &format!("{db}/att"),
            &json!({"_attachments": {"a": {"stub": true}}}),
        ),
        412,
        "file_exists",
    );
    assert_error(
        &put(
            &format!("{db}/d?new_edits=false"),
            &json!({"_revisions": {"start": 1, "ids": ["a", "b"]}}),
        ),
        400,
        "bad_request",
    );
    assert_error(
        &send(c.request(reqwest::Method::PATCH, format!("{db}/d"))),
        405,
        "method_not_allowed",
    );
    assert_error(&get(&format!("{db}/_nope")), 404, "not_found");
    // nothing half-written: none of the failed ids exist
    let (_, all) = get(&format!("{db}/_all_docs"));
    assert_eq!(all["rows"], json!([]), "{all}");
    let (_, ch) = get(&format!("{db}/_changes"));
    assert_eq!(ch["results"], json!([]));
}

#[test]
fn attachments_round_trip_byte_for_byte() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let (st, r) = put(
        &format!("{db}/doc"),
        &json!({"_attachments": {"bin.dat": {"content_type": "application/x-test", "data": b64}}}),
    );
    assert_eq!(st, 201, "{r}");
    let rev1 = r["rev"].as_str().unwrap().to_string();
    let resp = client().get(format!("{db}/doc/bin.dat")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-test");
    assert_eq!(resp.bytes().unwrap().to_vec(), bytes);
    let (_, doc) = get(&format!("{db}/doc"));
    let meta = &doc["_attachments"]["bin.dat"];
    assert_eq!(meta["stub"], true);
    assert_eq!(meta["length"], 70_000);
    assert_eq!(meta["revpos"], 1);
    assert!(meta["digest"].as_str().unwrap().starts_with("md5-"));
    let (_, inline) = get(&format!("{db}/doc?attachments=true"));
    assert_eq!(inline["_attachments"]["bin.dat"]["data"], b64);
    // standalone PUT of a second attachment: stubs of the first are kept, revpos stays 1
    let r2 = client()
        .put(format!("{db}/doc/note.txt?rev={rev1}"))
        .header("content-type", "text/plain")
        .body("hi there")
        .send()
        .unwrap();
    assert_eq!(r2.status(), 201);
    let rev2 = r2.json::<Value>().unwrap()["rev"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, doc2) = get(&format!("{db}/doc"));
    assert_eq!(doc2["_attachments"]["bin.dat"]["revpos"], 1);
    assert_eq!(doc2["_attachments"]["note.txt"]["revpos"], 2);
    // atts_since: only attachments newer than the known rev carry data
    let (_, since) = get(&format!(
        "{db}/doc?attachments=true&atts_since=%5B%22{rev1}%22%5D"
    ));
    assert_eq!(since["_attachments"]["bin.dat"]["stub"], true);
    assert_eq!(since["_attachments"]["note.txt"]["data"], "aGkgdGhlcmU=");
    // an update with stubs keeps the data
    let (st, r3) = put(
        &format!("{db}/doc"),
        &json!({"_rev": rev2, "v": 3, "_attachments": {"bin.dat": {"stub": true}, "note.txt": {"stub": true}}}),
    );
    assert_eq!(st, 201, "{r3}");
    let got = client()
        .get(format!("{db}/doc/bin.dat"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.to_vec(), bytes);
    // delete one attachment
    let rev3 = r3["rev"].as_str().unwrap();
    let (st, _) = delete(&format!("{db}/doc/note.txt?rev={rev3}"));
    assert_eq!(st, 200);
    assert_error(&get(&format!("{db}/doc/note.txt")), 404, "not_found");
    assert_error(
        &delete(&format!("{db}/doc/note.txt?rev={rev3}")),
        409,
        "conflict",
    );
    assert_error(
        &get(&format!("{db}/doc/..%2F..%2Fetc%2Fpasswd")),
        404,
        "not_found",
    );
    // compaction keeps current attachments
    let (st, _) = post(&format!("{db}/_compact"), &json!({}));
    assert_eq!(st, 202);
    let got = client()
        .get(format!("{db}/doc/bin.dat"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.to_vec(), bytes);
}

#[test]
fn all_docs_and_local_docs() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    for id in ["b", "a", "d", "c"] {
        assert_eq!(put(&format!("{db}/{id}"), &json!({"id": id})).0, 201);
    }
    let (_, all) = get(&format!("{db}/_all_docs"));
    let ids: Vec<&str> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert_eq!(all["total_rows"], 4);
    let (_, r) = get(&format!(
        "{db}/_all_docs?startkey=%22b%22&endkey=%22c%22&include_docs=true"
    ));
    assert_eq!(r["rows"].as_array().unwrap().len(), 2);
    assert_eq!(r["rows"][0]["doc"]["id"], "b");
    let (_, r) = get(&format!("{db}/_all_docs?descending=true&limit=2&skip=1"));
    let ids: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c", "b"]);
    let (_, r) = get(&format!(
        "{db}/_all_docs?endkey=%22c%22&inclusive_end=false"
    ));
    assert_eq!(r["rows"].as_array().unwrap().len(), 2);
    let (_, r) = post(&format!("{db}/_all_docs"), &json!({"keys": ["d", "zz"]}));
    assert_eq!(r["rows"][0]["id"], "d");
    assert_eq!(r["rows"][1]["error"], "not_found");
    assert_error(
        &post(&format!("{db}/_all_docs"), &json!({"keys": "d"})),
        400,
        "bad_request",
    );
    assert_error(
        &get(&format!("{db}/_all_docs?limit=-1")),
        400,
        "bad_request",
    );

    let (st, l) = put(&format!("{db}/_local/cp"), &json!({"last_seq": 5}));
    assert_eq!((st, l["rev"].clone()), (201, json!("0-1")));
    assert_error(
        &put(&format!("{db}/_local/cp"), &json!({"last_seq": 6})),
        409,
        "conflict",
    );
    let (st, l) = put(
        &format!("{db}/_local/cp"),
        &json!({"_rev": "0-1", "last_seq": 6}),
    );
    assert_eq!((st, l["rev"].clone()), (201, json!("0-2")));
    let (_, l) = get(&format!("{db}/_local/cp"));
    assert_eq!(l, json!({"_id": "_local/cp", "_rev": "0-2", "last_seq": 6}));
    // local docs are not in changes or all_docs
    let (_, ch) = get(&format!("{db}/_changes"));
    assert_eq!(ch["results"].as_array().unwrap().len(), 4);
    assert_error(&delete(&format!("{db}/_local/cp?rev=0-1")), 409, "conflict");
    assert_eq!(delete(&format!("{db}/_local/cp?rev=0-2")).0, 200);
    assert_error(&get(&format!("{db}/_local/cp")), 404, "not_found");
}

#[test]
fn admin_creates_and_deletes_databases() {
    let s = TestServer::start();
    let (st, _) = put(&format!("{}/other/", s.admin), &json!({}));
    assert_eq!(st, 201);
    assert_error(
        &put(&format!("{}/other/", s.admin), &json!({})),
        412,
        "file_exists",
    );
    assert_error(
        &put(&format!("{}/Bad/", s.admin), &json!({})),
        400,
        "bad_request",
    );
    assert_eq!(put(&format!("{}/other/x", s.admin), &json!({})).0, 201);
    // public PUT of an existing db → 412 (PouchDB's probe), unknown → 403
    assert_error(
        &put(&format!("{}/other/", s.public), &json!({})),
        412,
        "file_exists",
    );
    assert_error(
        &put(&format!("{}/unknown/", s.public), &json!({})),
        403,
        "forbidden",
    );
    // created databases survive a restart
    let s = s.restart();
    let (st, info) = get(&format!("{}/other/", s.admin));
    assert_eq!((st, info["doc_count"].clone()), (200, json!(1)));
    assert_eq!(delete(&format!("{}/other/", s.admin)).0, 200);
    assert_error(&get(&format!("{}/other/", s.admin)), 404, "not_found");
    let s = s.restart();
    assert_error(&get(&format!("{}/other/", s.admin)), 404, "not_found");
}

#[test]
fn restart_keeps_data() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let (_, r) = put(&format!("{db}/keep"), &json!({"v": 1}));
    put(&format!("{db}/_local/l"), &json!({"x": 1}));
    let mut s = s;
    assert_eq!(s.terminate(), Some(0), "graceful exit 0");
    let s = s.restart();
    let db = format!("{}/db", s.admin);
    let (st, d) = get(&format!("{db}/keep"));
    assert_eq!((st, d["_rev"].clone()), (200, r["rev"].clone()));
    let (_, info) = get(&format!("{db}/"));
    assert_eq!(info["update_seq"], 1);
    assert_eq!(get(&format!("{db}/_local/l")).0, 200);
    // sequences are never reused after restart
    let (_, _) = put(&format!("{db}/next"), &json!({}));
    let (_, ch) = get(&format!("{db}/_changes?since=1"));
    assert_eq!(ch["results"][0]["seq"], 2);
}

#[test]
fn changes_feeds() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    for i in 0..5 {
        put(&format!("{db}/d{i}"), &json!({"i": i}));
    }
    let (_, ch) = get(&format!("{db}/_changes?limit=2"));
    assert_eq!(ch["results"].as_array().unwrap().len(), 2);
    assert_eq!(ch["last_seq"], 2);
    let (_, ch) = get(&format!("{db}/_changes?since=2&include_docs=true"));
    assert_eq!(ch["results"].as_array().unwrap().len(), 3);
    assert_eq!(ch["results"][0]["doc"]["i"], 2);
    assert_eq!(ch["last_seq"], 5);
    let (_, ch) = get(&format!("{db}/_changes?descending=true&limit=1"));
    assert_eq!(ch["results"][0]["seq"], 5);
    let (_, ch) = post(
        &format!("{db}/_changes?filter=_doc_ids"),
        &json!({"doc_ids": ["d1", "d3"]}),
    );
    assert_eq!(ch["results"].as_array().unwrap().len(), 2);
    let (_, ch) = get(&format!("{db}/_changes?since=now"));
    assert_eq!(
        (ch["results"].clone(), ch["last_seq"].clone()),
        (json!([]), json!(5))
    );
    assert_error(
        &get(&format!("{db}/_changes?since=abc")),
        400,
        "bad_request",
    );
    assert_error(
        &get(&format!("{db}/_changes?feed=bogus")),
        400,
        "bad_request",
    );
    assert_error(
        &get(&format!("{db}/_changes?filter=bogus")),
        400,
        "bad_request",
    );
    assert_error(&get(&format!("{db}/_changes?limit=x")), 400, "bad_request");
    // longpoll wakes on a write
    let url = format!("{db}/_changes?feed=longpoll&since=5&timeout=20000");
    let t = std::thread::spawn(move || get(&url));
    std::thread::sleep(std::time::Duration::from_millis(300));
    put(&format!("{db}/wake"), &json!({}));
    let (st, lp) = t.join().unwrap();
    assert_eq!(st, 200);
    assert_eq!(lp["results"][0]["id"], "wake");
    assert_eq!(lp["last_seq"], 6);
    // longpoll times out with an empty result
    let (_, lp) = get(&format!("{db}/_changes?feed=longpoll&since=6&timeout=300"));
    assert_eq!(
        (lp["results"].clone(), lp["last_seq"].clone()),
        (json!([]), json!(6))
    );
    // continuous: rows then the last_seq line at timeout
    let text = client()
        .get(format!("{db}/_changes?feed=continuous&since=4&timeout=500"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["seq"], 5);
    assert_eq!(lines[2]["last_seq"], 6);
}
