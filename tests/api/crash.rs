//! Durability: every acknowledged write survives `kill -9`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut s = TestServer::start();
    let db = format!("{}/db", s.admin);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut threads = Vec::new();
    for t in 0..4 {
        let db = db.clone();
        let acked = acked.clone();
        threads.push(std::thread::spawn(move || {
            let c = client();
            for i in 0..40 {
                if t % 2 == 0 {
                    let id = format!("t{t}-{i}");
                    if let Ok(r) = c
                        .put(format!("{db}/{id}"))
                        .json(&json!({"i": i, "pad": "x".repeat(500)}))
                        .send()
                    {
                        if r.status() == 201 {
                            let v: Value = r.json().unwrap();
                            acked
                                .lock()
                                .unwrap()
                                .push((id, v["rev"].as_str().unwrap().to_string()));
                        }
                    }
                } else {
                    let docs: Vec<Value> = (0..10)
                        .map(|k| json!({"_id": format!("t{t}-{i}-{k}"), "k": k}))
                        .collect();
                    if let Ok(r) = c
                        .post(format!("{db}/_bulk_docs"))
                        .json(&json!({"docs": docs}))
                        .send()
                    {
                        if r.status() == 201 {
                            let v: Value = r.json().unwrap();
                            for row in v.as_array().unwrap() {
                                acked.lock().unwrap().push((
                                    row["id"].as_str().unwrap().into(),
                                    row["rev"].as_str().unwrap().into(),
                                ));
                            }
                        }
                    }
                }
            }
        }));
    }
    // kill while writers are running
    std::thread::sleep(std::time::Duration::from_millis(400));
    s.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some writes were acknowledged before the kill"
    );
    let s = s.restart();
    let db = format!("{}/db", s.admin);
    for (id, rev) in &acked {
        let (st, doc) = get(&format!("{db}/{id}"));
        assert_eq!(st, 200, "acknowledged {id} lost");
        assert_eq!(doc["_rev"], rev.as_str());
    }
    // the store is consistent: changes and doc count agree with all_docs
    let (_, all) = get(&format!("{db}/_all_docs"));
    let (_, ch) = get(&format!("{db}/_changes"));
    let (_, info) = get(&format!("{db}/"));
    assert_eq!(
        all["rows"].as_array().unwrap().len(),
        ch["results"].as_array().unwrap().len()
    );
    assert_eq!(
        info["doc_count"].as_u64().unwrap() as usize,
        all["rows"].as_array().unwrap().len()
    );
}

/// 20 cycles of concurrent writers → kill -9 at a pseudo-random moment → restart → every
/// acknowledged write present and whole.
#[test]
fn crash_loop_20_cycles() {
    let mut s = TestServer::start();
    let mut all_acked: Vec<(String, String, u64)> = Vec::new();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for cycle in 0..20u64 {
        let db = format!("{}/db", s.admin);
        let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0..3u64 {
            let (db, acked, stop) = (db.clone(), acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let c = client();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let n = cycle * 1_000_000 + t * 10_000 + i;
                    if t == 0 {
                        let docs: Vec<Value> =
                            (0..20).map(|k| json!({"_id": format!("c{cycle}-b{i}-{k}"), "n": n * 100 + k, "check": format!("{}", (n * 100 + k) * 7)})).collect();
                        let Ok(r) = c.post(format!("{db}/_bulk_docs")).json(&json!({"docs": docs})).send() else { break };
                        if r.status() != 201 {
                            break;
                        }
                        let Ok(v) = r.json::<Value>() else { break };
                        let mut a = acked.lock().unwrap();
                        for (k, row) in v.as_array().unwrap().iter().enumerate() {
                            a.push((row["id"].as_str().unwrap().into(), row["rev"].as_str().unwrap().into(), n * 100 + k as u64));
                        }
                    } else {
                        let id = format!("c{cycle}-s{t}-{i}");
                        let Ok(r) = c.put(format!("{db}/{id}")).json(&json!({"n": n, "check": format!("{}", n * 7)})).send() else { break };
                        if r.status() != 201 {
                            break;
                        }
                        let Ok(v) = r.json::<Value>() else { break };
                        acked.lock().unwrap().push((id, v["rev"].as_str().unwrap().into(), n));
                    }
                }
            }));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(std::time::Duration::from_millis(50 + (seed >> 33) % 250));
        s.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
        all_acked.extend(acked.lock().unwrap().drain(..));
        s = s.restart();
        let db = format!("{}/db", s.admin);
        // this cycle's writes, and a sample of earlier ones, are present and whole
        let check: Vec<&(String, String, u64)> = all_acked
            .iter()
            .rev()
            .take(400)
            .chain(all_acked.iter().step_by(97))
            .collect();
        for (id, rev, n) in check {
            let (st, doc) = get(&format!("{db}/{id}"));
            assert_eq!(st, 200, "cycle {cycle}: acknowledged {id} lost");
            assert_eq!(doc["_rev"], rev.as_str(), "cycle {cycle}: {id}");
            assert_eq!(doc["n"], *n, "cycle {cycle}: {id} body");
            assert_eq!(
                doc["check"],
                format!("{}", n * 7),
                "cycle {cycle}: {id} half-written"
            );
        }
    }
    assert!(
        all_acked.len() > 100,
        "writers made progress: {}",
        all_acked.len()
    );
    let db = format!("{}/db", s.admin);
    let (_, info) = get(&format!("{db}/"));
    let (_, ch) = get(&format!("{db}/_changes"));
    assert_eq!(
        info["doc_count"].as_u64().unwrap() as usize,
        ch["results"].as_array().unwrap().len(),
        "counters consistent"
    );
    let ids: std::collections::HashSet<&str> = ch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for (id, _, _) in &all_acked {
        assert!(
            ids.contains(id.as_str()),
            "{id} missing from the changes feed"
        );
    }
}
