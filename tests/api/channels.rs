//! Channel routing, the channel index and removal notices.

use serde_json::{json, Value};

use crate::helpers::*;

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bychannel_feed_reads_only_its_channel_and_reports_removals() {
    let s = TestServer::start();
    let db = format!("{}/db", s.admin);
    for batch in 0..10 {
        let docs: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                json!({"_id": format!("d{n:05}"), "channels": [format!("ch{}", n % 100)], "n": n})
            })
            .collect();
        let (st, _) = post(&format!("{db}/_bulk_docs"), &json!({"docs": docs}));
        assert_eq!(st, 201);
    }
    let before = s.metric("syncgate_docs_read_total");
    let (st, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch7"
    ));
    assert_eq!(st, 200);
    assert_eq!(ids(&ch).len(), 100);
    assert_eq!(ch["last_seq"], 10_000);
    let read = s.metric("syncgate_docs_read_total") - before;
    assert!(
        read <= 150.0,
        "a one-channel feed read {read} entries out of 10,000"
    );
    // two channels, comma-separated
    let (_, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch7,ch8&limit=50"
    ));
    assert_eq!(ids(&ch).len(), 50);
    // move d00007 from ch7 to ch8: ch7 readers get one removal row
    let (_, doc) = get(&format!("{db}/d00007"));
    let (st, _) = put(
        &format!("{db}/d00007"),
        &json!({"_rev": doc["_rev"], "channels": ["ch8"], "n": 7}),
    );
    assert_eq!(st, 201);
    let (_, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch7&since=10000"
    ));
    let rows = ch["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{ch}");
    assert_eq!(rows[0]["id"], "d00007");
    assert_eq!(rows[0]["removed"], json!(["ch7"]));
    // ch8 readers see it as a normal change
    let (_, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch8&since=10000"
    ));
    assert!(ch["results"][0].get("removed").is_none(), "{ch}");
    // active_only hides removals; the full feed lists the doc once
    let (_, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch7&since=10000&active_only=true"
    ));
    assert_eq!(ids(&ch).len(), 0);
    let (_, all) = get(&format!("{db}/_changes?since=9990"));
    assert_eq!(ids(&all).iter().filter(|i| *i == "d00007").count(), 1);
    // deleting a doc keeps it in its channel so its readers receive the tombstone
    let (_, doc) = get(&format!("{db}/d00017"));
    let (st, _) = delete(&format!(
        "{db}/d00017?rev={}",
        doc["_rev"].as_str().unwrap()
    ));
    assert_eq!(st, 200);
    let (_, ch) = get(&format!(
        "{db}/_changes?filter=sync_gateway/bychannel&channels=ch17&since=10001"
    ));
    assert_eq!(ch["results"][0]["id"], "d00017");
    assert_eq!(ch["results"][0]["deleted"], true);
    assert!(ch["results"][0].get("removed").is_none());
    assert_error(
        &get(&format!("{db}/_changes?filter=sync_gateway/bychannel")),
        400,
        "bad_request",
    );
}

/// A tombstone a user loses access to comes as a removal row that still says `deleted`.
#[test]
fn removal_row_of_a_tombstone_says_deleted() {
    let s = TestServer::start();
    let admin = format!("{}/db", s.admin);
    let r = client()
        .put(format!("{admin}/_user/u"))
        .json(&json!({"password": "pw-u-12345", "admin_channels": ["t"]}))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let r = client()
        .put(format!("{admin}/gone"))
        .json(&json!({"channels": ["t"]}))
        .send()
        .unwrap();
    let rev = r.json::<Value>().unwrap()["rev"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client()
        .delete(format!("{admin}/gone?rev={rev}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let feed = |since: &str| -> Value {
        client()
            .get(format!("{}/db/_changes?since={since}", s.public))
            .basic_auth("u", Some("pw-u-12345"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let before = feed("0");
    let row = before["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "gone")
        .cloned()
        .unwrap();
    assert_eq!(row["deleted"], true, "{before}");
    let r = client()
        .put(format!("{admin}/_user/u"))
        .json(&json!({"admin_channels": []}))
        .send()
        .unwrap();
    assert!(r.status().is_success());
    let after = feed(&before["last_seq"].to_string());
    let row = after["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "gone")
        .cloned();
    let row = row.unwrap_or_else(|| panic!("no removal row: {after}"));
    assert_eq!(row["removed"], json!(["t"]), "{after}");
    assert_eq!(row["deleted"], true, "{after}");
}
