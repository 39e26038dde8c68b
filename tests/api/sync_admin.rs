//! The admin side of the sync function (SPEC §13): `GET/PUT /{db}/_config/sync` (hot reload,
//! kept across restarts), the `POST /{db}/_sync` dry run, `POST/GET /{db}/_resync`, the re-run
//! for a branch that becomes the winner, and grants that count for the rest of a `_bulk_docs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

fn start(sync: Option<&str>) -> TestServer {
    let sync = sync.map(str::to_string);
    TestServer::start_with(move |c| {
        c["databases"]["db"]["users"] = json!({
            "alice": {"password": "pw-alice-1", "admin_channels": ["c-a"]},
            "bob": {"password": "pw-bob-1"},
        });
        if let Some(s) = sync {
            c["databases"]["db"]["sync"] = json!(s);
        }
    })
}

fn as_user(user: &str, method: reqwest::Method, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut rb = client()
        .request(method, url)
        .basic_auth(user, Some(format!("pw-{user}-1")));
    if let Some(b) = body {
        rb = rb.json(b);
    }
    send(rb)
}

fn uget(user: &str, url: &str) -> (u16, Value) {
    as_user(user, reqwest::Method::GET, url, None)
}

/// `GET /{db}/_config/sync`: (status, content type, body).
fn get_sync(admin: &str) -> (u16, String, String) {
    let r = client()
        .get(format!("{admin}/_config/sync"))
        .send()
        .unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), ct, r.text().unwrap())
}

fn put_sync(admin: &str, source: &str) -> (u16, Value) {
    send(
        client()
            .put(format!("{admin}/_config/sync"))
            .header("content-type", "application/javascript")
            .body(source.to_string()),
    )
}

/// Ids of the documents in `channel`, from the admin port's channel filter (removal rows
/// excluded).
fn in_channel(admin: &str, channel: &str) -> Vec<String> {
    let (st, feed) = get(&format!(
        "{admin}/_changes?filter=sync_gateway/bychannel&channels={channel}"
    ));
    assert_eq!(st, 200, "{feed}");
    let mut ids: Vec<String> = feed["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("removed").is_none())
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

const V1: &str = "function (doc, oldDoc) {\n  channel(\"v1\");\n}";
const V2: &str = "function (doc, oldDoc) {\n  channel(\"v2\");\n}";

#[test]
fn put_config_sync_replaces_the_function_of_a_running_database_and_survives_a_restart() {
    let s = start(Some(V1));
    let admin = format!("{}/db", s.admin);
    let (st, ct, text) = get_sync(&admin);
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/javascript"), "{ct}");
    assert_eq!(text, V1);
    assert_eq!(put(&format!("{admin}/d1"), &json!({})).0, 201);
    assert_eq!(in_channel(&admin, "v1"), ["d1"]);
    // a body that is not typed as JavaScript is refused before anything is compiled
    let r = send(
        client()
            .put(format!("{admin}/_config/sync"))
            .header("content-type", "text/plain")
            .body(V2),
    );
    assert_error(&r, 415, "bad_content_type");
    // a syntax error is a 400 naming line and column, and the old function stays
    let r = put_sync(&admin, "function (doc) {\n  channel(\"v2\";\n}");
    assert_error(&r, 400, "bad_request");
    let reason = r.1["reason"].as_str().unwrap();
    assert!(reason.contains("line 2 column"), "{reason}");
    assert_eq!(get_sync(&admin).2, V1);
    assert_eq!(put(&format!("{admin}/d2"), &json!({})).0, 201);
    assert_eq!(in_channel(&admin, "v1"), ["d1", "d2"]);
    // hot reload: the next write runs the new function; earlier documents keep their channels
    let r = put_sync(&admin, V2);
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(get_sync(&admin).2, V2);
    assert_eq!(put(&format!("{admin}/d3"), &json!({})).0, 201);
    assert_eq!(in_channel(&admin, "v2"), ["d3"]);
    assert_eq!(in_channel(&admin, "v1"), ["d1", "d2"]);
    // the stored function wins over the (unchanged) config file's after a restart
    let s = s.restart();
    let admin = format!("{}/db", s.admin);
    assert_eq!(get_sync(&admin).2, V2);
    assert_eq!(put(&format!("{admin}/d4"), &json!({})).0, 201);
    assert_eq!(in_channel(&admin, "v2"), ["d3", "d4"]);
    // DELETE: back to the default function (the channels property); GET is then empty
    let r = send(client().delete(format!("{admin}/_config/sync")));
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(get_sync(&admin).2, "");
    assert_eq!(
        put(&format!("{admin}/d5"), &json!({"channels": ["own"]})).0,
        201
    );
    assert_eq!(in_channel(&admin, "own"), ["d5"]);
    let r = put_sync(&admin, V2);
    assert_eq!(r.0, 200, "{}", r.1);
    // once the config file's function changes, the file's wins again
    let mut s = s;
    s.kill9();
    let mut config = s.config.clone();
    let v3 = "function (doc) { channel(\"v3\"); }";
    config["databases"]["db"]["sync"] = json!(v3);
    let dir = s.dir.clone();
    let s2 = TestServer::spawn(&dir, config);
    let admin = format!("{}/db", s2.admin);
    assert_eq!(get_sync(&admin).2, v3);
    assert_eq!(put(&format!("{admin}/d6"), &json!({})).0, 201);
    assert_eq!(in_channel(&admin, "v3"), ["d6"]);
    // the admin-only endpoints are not on the public port
    let public = format!("{}/db", s2.public);
    assert_eq!(uget("alice", &format!("{public}/_config/sync")).0, 404);
    drop(s2);
    drop(s);
}

#[test]
fn without_a_function_config_sync_is_empty_and_a_put_installs_one() {
    let s = start(None);
    let admin = format!("{}/db", s.admin);
    assert_eq!(
        get_sync(&admin),
        (200, "text/javascript; charset=utf-8".into(), String::new())
    );
    // text/javascript is accepted as well as application/javascript
    let r = send(
        client()
            .put(format!("{admin}/_config/sync"))
            .header("content-type", "text/javascript; charset=utf-8")
            .body(V1),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1, json!({"ok": true}));
    assert_eq!(
        put(&format!("{admin}/d1"), &json!({"channels": "x"})).0,
        201
    );
    assert_eq!(in_channel(&admin, "v1"), ["d1"]);
}

const SHARING: &str = r#"function (doc, oldDoc) {
  if (oldDoc) requireUser(oldDoc.owner); else requireUser(doc.owner);
  channel("private-" + doc.owner);
  access(doc.owner, "private-" + doc.owner);
  if (doc.shared_with) access(doc.shared_with, "private-" + doc.owner);
  if (doc.team) role(doc.owner, "role:" + doc.team);
  if (doc.boom) throw("boom");
  if (doc.loop) while (true) {}
}"#;

#[test]
fn the_dry_run_reports_what_the_function_decides_and_writes_nothing() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["sync"] = json!(SHARING);
        c["databases"]["db"]["javascript_timeout_ms"] = json!(300);
    });
    let admin = format!("{}/db", s.admin);
    let seq = get(&format!("{admin}/")).1["update_seq"].clone();
    let url = format!("{admin}/_sync");
    let (st, out) = post(
        &url,
        &json!({"doc": {"_id": "x", "owner": "alice", "shared_with": ["bob"], "team": "red"}}),
    );
    assert_eq!(st, 200, "{out}");
    assert_eq!(
        out,
        json!({
            "channels": ["private-alice"],
            "access": {"alice": ["private-alice"], "bob": ["private-alice"]},
            "roles": {"alice": ["red"]},
        })
    );
    // as a user: require* apply (here oldDoc says the document is alice's)
    let (st, out) = post(
        &url,
        &json!({"doc": {"_id": "x", "owner": "bob"}, "oldDoc": {"_id": "x", "owner": "alice"},
                "userCtx": {"name": "bob", "roles": [], "channels": []}}),
    );
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["exception"], "sg wrong user", "{out}");
    assert_eq!(out["channels"], json!([]));
    let (_, out) = post(
        &url,
        &json!({"doc": {"_id": "x", "owner": "alice"}, "userCtx": {"name": "alice"}}),
    );
    assert_eq!(out["channels"], json!(["private-alice"]), "{out}");
    assert!(out.get("exception").is_none(), "{out}");
    // exceptions and timeouts are reported as a write would answer them
    let (_, out) = post(&url, &json!({"doc": {"owner": "a", "boom": true}}));
    assert_eq!(out["exception"], "Exception in JS sync function", "{out}");
    let (_, out) = post(&url, &json!({"doc": {"owner": "a", "loop": true}}));
    assert_eq!(out["exception"], "JS sync function timed out", "{out}");
    // another function can be tried before it is installed
    let (st, out) = post(
        &url,
        &json!({"doc": {"n": 1}, "sync_function": "function (doc) { channel('n' + doc.n); }"}),
    );
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["channels"], json!(["n1"]));
    let r = post(
        &url,
        &json!({"doc": {}, "sync_function": "function (doc) {\n channel(;\n}"}),
    );
    assert_error(&r, 400, "bad_request");
    // bad requests
    assert_error(&post(&url, &json!({"oldDoc": {}})), 400, "bad_request");
    assert_error(&post(&url, &json!({"doc": [1]})), 400, "bad_request");
    assert_error(
        &post(&url, &json!({"doc": {}, "extra": 1})),
        400,
        "bad_request",
    );
    // nothing was written
    assert_eq!(get(&format!("{admin}/x")).0, 404);
    assert_eq!(get(&format!("{admin}/")).1["update_seq"], seq);
    // not on the public port
    let r = post(&format!("{}/db/_sync", s.public), &json!({"doc": {}}));
    assert_eq!(r.0, 404, "{}", r.1);
}

/// Polls `GET /{db}/_resync` until it is no longer running.
fn wait_resync(admin: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, status) = get(&format!("{admin}/_resync"));
        assert_eq!(st, 200, "{status}");
        if status["status"] != "running" {
            return status;
        }
        assert!(Instant::now() < until, "resync did not finish: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_docs_ids(user: &str, public: &str) -> Vec<String> {
    let (st, all) = uget(user, &format!("{public}/_all_docs"));
    assert_eq!(st, 200, "{all}");
    all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn resync_reruns_the_current_function_and_changes_who_sees_what() {
    let v1 = r#"function (doc) {
  channel("c-" + doc.group);
  if (doc.type == "grant") access(doc.user, "c-" + doc.group);
}"#;
    let s = start(Some(v1));
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    let (st, _) = get(&format!("{admin}/_resync"));
    assert_eq!(st, 200);
    for (id, body) in [
        ("a1", json!({"group": "a"})),
        ("a2", json!({"group": "a"})),
        ("b1", json!({"group": "b"})),
        ("e1", json!({"group": "a", "bad": true})),
        ("g1", json!({"type": "grant", "user": "bob", "group": "a"})),
    ] {
        assert_eq!(put(&format!("{admin}/{id}"), &body).0, 201);
    }
    assert_eq!(all_docs_ids("bob", &public), ["a1", "a2", "e1", "g1"]);
    let checkpoint = uget("bob", &format!("{public}/_changes")).1["last_seq"].clone();
    // the new function routes by x-GROUP and grants x-b; it throws for e1
    let v2 = r#"function (doc) {
  if (doc.bad) throw("bad document");
  channel("x-" + doc.group);
  if (doc.type == "grant") access(doc.user, "x-b");
}"#;
    assert_eq!(put_sync(&admin, v2).0, 200);
    // a new function alone changes nothing for existing documents
    assert_eq!(all_docs_ids("bob", &public), ["a1", "a2", "e1", "g1"]);
    let (st, status) = post(&format!("{admin}/_resync"), &json!({}));
    assert_eq!(st, 200, "{status}");
    assert!(
        status["status"] == "running" || status["status"] == "completed",
        "{status}"
    );
    let status = wait_resync(&admin);
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["docs_processed"], 5, "{status}");
    assert_eq!(status["docs_changed"], 4, "{status}");
    assert_eq!(status["docs_errored"], 1, "{status}");
    // bob now holds x-b only: b1; he lost c-a (a1, a2, e1, g1)
    assert_eq!(all_docs_ids("bob", &public), ["b1"]);
    assert_eq!(uget("bob", &format!("{public}/a1")).0, 403);
    let (_, bob) = get(&format!("{admin}/_user/bob"));
    assert_eq!(bob["channel_sources"]["x-b"], json!(["doc:g1"]), "{bob}");
    assert!(bob["channel_sources"].get("c-a").is_none(), "{bob}");
    // his feed from the old checkpoint: b1 arrives, the documents he lost are removals
    let (_, feed) = uget(
        "bob",
        &format!(
            "{public}/_changes?since={}",
            checkpoint.to_string().trim_matches('"')
        ),
    );
    let rows = feed["results"].as_array().unwrap();
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).cloned();
    assert!(
        row("b1").is_some_and(|r| r.get("removed").is_none()),
        "{feed}"
    );
    for id in ["a1", "a2"] {
        assert!(
            row(id).is_some_and(|r| r.get("removed").is_some()),
            "{id}: {feed}"
        );
    }
    // the document the function failed on keeps its channel: alice (c-a) still reads it
    assert_eq!(uget("alice", &format!("{public}/e1")).0, 200);
    assert_eq!(uget("alice", &format!("{public}/a1")).0, 403);
    assert_eq!(in_channel(&admin, "x-a"), ["a1", "a2", "g1"]);
    // bodies and revisions are untouched
    let (_, a1) = get(&format!("{admin}/a1"));
    assert!(a1["_rev"].as_str().unwrap().starts_with("1-"), "{a1}");
    assert_eq!(a1["group"], "a");
    // a second run finds nothing to change
    let (st, _) = post(&format!("{admin}/_resync?action=start"), &json!({}));
    assert_eq!(st, 200);
    let status = wait_resync(&admin);
    assert_eq!(status["docs_changed"], 0, "{status}");
    assert_eq!(status["docs_processed"], 5, "{status}");
    // stop when nothing runs; unknown actions
    assert_error(
        &post(&format!("{admin}/_resync?action=stop"), &json!({})),
        400,
        "bad_request",
    );
    assert_error(
        &post(&format!("{admin}/_resync?action=go"), &json!({})),
        400,
        "bad_request",
    );
    assert_eq!(uget("bob", &format!("{public}/_resync")).0, 404);
}

#[test]
fn a_branch_that_becomes_the_winner_is_rerun_as_admin() {
    // SPEC §13: when the winner switches to another branch, the function re-runs for it as
    // admin (here the new function would refuse alice, who deletes the winning branch)
    let v1 = "function (doc) { channel(\"v1-\" + doc.n); }";
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["users"] =
            json!({"alice": {"password": "pw-alice-1", "admin_channels": ["*"]}});
        c["databases"]["db"]["sync"] = json!(v1);
    });
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    let root = "1-".to_string() + &"1".repeat(32);
    let (a, b) = (
        "2-".to_string() + &"a".repeat(32),
        "2-".to_string() + &"b".repeat(32),
    );
    for (id, rev, n) in [
        ("d", &a, "a"),
        ("d", &b, "b"),
        ("e", &a, "boom"),
        ("e", &b, "b"),
    ] {
        let (st, r) = put(
            &format!("{admin}/{id}?new_edits=false"),
            &json!({"_rev": rev, "n": n, "_revisions": {"start": 2, "ids": [&rev[2..], &root[2..]]}}),
        );
        assert_eq!(st, 201, "{r}");
    }
    assert_eq!(get(&format!("{admin}/d")).1["_rev"], b.as_str());
    assert_eq!(in_channel(&admin, "v1-b"), ["d", "e"]);
    let v2 = "function (doc) {\n  if (doc._deleted) return;\n  if (doc.n == \"boom\") throw(\"no\");\n  requireAdmin();\n  channel(\"v2-\" + doc.n);\n}";
    assert_eq!(put_sync(&admin, v2).0, 200);
    let (st, r) = as_user(
        "alice",
        reqwest::Method::DELETE,
        &format!("{public}/d?rev={b}"),
        None,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(get(&format!("{admin}/d")).1["_rev"], a.as_str());
    assert_eq!(in_channel(&admin, "v2-a"), ["d"]);
    assert!(in_channel(&admin, "v1-a").is_empty());
    // when the re-run throws, the branch keeps what it was written with; the delete stands
    let (st, r) = as_user(
        "alice",
        reqwest::Method::DELETE,
        &format!("{public}/e?rev={b}"),
        None,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(get(&format!("{admin}/e")).1["_rev"], a.as_str());
    assert_eq!(in_channel(&admin, "v1-boom"), ["e"]);
    assert!(s.log_text().contains("keeping its channels and grants"));
}

#[test]
fn a_grant_in_bulk_docs_counts_for_the_later_documents_of_the_request() {
    // TestBulkDocsChangeToAccess
    let f = r#"function (doc) {
  if (doc.type == "grant") { access(doc.user, doc.ch); return; }
  requireAccess(doc.ch);
  channel(doc.ch);
}"#;
    let s = start(Some(f));
    let public = format!("{}/db", s.public);
    let (st, rows) = as_user(
        "bob",
        reqwest::Method::POST,
        &format!("{public}/_bulk_docs"),
        Some(&json!({"docs": [
            {"_id": "m0", "ch": "room"},
            {"_id": "grant", "type": "grant", "user": "bob", "ch": "room"},
            {"_id": "m1", "ch": "room"},
            {"_id": "m2", "ch": "elsewhere"},
            {"_id": "m3", "ch": "room"}
        ]})),
    );
    assert_eq!(st, 201, "{rows}");
    assert_eq!(rows[0]["error"], "forbidden", "{rows}");
    assert_eq!(rows[1]["ok"], true, "{rows}");
    assert_eq!(rows[2]["ok"], true, "{rows}");
    assert_eq!(rows[3]["error"], "forbidden", "{rows}");
    assert_eq!(rows[4]["ok"], true, "{rows}");
    assert_eq!(all_docs_ids("bob", &public), ["m1", "m3"]);
}
