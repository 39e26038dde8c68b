//! The JavaScript sync function (SPEC §13): who may write what, channels from `channel()`,
//! grants from `access()`/`role()`, errors, timeouts, admin endpoints. Ports the applicable
//! cases of Sync Gateway's own tests (named in each test's comment).

use serde_json::{json, Value};

use crate::helpers::*;

/// Per-user private documents: the owner is fixed at creation, only the owner may change or
/// delete them, and each owner gets the channel of their documents.
const PRIVATE: &str = r#"function (doc, oldDoc) {
  if (oldDoc) {
    requireUser(oldDoc.owner);
    if (!doc._deleted && doc.owner !== oldDoc.owner) throw({forbidden: "owner cannot change"});
  } else {
    requireUser(doc.owner);
  }
  var owner = oldDoc ? oldDoc.owner : doc.owner;
  channel("private-" + owner);
  access(owner, "private-" + owner);
  if (doc.shared_with) access(doc.shared_with, "private-" + owner);
  if (doc.boom) throw("kaboom " + doc._id);
  if (doc.probe) throw({forbidden: JSON.stringify({doc: doc, oldDoc: oldDoc})});
  if (oldDoc && oldDoc.probe_delete && doc._deleted) throw({forbidden: JSON.stringify({doc: doc, oldDoc: oldDoc})});
  if (doc.unauth) throw({unauthorized: "log in first"});
  if (doc.bad_channel) channel("a,b");
  if (doc.loop) while (true) {}
}"#;

fn users() -> Value {
    json!({
        "alice": {"password": "pw-alice-1"},
        "bob": {"password": "pw-bob-1"},
        "carol": {"password": "pw-carol-1"}
    })
}

fn start(sync: &str) -> TestServer {
    let sync = sync.to_string();
    TestServer::start_with(move |c| {
        c["databases"]["db"]["users"] = users();
        c["databases"]["db"]["sync"] = json!(sync);
        c["databases"]["db"]["javascript_timeout_ms"] = json!(300);
    })
}

/// A request as `user` (password `pw-<user>-1`).
fn as_user(user: &str, method: reqwest::Method, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut rb = client()
        .request(method, url)
        .basic_auth(user, Some(format!("pw-{user}-1")));
    if let Some(b) = body {
        rb = rb.json(b);
    }
    send(rb)
}

fn uput(user: &str, url: &str, body: &Value) -> (u16, Value) {
    as_user(user, reqwest::Method::PUT, url, Some(body))
}

fn upost(user: &str, url: &str, body: &Value) -> (u16, Value) {
    as_user(user, reqwest::Method::POST, url, Some(body))
}

fn uget(user: &str, url: &str) -> (u16, Value) {
    as_user(user, reqwest::Method::GET, url, None)
}

fn udelete(user: &str, url: &str) -> (u16, Value) {
    as_user(user, reqwest::Method::DELETE, url, None)
}

#[test]
fn private_docs_cannot_be_overwritten_or_deleted_by_another_user() {
    let s = start(PRIVATE);
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    let (st, a1) = uput(
        "alice",
        &format!("{public}/a1"),
        &json!({"owner": "alice", "v": 1}),
    );
    assert_eq!(st, 201, "{a1}");
    let rev1 = a1["rev"].as_str().unwrap().to_string();
    // creating a document in someone else's name (TestRequireUser)
    let r = uput("bob", &format!("{public}/b0"), &json!({"owner": "alice"}));
    assert_error(&r, 403, "forbidden");
    assert_eq!(r.1["reason"], "sg wrong user");
    assert_eq!(get(&format!("{admin}/b0")).0, 404);
    // PUT over alice's document
    let r = uput(
        "bob",
        &format!("{public}/a1"),
        &json!({"_rev": rev1, "owner": "alice", "v": 666}),
    );
    assert_error(&r, 403, "forbidden");
    // DELETE (oldDoc is the live parent: TestAccessOnTombstone)
    let r = udelete("bob", &format!("{public}/a1?rev={rev1}"));
    assert_error(&r, 403, "forbidden");
    // attachment PUT (a new revision whose doc is the parent's body)
    let r = send(
        client()
            .put(format!("{public}/a1/evil.txt?rev={rev1}"))
            .basic_auth("bob", Some("pw-bob-1"))
            .header("content-type", "text/plain")
            .body("x"),
    );
    assert_error(&r, 403, "forbidden");
    // _bulk_docs: the rejected document gets its own entry, the other is written
    let (st, rows) = upost(
        "bob",
        &format!("{public}/_bulk_docs"),
        &json!({"docs": [
            {"_id": "a1", "_rev": rev1, "owner": "alice", "v": 666},
            {"_id": "b1", "owner": "bob"}
        ]}),
    );
    assert_eq!(st, 201);
    assert_eq!(rows[0]["id"], "a1");
    assert_eq!(rows[0]["error"], "forbidden", "{rows}");
    assert_eq!(rows[0]["reason"], "sg wrong user");
    assert_eq!(rows[1]["ok"], true, "{rows}");
    // new_edits:false cannot graft a winning branch onto alice's document
    let hash1 = rev1.split_once('-').unwrap().1;
    let mut ids: Vec<String> = "fedcba98"
        .chars()
        .map(|c| c.to_string().repeat(32))
        .collect();
    ids.push(hash1.to_string());
    let (st, rows) = upost(
        "bob",
        &format!("{public}/_bulk_docs"),
        &json!({"new_edits": false, "docs": [
            {"_id": "a1", "_rev": format!("9-{}", ids[0]), "owner": "alice", "v": 666,
             "_revisions": {"start": 9, "ids": ids}}
        ]}),
    );
    assert_eq!(st, 201);
    assert_eq!(rows[0]["error"], "forbidden", "{rows}");
    let r = uput(
        "bob",
        &format!("{public}/a1?new_edits=false"),
        &json!({"_rev": "2-ffffffffffffffffffffffffffffffff", "owner": "bob",
                "_revisions": {"start": 2, "ids": ["ffffffffffffffffffffffffffffffff", hash1]}}),
    );
    assert_error(&r, 403, "forbidden");
    // nothing of bob's attempts was stored
    let (_, doc) = get(&format!("{admin}/a1?revs_info=true"));
    assert_eq!(doc["_rev"], rev1.as_str(), "{doc}");
    assert_eq!(doc["v"], 1);
    assert!(doc.get("_attachments").is_none());
    let (_, leaves) = get(&format!("{admin}/a1?open_revs=all"));
    assert_eq!(leaves.as_array().unwrap().len(), 1, "{leaves}");
    // the owner can update and delete; the admin port passes every require*
    let (st, a2) = uput(
        "alice",
        &format!("{public}/a1"),
        &json!({"_rev": rev1, "owner": "alice", "v": 2}),
    );
    assert_eq!(st, 201, "{a2}");
    let (st, a3) = put(
        &format!("{admin}/a1"),
        &json!({"_rev": a2["rev"], "owner": "alice", "v": 3}),
    );
    assert_eq!(st, 201, "{a3}");
    let (st, _) = udelete(
        "alice",
        &format!("{public}/a1?rev={}", a3["rev"].as_str().unwrap()),
    );
    assert_eq!(st, 200);
    // a throw({forbidden}) applies to the admin too
    let r = put(
        &format!("{admin}/p1"),
        &json!({"owner": "x", "probe": true}),
    );
    assert_error(&r, 403, "forbidden");
}

#[test]
fn channels_come_from_the_function_and_errors_map_to_statuses() {
    let s = start(PRIVATE);
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    // channel() replaces the channels property
    let (st, _) = uput(
        "alice",
        &format!("{public}/a1"),
        &json!({"owner": "alice", "channels": ["everyone"]}),
    );
    assert_eq!(st, 201);
    let (_, ch) = get(&format!(
        "{admin}/_changes?filter=sync_gateway/bychannel&channels=private-alice"
    ));
    assert_eq!(ch["results"][0]["id"], "a1", "{ch}");
    let (_, ch) = get(&format!(
        "{admin}/_changes?filter=sync_gateway/bychannel&channels=everyone"
    ));
    assert_eq!(ch["results"].as_array().unwrap().len(), 0, "{ch}");
    // an exception is a 500 with a fixed reason; the JS message and doc id are in the log
    // (TestSyncFunctionException)
    let r = uput(
        "alice",
        &format!("{public}/boom1"),
        &json!({"owner": "alice", "boom": true}),
    );
    assert_error(&r, 500, "internal_server_error");
    assert_eq!(r.1["reason"], "Exception in JS sync function");
    assert!(s.log_text().contains("kaboom boom1"), "{}", s.log_text());
    assert_eq!(get(&format!("{admin}/boom1")).0, 404);
    // throw({unauthorized}) is a 401
    let r = uput(
        "alice",
        &format!("{public}/u1"),
        &json!({"owner": "alice", "unauth": true}),
    );
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.1["reason"], "log in first");
    // an invalid channel name from the function is an exception (TestInvalidChannel)
    let r = uput(
        "alice",
        &format!("{public}/c1"),
        &json!({"owner": "alice", "bad_channel": true}),
    );
    assert_error(&r, 500, "internal_server_error");
    // throw in the middle of _bulk_docs rejects only that document
    let (st, rows) = upost(
        "alice",
        &format!("{public}/_bulk_docs"),
        &json!({"docs": [
            {"_id": "k1", "owner": "alice"},
            {"_id": "k2", "owner": "alice", "boom": true},
            {"_id": "k3", "owner": "alice", "probe": true},
            {"_id": "k4", "owner": "alice"},
            {"_id": "_local/k5", "owner": "nobody"}
        ]}),
    );
    assert_eq!(st, 201);
    assert_eq!(rows[0]["ok"], true, "{rows}");
    assert_eq!(rows[1]["error"], "internal_server_error", "{rows}");
    assert_eq!(rows[1]["reason"], "Exception in JS sync function");
    assert_eq!(rows[2]["error"], "forbidden", "{rows}");
    assert_eq!(rows[3]["ok"], true, "{rows}");
    assert_eq!(
        rows[4]["ok"], true,
        "_local docs never run the function: {rows}"
    );
    assert_eq!(get(&format!("{admin}/k2")).0, 404);
    assert_eq!(get(&format!("{admin}/k4")).0, 200);
}

#[test]
fn doc_and_old_doc_have_sync_gateways_shapes() {
    // TestSyncFnBodyProperties, …Tombstone, TestSyncFnOldDocBodyProperties
    let s = start(PRIVATE);
    let admin = format!("{}/db", s.admin);
    let r = put(
        &format!("{admin}/n1"),
        &json!({"owner": "o", "probe": true, "n": 12345678901234567890u64}),
    );
    assert_error(&r, 403, "forbidden");
    let seen: Value = serde_json::from_str(r.1["reason"].as_str().unwrap()).unwrap();
    let doc = seen["doc"].as_object().unwrap();
    let keys: Vec<&str> = doc.keys().map(String::as_str).collect();
    assert_eq!(keys, ["_id", "_rev", "owner", "probe", "n"], "{seen}");
    assert_eq!(doc["_id"], "n1");
    assert!(doc["_rev"].as_str().unwrap().starts_with("1-"));
    assert_eq!(seen["oldDoc"], Value::Null);
    // an update: oldDoc is the parent's body with _id and without _rev
    let (st, o) = put(
        &format!("{admin}/o1"),
        &json!({"owner": "o", "x": 1, "_attachments": {"a.txt": {"content_type": "text/plain", "data": "aGk="}}}),
    );
    assert_eq!(st, 201);
    let r = put(
        &format!("{admin}/o1"),
        &json!({"_rev": o["rev"], "owner": "o", "probe": true}),
    );
    assert_error(&r, 403, "forbidden");
    let seen: Value = serde_json::from_str(r.1["reason"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen["oldDoc"],
        json!({"_id": "o1", "owner": "o", "x": 1}),
        "{seen}"
    );
    assert!(seen["doc"]["_rev"].as_str().unwrap().starts_with("2-"));
    assert!(seen["doc"].get("_attachments").is_none());
    // a deletion: doc is {_id, _rev, _deleted}, oldDoc the live parent
    let (st, d) = put(
        &format!("{admin}/t1"),
        &json!({"owner": "o", "probe_delete": true}),
    );
    assert_eq!(st, 201);
    let r = delete(&format!("{admin}/t1?rev={}", d["rev"].as_str().unwrap()));
    assert_error(&r, 403, "forbidden");
    let seen: Value = serde_json::from_str(r.1["reason"].as_str().unwrap()).unwrap();
    let keys: Vec<&str> = seen["doc"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["_id", "_rev", "_deleted"], "{seen}");
    assert_eq!(seen["oldDoc"]["probe_delete"], true);
    // the revision id the function saw is the one stored
    let (st, w) = put(&format!("{admin}/r1"), &json!({"owner": "o"}));
    assert_eq!(st, 201);
    let r = put(
        &format!("{admin}/r1"),
        &json!({"_rev": w["rev"], "owner": "o", "probe": true}),
    );
    let seen: Value = serde_json::from_str(r.1["reason"].as_str().unwrap()).unwrap();
    let rev_seen = seen["doc"]["_rev"].as_str().unwrap().to_string();
    let sync = s.config["databases"]["db"]["sync"]
        .as_str()
        .unwrap()
        .to_string();
    drop(s);
    let plain = TestServer::start_with(|c| c["databases"]["db"]["users"] = users());
    let admin = format!("{}/db", plain.admin);
    let (_, w) = put(&format!("{admin}/r1"), &json!({"owner": "o"}));
    let (_, w2) = put(
        &format!("{admin}/r1"),
        &json!({"_rev": w["rev"], "owner": "o", "probe": true}),
    );
    assert_eq!(w2["rev"], rev_seen.as_str(), "{sync}");
}

#[test]
fn a_runaway_function_times_out_and_the_server_keeps_serving() {
    // TestSyncFnTimeout
    let s = start(PRIVATE);
    let admin = format!("{}/db", s.admin);
    let t = std::time::Instant::now();
    let r = put(
        &format!("{admin}/loop"),
        &json!({"owner": "o", "loop": true}),
    );
    assert_error(&r, 500, "internal_server_error");
    assert_eq!(r.1["reason"], "JS sync function timed out");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(get(&format!("{admin}/loop")).0, 404);
    // every worker still answers
    for i in 0..20 {
        let (st, _) = put(&format!("{admin}/after{i}"), &json!({"owner": "o"}));
        assert_eq!(st, 201);
    }
}

#[test]
fn a_syntax_error_stops_startup_naming_the_database_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = base_config(tmp.path());
    cfg["databases"]["db"]["sync"] = json!("function (doc) {\n  channel(doc.x;\n}");
    let path = tmp.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = std::process::Command::new(BIN).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("databases.db.sync"), "{err}");
    assert!(err.contains("line 2 column"), "{err}");
    // `$name` inside the function is JavaScript, not an environment variable; a file works too
    let js = tmp.path().join("sync.js");
    std::fs::write(&js, "function (doc) { var $x = 1; channel('f' + $x); }").unwrap();
    cfg["databases"]["db"]["sync"] = json!({"file": js});
    cfg["databases"]["db2"] = json!({"sync": "function (doc) { var $undefined_var = 1; }"});
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_a_sync_function_nothing_changes() {
    // TestGetChannelsAndAccess: the default routes by the channels property, anyone may write
    let s = TestServer::start_with(|c| c["databases"]["db"]["users"] = users());
    let public = format!("{}/db", s.public);
    let (st, a) = uput("alice", &format!("{public}/x"), &json!({"channels": ["c"]}));
    assert_eq!(st, 201);
    let (st, _) = uput(
        "bob",
        &format!("{public}/x"),
        &json!({"_rev": a["rev"], "channels": ["c"]}),
    );
    assert_eq!(st, 201);
}

fn changes(user: &str, public: &str, since: &str) -> Value {
    uget(
        user,
        &format!("{public}/_changes?since={}", urlencode(since)),
    )
    .1
}

fn urlencode(s: &str) -> String {
    s.replace('"', "%22").replace(':', "%3A")
}

fn rows_for<'a>(feed: &'a Value, id: &str) -> Vec<&'a Value> {
    feed["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["id"] == id)
        .collect()
}

#[test]
fn access_grants_share_documents_and_their_removal_revokes() {
    // TestDynamicChannelGrant, TestChannelAccessChanges, TestAccessOnTombstone,
    // TestChangesFromCompoundSinceViaDocGrant
    let s = start(PRIVATE);
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    let (st, a1) = uput(
        "alice",
        &format!("{public}/a1"),
        &json!({"owner": "alice", "v": 1}),
    );
    assert_eq!(st, 201);
    let (st, _) = uput(
        "alice",
        &format!("{public}/a2"),
        &json!({"owner": "alice", "v": 2}),
    );
    assert_eq!(st, 201);
    // the owner reads her documents through the channel her documents grant her
    assert_eq!(uget("alice", &format!("{public}/a1")).0, 200);
    assert_eq!(uget("bob", &format!("{public}/a1")).0, 403);
    let before = changes("bob", &public, "0")["last_seq"].to_string();
    assert_eq!(rows_for(&changes("bob", &public, "0"), "a1").len(), 0);
    // share: a new revision of a2 grants bob alice's channel
    let (st, a2) = uput(
        "alice",
        &format!("{public}/a2"),
        &json!({"_rev": uget("alice", &format!("{public}/a2")).1["_rev"], "owner": "alice", "v": 3, "shared_with": "bob"}),
    );
    assert_eq!(st, 201, "{a2}");
    assert_eq!(uget("bob", &format!("{public}/a1")).0, 200);
    let (_, bob) = get(&format!("{admin}/_user/bob"));
    assert!(
        bob["all_channels"]
            .as_array()
            .unwrap()
            .contains(&json!("private-alice")),
        "{bob}"
    );
    assert_eq!(
        bob["channel_sources"]["private-alice"],
        json!(["doc:a2"]),
        "{bob}"
    );
    let (_, alice) = get(&format!("{admin}/_user/alice"));
    assert_eq!(
        alice["channel_sources"]["private-alice"],
        json!(["doc:a1", "doc:a2"]),
        "{alice}"
    );
    // the GET body can be PUT back unchanged
    let mut back = bob.clone();
    back["password"] = json!("pw-bob-1");
    assert!(put(&format!("{admin}/_user/bob"), &back).0 < 300);
    // from a checkpoint before the grant, a1 (older than the grant) is backfilled as "G:S"
    let feed = changes("bob", &public, &before);
    let a1_rows = rows_for(&feed, "a1");
    assert_eq!(a1_rows.len(), 1, "{feed}");
    assert!(
        a1_rows[0]["seq"].as_str().is_some_and(|q| q.contains(':')),
        "{feed}"
    );
    assert_eq!(rows_for(&feed, "a2").len(), 1, "{feed}");
    // un-share: bob loses the channel and gets removal rows from his checkpoint
    let checkpoint = feed["last_seq"].to_string();
    let checkpoint = checkpoint.trim_matches('"').to_string();
    let (st, _) = uput(
        "alice",
        &format!("{public}/a2"),
        &json!({"_rev": a2["rev"], "owner": "alice", "v": 4}),
    );
    assert_eq!(st, 201);
    assert_eq!(uget("bob", &format!("{public}/a1")).0, 403);
    let feed = changes("bob", &public, &checkpoint);
    let removed: Vec<&Value> = feed["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("removed").is_some())
        .collect();
    let mut ids: Vec<&str> = removed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a2"], "{feed}");
    let (_, bob) = get(&format!("{admin}/_user/bob"));
    assert!(
        bob["channel_sources"].get("private-alice").is_none(),
        "{bob}"
    );
    // a tombstone grants what the function grants for it: here the owner's grant stays (it
    // comes from oldDoc, TestAccessOnTombstone)
    let (st, _) = udelete(
        "alice",
        &format!("{public}/a1?rev={}", a1["rev"].as_str().unwrap()),
    );
    assert_eq!(st, 200);
    let (_, alice) = get(&format!("{admin}/_user/alice"));
    assert_eq!(
        alice["channel_sources"]["private-alice"],
        json!(["doc:a1", "doc:a2"]),
        "{alice}"
    );
    // a grant to a user created later applies when it exists (TestAccessFunctionDb)
    let (st, g1) = put(
        &format!("{admin}/g1"),
        &json!({"owner": "alice", "shared_with": "dave"}),
    );
    assert_eq!(st, 201);
    let (st, _) = put(
        &format!("{admin}/_user/dave"),
        &json!({"password": "pw-dave-1"}),
    );
    assert!(st < 300);
    assert_eq!(uget("dave", &format!("{public}/a2")).0, 200);
    // grants survive a restart
    let s = s.restart();
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    assert_eq!(uget("dave", &format!("{public}/a2")).0, 200);
    assert_eq!(uget("bob", &format!("{public}/a2")).0, 403);
    // deleting the granting document revokes its grant (the tombstone has no shared_with)
    let (st, _) = delete(&format!("{admin}/g1?rev={}", g1["rev"].as_str().unwrap()));
    assert_eq!(st, 200);
    assert_eq!(uget("dave", &format!("{public}/a2")).0, 403);
    assert_eq!(uget("alice", &format!("{public}/a2")).0, 200);
}

/// Shared lists: a list document names its members; they get the list's role, the role gets
/// the list's channel; items are routed to their list's channel.
const TEAMS: &str = r#"function (doc, oldDoc) {
  if (doc.type === "team") {
    role(doc.members, "role:team-" + doc._id);
    access("role:team-" + doc._id, "team-" + doc._id);
  } else if (doc.team) {
    requireRole("team-" + doc.team);
    channel("team-" + doc.team);
  }
}"#;

#[test]
fn role_grants_give_members_the_role_and_its_channels() {
    // TestRoleAccessChanges, TestRoleChannelGrantInheritance, TestRequireRole
    let s = start(TEAMS);
    let (public, admin) = (format!("{}/db", s.public), format!("{}/db", s.admin));
    let (st, t) = put(
        &format!("{admin}/t1"),
        &json!({"type": "team", "members": ["bob", "carol"]}),
    );
    assert_eq!(st, 201);
    let (st, item) = uput(
        "bob",
        &format!("{public}/i1"),
        &json!({"team": "t1", "text": "hi"}),
    );
    assert_eq!(st, 201, "{item}");
    let r = uput("alice", &format!("{public}/i2"), &json!({"team": "t1"}));
    assert_error(&r, 403, "forbidden");
    assert_eq!(r.1["reason"], "sg missing role");
    assert_eq!(uget("carol", &format!("{public}/i1")).0, 200);
    assert_eq!(uget("alice", &format!("{public}/i1")).0, 403);
    let (_, carol) = get(&format!("{admin}/_user/carol"));
    assert_eq!(carol["roles"], json!(["team-t1"]), "{carol}");
    assert_eq!(
        carol["channel_sources"]["team-t1"],
        json!(["role:team-t1"]),
        "{carol}"
    );
    // carol leaves the team: she loses the role and its channel
    let (st, _) = put(
        &format!("{admin}/t1"),
        &json!({"_rev": t["rev"], "type": "team", "members": ["bob"]}),
    );
    assert_eq!(st, 201);
    assert_eq!(uget("carol", &format!("{public}/i1")).0, 403);
    assert_eq!(uget("bob", &format!("{public}/i1")).0, 200);
}

/// A replicated branch that shares no stored revision with an existing document is judged
/// against the document as it is: another user cannot take it over by pushing a new branch.
#[test]
fn a_disconnected_replicated_branch_sees_the_current_document_as_old_doc() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["sync"] = serde_json::json!(
            "function(doc, oldDoc) { if (oldDoc) { requireUser(oldDoc.owner); } else { requireUser(doc.owner); } channel('c'); }"
        );
        c["databases"]["db"]["users"] = serde_json::json!({
            "alice": {"password": "pw-alice-1", "admin_channels": ["c"]},
            "bob": {"password": "pw-bob-1", "admin_channels": ["c"]}
        });
    });
    let db = format!("{}/db", s.public);
    let r = client()
        .put(format!("{db}/list"))
        .basic_auth("alice", Some("pw-alice-1"))
        .json(&serde_json::json!({"owner": "alice"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = client()
        .post(format!("{db}/_bulk_docs"))
        .basic_auth("bob", Some("pw-bob-1"))
        .json(&serde_json::json!({"new_edits": false, "docs": [
            {"_id": "list", "_rev": format!("1-{}", "f".repeat(32)), "owner": "bob"}
        ]}))
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v[0]["error"], "forbidden", "{v}");
    let r = client()
        .get(format!("{}/db/list?open_revs=all", s.admin))
        .header("accept", "application/json")
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "bob's branch was stored: {v}"
    );
    // a new document by bob is still his to create
    let r = client()
        .post(format!("{db}/_bulk_docs"))
        .basic_auth("bob", Some("pw-bob-1"))
        .json(&serde_json::json!({"new_edits": false, "docs": [
            {"_id": "bobs", "_rev": format!("1-{}", "e".repeat(32)), "owner": "bob"}
        ]}))
        .send()
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    assert!(
        v.as_array().unwrap().is_empty() || v[0]["error"].is_null(),
        "{v}"
    );
}

/// Requests whose function calls finish together are written as one store write: each still
/// gets its own answer, and a document refused for one request is never stored for another.
#[test]
fn concurrent_writers_each_get_their_own_results() {
    let s = start(PRIVATE);
    let public = format!("{}/db", s.public);
    let admin = format!("{}/db", s.admin);
    for u in ["alice", "bob", "carol"] {
        let (st, _) = put(&format!("{admin}/owned-{u}"), &json!({"owner": u}));
        assert_eq!(st, 201);
    }
    let users = ["alice", "bob", "carol"];
    let threads: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(k, &u)| {
            let public = public.clone();
            let admin = admin.clone();
            let other = users[(k + 1) % 3];
            std::thread::spawn(move || {
                for i in 0..25 {
                    // the user's own document
                    let (st, b) = uput(u, &format!("{public}/{u}-{i}"), &json!({"owner": u}));
                    assert_eq!(
                        (st, b["id"].as_str()),
                        (201, Some(format!("{u}-{i}").as_str()))
                    );
                    assert!(b["rev"].as_str().unwrap().starts_with("1-"));
                    // a document owned by someone else: refused, nothing stored
                    let (st, b) = uput(
                        u,
                        &format!("{public}/{u}-theft-{i}"),
                        &json!({"owner": other}),
                    );
                    assert_eq!((st, b["error"].as_str()), (403, Some("forbidden")), "{b}");
                    // a batch mixing both, and a throw in the middle
                    let (st, rows) = upost(
                        u,
                        &format!("{public}/_bulk_docs"),
                        &json!({"docs": [
                            {"_id": format!("{u}-b{i}"), "owner": u},
                            {"_id": format!("{u}-bt{i}"), "owner": other},
                            {"_id": format!("{u}-bb{i}"), "owner": u, "boom": true},
                            {"_id": format!("{u}-bc{i}"), "owner": u},
                        ]}),
                    );
                    assert_eq!(st, 201);
                    let rows = rows.as_array().unwrap().clone();
                    assert_eq!(rows.len(), 4);
                    assert_eq!(rows[0]["id"], format!("{u}-b{i}"));
                    assert!(rows[0]["ok"].as_bool().unwrap(), "{rows:?}");
                    assert_eq!(rows[1]["id"], format!("{u}-bt{i}"));
                    assert_eq!(rows[1]["error"], "forbidden", "{rows:?}");
                    assert_eq!(rows[2]["id"], format!("{u}-bb{i}"));
                    assert!(rows[2]["error"].is_string(), "{rows:?}");
                    assert_eq!(rows[3]["id"], format!("{u}-bc{i}"));
                    assert!(rows[3]["ok"].as_bool().unwrap(), "{rows:?}");
                    // an update of the user's own document and of another's
                    let (_, d) = uget(u, &format!("{public}/owned-{u}"));
                    let (st, _) = uput(
                        u,
                        &format!("{public}/owned-{u}"),
                        &json!({"_rev": d["_rev"], "owner": u, "n": i}),
                    );
                    assert_eq!(st, 201);
                    let (_, d) = get(&format!("{admin}/owned-{other}"));
                    let (st, _) = uput(
                        u,
                        &format!("{public}/owned-{other}"),
                        &json!({"_rev": d["_rev"], "owner": other, "stolen": true}),
                    );
                    assert!(st == 403 || st == 409, "{st}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for u in users {
        for i in 0..25 {
            assert_eq!(get(&format!("{admin}/{u}-{i}")).1["owner"], u);
            assert_eq!(get(&format!("{admin}/{u}-b{i}")).1["owner"], u);
            assert_eq!(get(&format!("{admin}/{u}-bc{i}")).1["owner"], u);
            for refused in [
                format!("{u}-theft-{i}"),
                format!("{u}-bt{i}"),
                format!("{u}-bb{i}"),
            ] {
                assert_eq!(get(&format!("{admin}/{refused}")).0, 404, "{refused}");
            }
        }
        let (_, d) = get(&format!("{admin}/owned-{u}"));
        assert_eq!(d["n"], 24);
        assert!(d.get("stolen").is_none(), "{d}");
        assert!(d["_rev"].as_str().unwrap().starts_with("26-"), "{d}");
    }
}

/// A runaway call still running does not hold back other requests' writes: they are written
/// while it runs (a request parked for gathering waits at most a moment, not for the calls
/// of other requests to end).
#[test]
fn a_write_does_not_wait_for_a_runaway_call_of_another_request() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["users"] = users();
        c["databases"]["db"]["sync"] = json!(PRIVATE);
        c["databases"]["db"]["javascript_timeout_ms"] = json!(4000);
    });
    let admin = format!("{}/db", s.admin);
    let looping = {
        let url = format!("{admin}/loop");
        std::thread::spawn(move || put(&url, &json!({"owner": "o", "loop": true})))
    };
    // let the runaway request reach its worker
    std::thread::sleep(std::time::Duration::from_millis(300));
    for i in 0..20 {
        let (st, _) = put(&format!("{admin}/meanwhile{i}"), &json!({"owner": "o"}));
        assert_eq!(st, 201);
    }
    let (st, _) = post(
        &format!("{admin}/_bulk_docs"),
        &json!({"docs": [{"_id": "bulk-meanwhile", "owner": "o"}]}),
    );
    assert_eq!(st, 201);
    assert!(
        !looping.is_finished(),
        "the writes made while the runaway call ran were held until it ended"
    );
    let r = looping.join().unwrap();
    assert_error(&r, 500, "internal_server_error");
    assert_eq!(get(&format!("{admin}/meanwhile19")).0, 200);
}
