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
                    if let Ok(r) = c.put(format!("{db}/{id}")).json(&json!({"i": i, "pad": "x".repeat(500)})).send() {
                        if r.status() == 201 {
                            let v: Value = r.json().unwrap();
                            acked.lock().unwrap().push((id, v["rev"].as_str().unwrap().to_string()));
                        }
                    }
                } else {
                    let docs: Vec<Value> = (0..10).map(|k| json!({"_id": format!("t{t}-{i}-{k}"), "k": k})).collect();
                    if let Ok(r) = c.post(format!("{db}/_bulk_docs")).json(&json!({"docs": docs})).send() {
                        if r.status() == 201 {
                            let v: Value = r.json().unwrap();
                            for row in v.as_array().unwrap() {
                                acked.lock().unwrap().push((row["id"].as_str().unwrap().into(), row["rev"].as_str().unwrap().into()));
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
    assert!(!acked.is_empty(), "some writes were acknowledged before the kill");
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
    assert_eq!(all["rows"].as_array().unwrap().len(), ch["results"].as_array().unwrap().len());
    assert_eq!(info["doc_count"].as_u64().unwrap() as usize, all["rows"].as_array().unwrap().len());
}
