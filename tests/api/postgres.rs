//! Databases on PostgreSQL (`server: "postgres://…"`), black box: documents, changes,
//! conflicts; two server processes ("nodes") on one PostgreSQL database sharing sessions and
//! waking each other's feeds. The PostgreSQL server: see `pg_cluster` (a throwaway cluster, or
//! `SYNCGATE_TEST_POSTGRES`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;
use crate::pg_cluster;

fn on_postgres(url: &str) -> impl FnOnce(&mut Value) + '_ {
    move |c: &mut Value| {
        c["databases"]["db"] = json!({
            "server": url,
            "pool_size": 4,
            "users": {"ann": {"password": "pw-ann-1", "admin_channels": ["*"]}}
        });
    }
}

#[test]
fn documents_changes_and_conflicts_on_postgres() {
    let url = pg_cluster::fresh_database();
    let s = TestServer::start_with(on_postgres(&url));
    let db = format!("{}/db", s.admin);
    let (st, r) = put(&format!("{db}/doc1"), &json!({"v": 1}));
    assert_eq!(st, 201, "{r}");
    let rev1 = r["rev"].as_str().unwrap().to_string();
    let (st, r) = get(&format!("{db}/doc1"));
    assert_eq!((st, &r["v"]), (200, &json!(1)));
    // a stale revision conflicts
    let (st, _) = put(&format!("{db}/doc1"), &json!({"_rev": "1-abc", "v": 2}));
    assert_eq!(st, 409);
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"docs": [{"_id": "b1", "n": 1}, {"_id": "b2", "n": 2}]}),
    );
    assert_eq!(st, 201, "{r}");
    assert_eq!(r.as_array().unwrap().len(), 2);
    // a replicated branch makes a conflict
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"new_edits": false, "docs": [
            {"_id": "doc1", "_rev": "1-ffff", "v": "theirs"}
        ]}),
    );
    assert_eq!(st, 201, "{r}");
    let (_, r) = get(&format!("{db}/doc1?conflicts=true"));
    assert_eq!(r["_rev"], "1-ffff");
    let (st, r) = get(&format!("{db}/_changes"));
    assert_eq!(st, 200);
    let ids: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["b1", "b2", "doc1"]);
    // the data lives in PostgreSQL: a server with an empty data_dir serves it
    drop(s);
    let t = TestServer::start_with(on_postgres(&url));
    let (st, r) = get(&format!("{}/db/doc1?conflicts=true", t.admin));
    assert_eq!(st, 200);
    assert_eq!(r["_rev"], "1-ffff");
    assert_eq!(r["_conflicts"], json!([rev1]));
    let (_, info) = get(&format!("{}/db/", t.admin));
    assert_eq!(info["doc_count"], 3);
}

#[test]
fn two_nodes_share_sessions_and_wake_each_others_feeds() {
    let url = pg_cluster::fresh_database();
    let a = TestServer::start_with(on_postgres(&url));
    let b = TestServer::start_with(on_postgres(&url));
    // log in on node A, the cookie works on node B
    let cookie = session_cookie(&a, "ann", "pw-ann-1");
    assert_eq!(session_user(&b, &cookie), "ann");
    // a longpoll parked on node B wakes for a write on node A
    let since: Value = client()
        .get(format!("{}/db/_changes", b.public))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let since = since["last_seq"].clone();
    let feed = {
        let url = format!(
            "{}/db/_changes?feed=longpoll&since={}&timeout=60000",
            b.public,
            since
                .as_u64()
                .map_or_else(|| since.to_string(), |s| s.to_string())
        );
        let cookie = cookie.clone();
        std::thread::spawn(move || -> Value {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
                .get(url)
                .header("cookie", cookie)
                .send()
                .unwrap()
                .json()
                .unwrap()
        })
    };
    // wait until the feed is parked on B (a hang guard, not a speed check)
    let mut waited = 0;
    while b.metric("syncgate_changes_feeds_active{db=\"db\"}") < 1.0 {
        assert!(waited < 400, "the longpoll never parked");
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    let r = client()
        .put(format!("{}/db/from-a", a.public))
        .header("cookie", &cookie)
        .json(&json!({"channels": ["x"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let woke = feed.join().unwrap();
    let ids: Vec<&str> = woke["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["from-a"], "{woke}");
}

#[test]
fn bad_server_values_are_config_errors() {
    for (cfg, needle) in [
        (
            r#"{"databases":{"db":{"server":"mysql://x"}}}"#,
            "$.databases.db.server",
        ),
        (r#"{"server":"walrus"}"#, "$.server"),
        (
            r#"{"databases":{"db":{"server":"postgres://u@h/d","change_notify":"shout"}}}"#,
            "change_notify",
        ),
        (
            r#"{"databases":{"db":{"server":"postgres://u:hunter2@h:notaport/d"}}}"#,
            "not a valid PostgreSQL URL",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(BIN)
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cfg}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{cfg}: expected {needle:?} in {stderr:?}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "never echoes a password: {stderr}"
        );
    }
}

/// Polls `check` until it holds (a hang guard of 20 s, not a speed check).
/// Logs `name` in on `node`'s public port; the `SyncGatewaySession` cookie (`name=value`).
fn session_cookie(node: &TestServer, name: &str, password: &str) -> String {
    let r = client()
        .post(format!("{}/db/_session", node.public))
        .json(&json!({"name": name, "password": password}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Who `cookie` stands for on `node` (`null` once the session is gone).
fn session_user(node: &TestServer, cookie: &str) -> Value {
    let v: Value = client()
        .get(format!("{}/db/_session", node.public))
        .header("cookie", cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["userCtx"]["name"].clone()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: never happened");
}

#[test]
fn password_changes_and_logouts_reach_the_other_node() {
    let url = pg_cluster::fresh_database();
    let a = TestServer::start_with(on_postgres(&url));
    let b = TestServer::start_with(on_postgres(&url));
    let status_on_b = |pass: &str| {
        client()
            .get(format!("{}/db/_all_docs", b.public))
            .basic_auth("ann", Some(pass))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // node B knows (and caches) the password
    assert_eq!(status_on_b("pw-ann-1"), 200);
    assert_eq!(status_on_b("pw-ann-1"), 200);
    // changed on node A: node B refuses the old one and takes the new one
    let (st, r) = put(
        &format!("{}/db/_user/ann", a.admin),
        &json!({"password": "pw-ann-2"}),
    );
    assert_eq!(st, 200, "{r}");
    eventually("old password refused on B", || {
        status_on_b("pw-ann-1") == 401
    });
    assert_eq!(status_on_b("pw-ann-2"), 200);
    // a session opened on B and ended on A is gone on B
    let cookie = session_cookie(&b, "ann", "pw-ann-2");
    let name_on_b = || session_user(&b, &cookie);
    assert_eq!(name_on_b(), "ann");
    let r = client()
        .delete(format!("{}/db/_session", a.public))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    eventually("session ended on B", || name_on_b().is_null());
}

#[test]
fn postgres_down_is_503_and_the_node_recovers_by_itself() {
    let pg = pg_cluster::Dedicated::start();
    let url = pg.url();
    let s = TestServer::start_with(on_postgres(&url));
    let db = format!("{}/db", s.admin);
    assert_eq!(put(&format!("{db}/before"), &json!({})).0, 201);
    pg.stop();
    let r = get(&format!("{db}/before"));
    assert_error(&r, 503, "service_unavailable");
    let r = put(&format!("{db}/during"), &json!({}));
    assert_error(&r, 503, "service_unavailable");
    pg.restart();
    eventually("reads again", || get(&format!("{db}/before")).0 == 200);
    assert_eq!(put(&format!("{db}/after"), &json!({})).0, 201);
    let (_, changes) = get(&format!("{db}/_changes"));
    let ids: Vec<&str> = changes["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["before", "after"]);
}

/// Node A is killed (`kill -9`) while client threads write to it (single PUTs and
/// `_bulk_docs`), and node B serves the same PostgreSQL database throughout: every write A
/// acknowledged reads back through B at the acknowledged revision, and B's own writes succeed
/// before, during and after the kill.
#[test]
fn kill_9_of_a_node_under_write_load_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let url = pg_cluster::fresh_database();
    let mut a = TestServer::start_with(on_postgres(&url));
    let b = TestServer::start_with(on_postgres(&url));
    let (db_a, db_b) = (format!("{}/db", a.admin), format!("{}/db", b.admin));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for t in 0..4 {
        let (db, acked) = (db_a.clone(), acked.clone());
        writers.push(std::thread::spawn(move || {
            let c = client();
            for i in 0.. {
                if t % 2 == 0 {
                    let id = format!("a{t}-{i}");
                    let Ok(r) = c
                        .put(format!("{db}/{id}"))
                        .json(&json!({"i": i, "pad": "x".repeat(300)}))
                        .send()
                    else {
                        return; // node A is gone
                    };
                    if r.status() != 201 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>() else { return };
                    let rev = v["rev"].as_str().unwrap().to_string();
                    acked.lock().unwrap().push((id, rev));
                } else {
                    let docs: Vec<Value> = (0..10)
                        .map(|k| json!({"_id": format!("a{t}-{i}-{k}"), "k": k}))
                        .collect();
                    let Ok(r) = c
                        .post(format!("{db}/_bulk_docs"))
                        .json(&json!({"docs": docs}))
                        .send()
                    else {
                        return;
                    };
                    if r.status() != 201 {
                        return;
                    }
                    let Ok(v) = r.json::<Value>() else { return };
                    let mut acked = acked.lock().unwrap();
                    for row in v.as_array().unwrap() {
                        let rev = row["rev"].as_str().unwrap_or_else(|| panic!("{row}"));
                        acked.push((row["id"].as_str().unwrap().into(), rev.into()));
                    }
                }
            }
        }));
    }
    // node B's writer: every write must succeed, whatever happens to node A
    let stop = Arc::new(AtomicBool::new(false));
    let b_writes = Arc::new(AtomicUsize::new(0));
    let b_writer = {
        let (db, stop, n) = (db_b.clone(), stop.clone(), b_writes.clone());
        std::thread::spawn(move || -> Vec<(String, String)> {
            let c = client();
            let mut done = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let id = format!("b-{}", done.len());
                let r = c
                    .put(format!("{db}/{id}"))
                    .json(&json!({"on": "b"}))
                    .send()
                    .expect("node B answers");
                assert_eq!(r.status(), 201, "a write to node B failed");
                let v: Value = r.json().unwrap();
                done.push((id, v["rev"].as_str().unwrap().to_string()));
                n.fetch_add(1, Ordering::SeqCst);
            }
            done
        })
    };
    // kill node A mid-load: once it has acknowledged a fair number of writes (a hang guard,
    // not a speed check)
    eventually("node A acknowledges writes", || {
        acked.lock().unwrap().len() >= 200
    });
    a.kill9();
    let acked_at_kill = acked.lock().unwrap().len();
    // node B keeps serving after the kill
    let after_kill = b_writes.load(Ordering::SeqCst);
    eventually("node B writes after the kill", || {
        b_writes.load(Ordering::SeqCst) >= after_kill + 20
    });
    stop.store(true, Ordering::SeqCst);
    let b_done = b_writer.join().expect("node B's writer");
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= acked_at_kill);
    // every acknowledged revision, from either node, reads back through node B
    for (id, rev) in acked.iter().chain(&b_done) {
        let (st, doc) = get(&format!("{db_b}/{id}"));
        assert_eq!(st, 200, "acknowledged {id} lost: {doc}");
        assert_eq!(doc["_rev"], rev.as_str(), "{id}");
    }
    // the database is consistent: changes, all_docs and doc_count agree
    let (_, all) = get(&format!("{db_b}/_all_docs"));
    let (_, ch) = get(&format!("{db_b}/_changes"));
    let (_, info) = get(&format!("{db_b}/"));
    let all = all["rows"].as_array().unwrap().len();
    assert_eq!(ch["results"].as_array().unwrap().len(), all);
    assert_eq!(info["doc_count"].as_u64().unwrap() as usize, all);
    assert!(all >= acked.len() + b_done.len());
    // and a new node starting after the kill serves it all too
    let c = TestServer::start_with(on_postgres(&url));
    let (_, info) = get(&format!("{}/db/", c.admin));
    assert_eq!(info["doc_count"].as_u64().unwrap() as usize, all);
}

/// Routes by `doc.channels`; a `type: "grant"` document gives `doc.user` the channel `doc.ch`.
const GRANTING: &str = r#"function (doc) {
  channel(doc.channels);
  if (doc.type == "grant") access(doc.user, doc.ch);
}"#;

/// Two nodes on one PostgreSQL database running `sync`, with the user `uma` (no channels).
fn two_nodes_with_sync(sync: &str) -> (TestServer, TestServer) {
    let url = pg_cluster::fresh_database();
    let sync = sync.to_string();
    let config = move |c: &mut Value| {
        on_postgres(&url)(c);
        c["databases"]["db"]["sync"] = json!(sync);
        c["databases"]["db"]["users"]["uma"] = json!({"password": "pw-uma-1"});
    };
    let a = TestServer::start_with(config.clone());
    let b = TestServer::start_with(config);
    (a, b)
}

/// A longpoll as `uma` on `node` from `since` (server timeout `wait_ms`), once it is parked
/// (a hang guard, not a speed check): its thread returns the response.
fn parked_longpoll(
    node: &TestServer,
    since: &Value,
    wait_ms: u64,
) -> std::thread::JoinHandle<Value> {
    let parked = node.metric("syncgate_changes_feeds_active{db=\"db\"}");
    let url = format!(
        "{}/db/_changes?feed=longpoll&since={}&timeout={wait_ms}",
        node.public,
        since
            .as_u64()
            .map_or_else(|| since.to_string(), |s| s.to_string())
    );
    let feed = std::thread::spawn(move || -> Value {
        client()
            .get(url)
            .basic_auth("uma", Some("pw-uma-1"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    });
    eventually("the longpoll parks", || {
        node.metric("syncgate_changes_feeds_active{db=\"db\"}") > parked
    });
    feed
}

fn ids_of(feed: &Value) -> Vec<&str> {
    feed["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{feed}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

/// SPEC §14: a grant made on node A reaches a feed open on node B. `uma` has no channels; her
/// longpoll is parked on B; a document written on A grants her the channel `secret`, which
/// already holds a document: her feed on B returns that document.
#[test]
fn a_grant_on_one_node_reaches_an_open_feed_on_the_other() {
    let (a, b) = two_nodes_with_sync(GRANTING);
    let (admin_a, public_b) = (format!("{}/db", a.admin), format!("{}/db", b.public));
    assert_eq!(
        put(&format!("{admin_a}/s1"), &json!({"channels": ["secret"]})).0,
        201
    );
    let as_uma = |url: &str| send(client().get(url).basic_auth("uma", Some("pw-uma-1")));
    let (st, before) = as_uma(&format!("{public_b}/_changes"));
    assert_eq!(st, 200, "{before}");
    assert_eq!(ids_of(&before), Vec::<&str>::new());
    assert_eq!(as_uma(&format!("{public_b}/s1")).0, 403);
    // parked on B with a generous 5 s limit: the grant must arrive within it
    let feed = parked_longpoll(&b, &before["last_seq"], 5000);
    let (st, r) = put(
        &format!("{admin_a}/g1"),
        &json!({"type": "grant", "user": "uma", "ch": "secret"}),
    );
    assert_eq!(st, 201, "{r}");
    let woke = feed.join().unwrap();
    assert_eq!(ids_of(&woke), vec!["s1"], "{woke}");
    assert_eq!(as_uma(&format!("{public_b}/s1")).0, 200);
}

/// `PUT /{db}/_config/sync` on node A takes effect on node B: B's next writes run the new
/// function (B noticed without a restart).
#[test]
fn a_sync_function_set_on_one_node_takes_effect_on_the_other() {
    let (a, b) = two_nodes_with_sync(GRANTING);
    let (admin_a, admin_b) = (format!("{}/db", a.admin), format!("{}/db", b.admin));
    // before: B routes by doc.channels
    assert_eq!(
        put(&format!("{admin_b}/before"), &json!({"channels": ["c"]})).0,
        201
    );
    let r = send(
        client()
            .put(format!("{admin_a}/_config/sync"))
            .header("content-type", "application/javascript")
            .body("function (doc) { channel(\"everything\"); }"),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    // B serves the new source and routes its writes with it (a hang guard, not a speed check)
    let mut n = 0;
    eventually("node B uses the new function", || {
        n += 1;
        let id = format!("after-{n}");
        assert_eq!(
            put(&format!("{admin_b}/{id}"), &json!({"channels": ["c"]})).0,
            201
        );
        let (_, feed) = get(&format!(
            "{admin_b}/_changes?filter=sync_gateway/bychannel&channels=everything"
        ));
        ids_of(&feed).contains(&id.as_str())
    });
    let r = client()
        .get(format!("{admin_b}/_config/sync"))
        .send()
        .unwrap();
    assert_eq!(
        r.text().unwrap(),
        "function (doc) { channel(\"everything\"); }"
    );
    // and back to the default on A: B follows again
    let r = send(
        client()
            .put(format!("{admin_a}/_config/sync"))
            .header("content-type", "application/javascript")
            .body(GRANTING),
    );
    assert_eq!(r.0, 200, "{}", r.1);
    eventually("node B uses the function set back", || {
        n += 1;
        let id = format!("again-{n}");
        assert_eq!(
            put(&format!("{admin_b}/{id}"), &json!({"channels": ["c"]})).0,
            201
        );
        let (_, feed) = get(&format!(
            "{admin_b}/_changes?filter=sync_gateway/bychannel&channels=c"
        ));
        ids_of(&feed).contains(&id.as_str())
    });
}

/// `/_ping` on the metrics port reports the database state: OK while PostgreSQL serves, 503
/// naming the database while it is stopped, OK again once it is back (no restart).
#[test]
fn ping_reports_postgres_down_and_back() {
    let pg = pg_cluster::Dedicated::start();
    let url = pg.url();
    let s = TestServer::start_with(on_postgres(&url));
    let ping = || -> (u16, String) {
        let r = client().get(format!("{}/_ping", s.metrics)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(ping(), (200, "OK".to_string()));
    pg.stop();
    let (st, body) = ping();
    assert_eq!(st, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "service_unavailable", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("database \"db\" unavailable"), "{reason}");
    assert!(!reason.contains(&url), "never echoes the URL: {reason}");
    pg.restart();
    eventually("ping OK again", || ping().0 == 200);
}

/// `sslmode=verify-full` with a CA that did not sign the server's certificate stops the
/// binary with a line naming the TLS failure (exit 2, the URL's password never echoed); with
/// the right CA it serves.
#[test]
fn postgres_tls_with_a_wrong_ca_is_a_startup_error() {
    let (cluster, ca, other_ca) = pg_cluster::Dedicated::start_tls();
    let port = cluster
        .url()
        .rsplit_once(':')
        .and_then(|(_, r)| r.split_once('/'))
        .map(|(p, _)| p.to_string())
        .unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://postgres:hunter2@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let cfg = json!({
        "interface": "127.0.0.1:0", "adminInterface": "127.0.0.1:0", "metricsInterface": "127.0.0.1:0",
        "databases": {"db": {"server": url(&other_ca)}}
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = std::process::Command::new(BIN)
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TLS") && stderr.contains("certificate") && stderr.contains("sslrootcert"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "never echoes a password: {stderr}"
    );
    // the right CA: the database is served over TLS
    let s = TestServer::start_with(|c: &mut Value| {
        c["databases"]["db"] = json!({"server": url(&ca), "pool_size": 2});
    });
    let (st, r) = put(&format!("{}/db/over-tls", s.admin), &json!({"v": 1}));
    assert_eq!(st, 201, "{r}");
}

/// Nodes starting together on a fresh PostgreSQL database both install the configured users
/// (neither fails on the other's schema or records, and the user works through both); a user
/// deleted on one node is refused by the other, and an admin revoking a user's sessions on one
/// node ends them on the other.
#[test]
fn nodes_starting_together_share_config_users_and_deletions_reach_the_other_node() {
    let url = pg_cluster::fresh_database();
    let start = |url: String| std::thread::spawn(move || TestServer::start_with(on_postgres(&url)));
    let (a, b) = (start(url.clone()), start(url.clone()));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let status = |node: &TestServer, name: &str, pass: &str| {
        client()
            .get(format!("{}/db/_all_docs", node.public))
            .basic_auth(name, Some(pass))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    for node in [&a, &b] {
        assert_eq!(status(node, "ann", "pw-ann-1"), 200);
        let (st, u) = get(&format!("{}/db/_user/ann", node.admin));
        assert_eq!(st, 200, "{u}");
    }
    // sessions of bob, opened on B, revoked by an admin on A
    let (st, _) = post(
        &format!("{}/db/_user/", a.admin),
        &json!({"name": "bob", "password": "pw-bob-1"}),
    );
    assert_eq!(st, 201);
    let cookie = session_cookie(&b, "bob", "pw-bob-1");
    let bob_on_b = || session_user(&b, &cookie);
    assert_eq!(bob_on_b(), "bob");
    let (st, r) = delete(&format!("{}/db/_user/bob/_session", a.admin));
    assert!(st == 200 || st == 204, "{st} {r}");
    eventually("bob's session ended on B", || bob_on_b().is_null());
    // ann, known and cached on B, deleted on A
    assert_eq!(status(&b, "ann", "pw-ann-1"), 200);
    let (st, r) = delete(&format!("{}/db/_user/ann", a.admin));
    assert_eq!(st, 200, "{r}");
    eventually("ann refused on B", || status(&b, "ann", "pw-ann-1") == 401);
}
