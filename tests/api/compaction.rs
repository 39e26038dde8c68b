//! Automatic compaction (`auto_compact`): old revision bodies disappear without anyone calling
//! `_compact`, on the growth trigger and on the idle trigger; config checks of the new keys.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Polls until `GET {db}/{id}?rev={rev}` is 404 (the body was compacted away); the deadline
/// only bounds a failing run.
fn wait_until_compacted(s: &TestServer, db: &str, id: &str, rev: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, body) = get(&format!("{db}/{id}?rev={rev}"));
        if st == 404 {
            assert_eq!(body["error"], "not_found", "{body}");
            return;
        }
        assert_eq!(st, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "the old revision {rev} of {id} was never compacted; log:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The log once it has an `auto-compacted` line (written just after the compaction).
fn compaction_log(s: &TestServer) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = s.log_text();
        if log.contains("auto-compacted") || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes 100 documents of ~2 KB, then updates each of them `rounds` times; returns the
/// first revision of `d000`.
fn churn(db: &str, rounds: usize) -> String {
    let pad = "x".repeat(2000);
    let docs: Vec<Value> = (0..100)
        .map(|i| json!({"_id": format!("d{i:03}"), "n": 0, "pad": pad}))
        .collect();
    let (st, res) = post(&format!("{db}/_bulk_docs"), &json!({ "docs": docs }));
    assert_eq!(st, 201, "{res}");
    let mut revs: Vec<String> = res
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rev"].as_str().unwrap().to_string())
        .collect();
    let first = revs[0].clone();
    for n in 1..=rounds {
        let docs: Vec<Value> = (0..100)
            .map(|i| json!({"_id": format!("d{i:03}"), "_rev": revs[i], "n": n, "pad": pad}))
            .collect();
        let (st, res) = post(&format!("{db}/_bulk_docs"), &json!({ "docs": docs }));
        assert_eq!(st, 201, "{res}");
        revs = res
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rev"].as_str().unwrap().to_string())
            .collect();
    }
    first
}

#[test]
fn growth_compacts_by_itself() {
    // the other triggers off: only the store's growth can start it. The size is the embedded
    // store's (on PostgreSQL the store has no size here: that trigger does not apply there)
    let s = TestServer::start_with(|c| {
        c.as_object_mut().unwrap().remove("server");
        c["auto_compact"] = json!({"growth_mb": 1, "growth_percent": 0, "updates_percent": 0,
            "idle_secs": 0, "check_secs": 1});
    });
    let db = format!("{}/db", s.admin);
    let first = churn(&db, 10);
    wait_until_compacted(&s, &db, "d000", &first);
    let log = compaction_log(&s);
    assert!(
        log.contains("auto-compacted db=db trigger=\"growth\""),
        "{log}"
    );
    // the current revisions are untouched
    let (st, doc) = get(&format!("{db}/d000"));
    assert_eq!((st, doc["n"].clone()), (200, json!(10)));
}

#[test]
fn updates_compact_by_themselves() {
    // 100 documents and 1,000 updates: the default 100 % and the 1,000 floor; the
    // other triggers out of reach
    let s = TestServer::start_with(|c| {
        c["auto_compact"] = json!({"growth_mb": 1_000_000, "idle_secs": 0, "check_secs": 1});
    });
    let db = format!("{}/db", s.admin);
    let first = churn(&db, 10);
    wait_until_compacted(&s, &db, "d000", &first);
    let log = compaction_log(&s);
    assert!(
        log.contains("auto-compacted db=db trigger=\"updates\""),
        "{log}"
    );
    let (st, doc) = get(&format!("{db}/d099"));
    assert_eq!((st, doc["n"].clone()), (200, json!(10)));
}

#[test]
fn an_idle_database_is_compacted_by_itself() {
    // the other triggers out of reach: only idleness can start it
    let s = TestServer::start_with(|c| {
        c["auto_compact"] = json!({"growth_mb": 1_000_000, "updates_percent": 0,
            "idle_secs": 1, "check_secs": 1});
    });
    let db = format!("{}/db", s.admin);
    let (st, r1) = put(&format!("{db}/doc"), &json!({"v": 1}));
    assert_eq!(st, 201);
    let rev1 = r1["rev"].as_str().unwrap().to_string();
    let (st, _) = put(&format!("{db}/doc?rev={rev1}"), &json!({"v": 2}));
    assert_eq!(st, 201);
    wait_until_compacted(&s, &db, "doc", &rev1);
    let log = compaction_log(&s);
    assert!(
        log.contains("auto-compacted db=db trigger=\"idle\""),
        "{log}"
    );
    let (st, doc) = get(&format!("{db}/doc"));
    assert_eq!((st, doc["v"].clone()), (200, json!(2)));
}

#[test]
fn footprint_keys_are_checked() {
    for (cfg, needle) in [
        (r#"{"cache_mb":0}"#, "$.cache_mb: must be between 1"),
        (
            r#"{"auto_compact":{"check_secs":0}}"#,
            "$.auto_compact.check_secs: must be between 1",
        ),
        (
            r#"{"auto_compact":{"idle_sec":5}}"#,
            "did you mean \"idle_secs\"",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, cfg).unwrap();
        let out = Command::new(BIN)
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cfg}: {err}");
        assert!(err.contains(needle), "{cfg}: {err}");
    }
}
