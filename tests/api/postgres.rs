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
    let r = client()
        .post(format!("{}/db/_session", a.public))
        .json(&json!({"name": "ann", "password": "pw-ann-1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let on_b: Value = client()
        .get(format!("{}/db/_session", b.public))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(on_b["userCtx"]["name"], "ann", "{on_b}");
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
    let r = client()
        .post(format!("{}/db/_session", b.public))
        .json(&json!({"name": "ann", "password": "pw-ann-2"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let name_on_b = || -> Value {
        let v: Value = client()
            .get(format!("{}/db/_session", b.public))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["userCtx"]["name"].clone()
    };
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
