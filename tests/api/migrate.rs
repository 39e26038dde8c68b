//! `syncgate migrate`: a database on the embedded store moved to PostgreSQL, black box — the
//! server is stopped, the command copies, and a server on PostgreSQL (with an empty data
//! directory) serves the same documents, users, sessions and sync function; a client's
//! checkpoint from before the move does not hide any document. Also: a PostgreSQL schema newer
//! than this build refuses to start (exit 2).

use std::process::Command;

use serde_json::json;

use crate::helpers::*;
use crate::pg_cluster;

const SYNC: &str = "function (doc, oldDoc) { channel(doc.ch); }";

fn migrate(s: &TestServer, to: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["migrate", "--db", "db", "--to", to])
        .arg(s.dir.join("config.json"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn cookie_of(resp: &reqwest::blocking::Response) -> String {
    let c = resp.headers()["set-cookie"].to_str().unwrap();
    c.split(';').next().unwrap().to_string()
}

#[test]
fn an_embedded_database_moves_to_postgres() {
    let mut s = TestServer::start_with(|c| {
        c.as_object_mut().unwrap().remove("server"); // the source is the embedded store
        c["databases"]["db"]["users"] =
            json!({"cfg": {"password": "pw-cfg-1", "admin_channels": ["*"]}});
    });
    let db = format!("{}/db", s.admin);
    let c = client();
    // a user made at run time, a session, the sync function set through the admin API
    let (st, _) = put(
        &format!("{db}/_user/ann"),
        &json!({"password": "pw-ann-1", "admin_channels": ["a"]}),
    );
    assert_eq!(st, 201);
    let st = c
        .put(format!("{db}/_config/sync"))
        .header("content-type", "application/javascript")
        .body(SYNC)
        .send()
        .unwrap()
        .status();
    assert_eq!(st, 200);
    let login = c
        .post(format!("{}/db/_session", s.public))
        .json(&json!({"name": "ann", "password": "pw-ann-1"}))
        .send()
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = cookie_of(&login);
    // documents: numbers kept as sent, a conflict, an attachment, a tombstone
    let body = r#"{"ch":"a","f":90.28571428571429,"big":12345678901234567890123}"#;
    let r = c
        .put(format!("{db}/d1"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let d1_rev = r.json::<serde_json::Value>().unwrap()["rev"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, r) = post(
        &format!("{db}/_bulk_docs"),
        &json!({"new_edits": false, "docs": [{"_id": "d1", "_rev": "1-ffff", "ch": "a", "v": "branch"}]}),
    );
    assert_eq!(st, 201, "{r}");
    let (st, r) = put(
        &format!("{db}/d2"),
        &json!({"ch": "a", "_attachments": {"t.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}}),
    );
    assert_eq!(st, 201, "{r}");
    let (_, r) = put(&format!("{db}/gone"), &json!({"ch": "a"}));
    let (st, _) = delete(&format!("{db}/gone?rev={}", r["rev"].as_str().unwrap()));
    assert_eq!(st, 200);
    for i in 0..150 {
        let (st, _) = put(&format!("{db}/n{i:03}"), &json!({"ch": "b", "i": i}));
        assert_eq!(st, 201);
    }
    let (_, before) = get(&format!("{db}/_changes"));
    let checkpoint = before["last_seq"].as_u64().unwrap();
    let (_, d1_before) = get(&format!("{db}/d1?conflicts=true"));
    assert_eq!(s.terminate(), Some(0));

    let url = pg_cluster::fresh_database();
    let (code, out) = migrate(&s, "$SYNCGATE_MIGRATE_TARGET_UNSET");
    assert_eq!(code, 2, "{out}");
    let (code, out) = migrate(&s, &url);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "153 documents (154 leaf revisions), 2 users, 0 roles, 1 sessions, 1 settings"
        ),
        "{out}"
    );
    assert!(!out.contains("pw-"), "{out}");
    // a second copy into the same database is refused
    let (code, out) = migrate(&s, &url);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not empty"), "{out}");

    // the same config on PostgreSQL, with an empty data directory
    let mut cfg = s.config.clone();
    cfg["databases"]["db"]["server"] = json!(url);
    cfg["data_dir"] = json!(s.dir.join("data-after"));
    let dir = tempfile::tempdir().unwrap();
    let p = TestServer::spawn(dir.path(), cfg);
    let db = format!("{}/db", p.admin);
    let text = c
        .get(format!("{db}/d1?rev={d1_rev}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#""f":90.28571428571429,"big":12345678901234567890123"#),
        "{text}"
    );
    let (_, d1) = get(&format!("{db}/d1?conflicts=true"));
    assert_eq!(d1, d1_before);
    assert_eq!(d1["_conflicts"], json!([d1_rev]), "{d1}");
    let att = c
        .get(format!("{db}/d2/t.txt"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(att, "hello");
    let (st, _) = get(&format!("{db}/gone"));
    assert_eq!(st, 404);
    let (_, info) = get(&format!("{db}/"));
    assert_eq!(info["doc_count"], json!(152), "{info}");
    // every document comes after the old checkpoint
    let (_, after) = get(&format!("{db}/_changes?since={checkpoint}"));
    let ids: Vec<&str> = after["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 153, "{ids:?}");
    assert_eq!(&ids[..3], ["d1", "d2", "gone"]);
    // the sync function, the users (their passwords) and the session came along
    let src = c
        .get(format!("{db}/_config/sync"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(src, SYNC);
    let (st, _) = send(
        c.get(format!("{}/db/d1", p.public))
            .basic_auth("ann", Some("pw-ann-1")),
    );
    assert_eq!(st, 200);
    let (st, _) = send(
        c.get(format!("{}/db/n000", p.public))
            .basic_auth("ann", Some("pw-ann-1")),
    );
    assert_eq!(st, 403, "ann has channel a only");
    let (st, _) = send(
        c.get(format!("{}/db/d1", p.public))
            .basic_auth("cfg", Some("pw-cfg-1")),
    );
    assert_eq!(st, 200);
    let (st, who) = send(
        c.get(format!("{}/db/_session", p.public))
            .header("cookie", &cookie),
    );
    assert_eq!((st, &who["userCtx"]["name"]), (200, &json!("ann")), "{who}");
}

#[test]
fn a_newer_postgres_schema_refuses_to_start() {
    let url = pg_cluster::fresh_database();
    let mut s = TestServer::start_with(|c| c["databases"]["db"]["server"] = json!(url));
    // stopped at once: the signal handlers are in place before the listeners are announced
    assert_eq!(s.terminate(), Some(0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute("UPDATE syncgate_schema_version SET version = 99")
            .await
            .unwrap();
    });
    let out = Command::new(BIN)
        .arg(s.dir.join("config.json"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("version 99, newer than this syncgate understands"),
        "{err}"
    );
}
