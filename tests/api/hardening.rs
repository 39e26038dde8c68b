//! Hostile input, limits, TLS, metrics, graceful shutdown, many connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Sends raw bytes and returns (status, body text). Status 0 when the server closed silently.
fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let host = addr.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// (name, path, headers, body, accepted statuses)
type PutCase<'a> = (
    &'a str,
    String,
    &'a [(&'a str, &'a str)],
    Vec<u8>,
    &'a [u16],
);
/// (name, method, path, body, accepted statuses)
type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, &'a [u16]);

const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

fn nested(depth: usize, open: &str, close: &str) -> Vec<u8> {
    let mut v = open.repeat(depth).into_bytes();
    v.extend_from_slice(close.repeat(depth).as_bytes());
    v
}

#[test]
fn hostile_input_corpus() {
    let s = TestServer::start_with(|c| c["max_request_body_bytes"] = json!(1_048_576));
    let a = s.admin.clone();
    put(&format!("{a}/db/exists"), &json!({"v": 1}));
    let deep_obj = {
        let mut v = b"{\"d\":".repeat(10_000);
        v.extend_from_slice(b"1");
        v.extend_from_slice(&b"}".repeat(10_000));
        v
    };
    let big = vec![b'a'; 2_000_000];
    let mut big_json = b"{\"x\":\"".to_vec();
    big_json.extend_from_slice(&big);
    big_json.extend_from_slice(b"\"}");
    let long_id = "x".repeat(1100);
    let long_id_path = format!("/db/{long_id}");
    let cases: Vec<PutCase> = vec![
        (
            "truncated JSON",
            "/db/t1".into(),
            JSON,
            b"{\"a\":".to_vec(),
            &[400],
        ),
        (
            "invalid JSON",
            "/db/t2".into(),
            JSON,
            b"{a:1}".to_vec(),
            &[400],
        ),
        (
            "array nested 10,000 deep",
            "/db/t3".into(),
            JSON,
            nested(10_000, "[", "]"),
            &[400],
        ),
        (
            "object nested 10,000 deep",
            "/db/t4".into(),
            JSON,
            deep_obj,
            &[400],
        ),
        (
            "nested 65 deep",
            "/db/t5".into(),
            JSON,
            {
                let mut v = b"{\"a\":".to_vec();
                v.extend(nested(65, "[", "]"));
                v.push(b'}');
                v
            },
            &[400],
        ),
        (
            "huge float",
            "/db/t6".into(),
            JSON,
            b"{\"n\":1e999999}".to_vec(),
            &[400],
        ),
        (
            "huge integer",
            "/db/t7".into(),
            JSON,
            b"{\"n\":123456789012345678901234567890}".to_vec(),
            &[201],
        ),
        (
            "duplicate keys",
            "/db/t8".into(),
            JSON,
            b"{\"a\":1,\"a\":2}".to_vec(),
            &[201],
        ),
        (
            "invalid UTF-8 body",
            "/db/t9".into(),
            JSON,
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            &[400],
        ),
        (
            "body over the limit",
            "/db/t10".into(),
            JSON,
            big_json,
            &[413],
        ),
        (
            "JSON array as a doc",
            "/db/t11".into(),
            JSON,
            b"[1]".to_vec(),
            &[400],
        ),
        (
            "JSON string as a doc",
            "/db/t12".into(),
            JSON,
            b"\"x\"".to_vec(),
            &[400],
        ),
        ("empty body", "/db/t13".into(), JSON, Vec::new(), &[400]),
        (
            "reserved doc id",
            "/db/_foo".into(),
            JSON,
            b"{}".to_vec(),
            &[404, 400],
        ),
        (
            "doc id over 1024 bytes",
            long_id_path,
            JSON,
            b"{}".to_vec(),
            &[400],
        ),
        (
            "invalid rev in query",
            "/db/t14?rev=zz".into(),
            JSON,
            b"{}".to_vec(),
            &[400],
        ),
        (
            "rev with a space",
            "/db/exists?rev=1-a+b".into(),
            JSON,
            b"{}".to_vec(),
            &[400],
        ),
        (
            "_revisions start < ids",
            "/db/t15?new_edits=false".into(),
            JSON,
            br#"{"_rev":"1-a","_revisions":{"start":1,"ids":["a","b"]}}"#.to_vec(),
            &[400],
        ),
        (
            "_revisions with a number id",
            "/db/t17?new_edits=false".into(),
            JSON,
            br#"{"_rev":"1-a","_revisions":{"start":1,"ids":[5]}}"#.to_vec(),
            &[400],
        ),
        (
            "new_edits=false without _rev",
            "/db/t18?new_edits=false".into(),
            JSON,
            br#"{"a":1}"#.to_vec(),
            &[400],
        ),
        (
            "attachment with bad base64",
            "/db/t20".into(),
            JSON,
            br#"{"_attachments":{"a":{"data":"***"}}}"#.to_vec(),
            &[400],
        ),
        (
            "attachment name starting with _",
            "/db/t21".into(),
            JSON,
            br#"{"_attachments":{"_a":{"data":"aGk="}}}"#.to_vec(),
            &[400],
        ),
        (
            "_attachments as an array",
            "/db/t22".into(),
            JSON,
            br#"{"_attachments":[1]}"#.to_vec(),
            &[400],
        ),
        (
            "stub without data anywhere",
            "/db/t23".into(),
            JSON,
            br#"{"_attachments":{"a":{"stub":true,"digest":"md5-nope"}}}"#.to_vec(),
            &[412, 400],
        ),
        (
            "_deleted not a boolean",
            "/db/t24".into(),
            JSON,
            br#"{"_deleted":"yes"}"#.to_vec(),
            &[400],
        ),
        (
            "_id not matching the path",
            "/db/t25".into(),
            JSON,
            br#"{"_id":"other"}"#.to_vec(),
            &[400],
        ),
        (
            "unknown special member",
            "/db/t26".into(),
            JSON,
            br#"{"_sync":{}}"#.to_vec(),
            &[400],
        ),
        (
            "wrong content type",
            "/db/t27".into(),
            &[("Content-Type", "text/html")],
            b"{}".to_vec(),
            &[415],
        ),
        (
            "form content type",
            "/db/t28".into(),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"a=1".to_vec(),
            &[415],
        ),
    ];
    let mut kinds = 0;
    for (name, path, headers, body, expect) in &cases {
        let (st, text) = raw(&a, &request("PUT", path, headers, body));
        assert!(expect.contains(&st), "{name}: status {st}, body {text}");
        if st >= 400 {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{name}: non-JSON error body {text:?}"));
            assert!(
                v["error"].is_string() && v["reason"].is_string(),
                "{name}: {v}"
            );
        }
        assert_eq!(
            get(&format!("{a}/_ping")).0,
            200,
            "server alive after {name}"
        );
        kinds += 1;
    }
    // POST/GET cases
    let more: Vec<Case> = vec![
        (
            "_bulk_docs docs not an array",
            "POST",
            "/db/_bulk_docs",
            br#"{"docs":{}}"#.to_vec(),
            &[400],
        ),
        (
            "_bulk_docs entry not an object",
            "POST",
            "/db/_bulk_docs",
            br#"{"docs":[1]}"#.to_vec(),
            &[400],
        ),
        (
            "_bulk_docs new_edits not bool",
            "POST",
            "/db/_bulk_docs",
            br#"{"docs":[],"new_edits":"no"}"#.to_vec(),
            &[400],
        ),
        (
            "_bulk_docs body an array",
            "POST",
            "/db/_bulk_docs",
            b"[]".to_vec(),
            &[400],
        ),
        (
            "_revs_diff not an object",
            "POST",
            "/db/_revs_diff",
            b"[1]".to_vec(),
            &[400],
        ),
        (
            "_revs_diff value not an array",
            "POST",
            "/db/_revs_diff",
            br#"{"d":"1-a"}"#.to_vec(),
            &[400],
        ),
        (
            "_revs_diff bad revision",
            "POST",
            "/db/_revs_diff",
            br#"{"d":["nope"]}"#.to_vec(),
            &[400],
        ),
        (
            "_bulk_get without docs",
            "POST",
            "/db/_bulk_get",
            br#"{}"#.to_vec(),
            &[400],
        ),
        (
            "_all_docs keys not an array",
            "POST",
            "/db/_all_docs",
            br#"{"keys":"a"}"#.to_vec(),
            &[400],
        ),
        (
            "_changes bad since",
            "GET",
            "/db/_changes?since=-5",
            Vec::new(),
            &[400],
        ),
        (
            "_changes bad limit",
            "GET",
            "/db/_changes?limit=abc",
            Vec::new(),
            &[400],
        ),
        (
            "_changes bad heartbeat",
            "GET",
            "/db/_changes?feed=longpoll&heartbeat=soon",
            Vec::new(),
            &[400],
        ),
        (
            "_changes bad feed",
            "GET",
            "/db/_changes?feed=websocket2",
            Vec::new(),
            &[400],
        ),
        (
            "_changes POST body not an object",
            "POST",
            "/db/_changes",
            b"[]".to_vec(),
            &[400],
        ),
        (
            "bad boolean query",
            "GET",
            "/db/exists?revs=maybe",
            Vec::new(),
            &[400],
        ),
        (
            "bad open_revs",
            "GET",
            "/db/exists?open_revs=%5B",
            Vec::new(),
            &[400],
        ),
        (
            "rev and open_revs together",
            "GET",
            "/db/exists?rev=1-a&open_revs=all",
            Vec::new(),
            &[400],
        ),
        (
            "invalid percent-encoding",
            "GET",
            "/db/%FF%FE",
            Vec::new(),
            &[400],
        ),
        (
            "attachment path traversal",
            "GET",
            "/db/exists/..%2F..%2F..%2Fetc%2Fpasswd",
            Vec::new(),
            &[404],
        ),
        (
            "doc path traversal",
            "GET",
            "/db/..%2F..%2Fetc%2Fpasswd",
            Vec::new(),
            &[404],
        ),
        (
            "unknown method",
            "PATCH",
            "/db/exists",
            b"{}".to_vec(),
            &[405],
        ),
        (
            "_local with an array body",
            "PUT",
            "/db/_local/x",
            b"[]".to_vec(),
            &[400],
        ),
        (
            "unknown special route",
            "GET",
            "/db/_nothing_here",
            Vec::new(),
            &[404],
        ),
        (
            "_all_docs bad skip",
            "GET",
            "/db/_all_docs?skip=-1",
            Vec::new(),
            &[400],
        ),
    ];
    for (name, method, path, body, expect) in &more {
        let (st, text) = raw(&a, &request(method, path, JSON, body));
        assert!(expect.contains(&st), "{name}: status {st}, body {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{name}: non-JSON error body {text:?}"));
        assert!(
            v["error"].is_string() && v["reason"].is_string(),
            "{name}: {v}"
        );
        assert_eq!(
            get(&format!("{a}/_ping")).0,
            200,
            "server alive after {name}"
        );
        kinds += 1;
    }
    // connection-level abuse: answered by the HTTP layer (bodies may be empty)
    let huge_header = format!(
        "GET /db/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert_eq!(raw(&a, huge_header.as_bytes()).0, 431, "oversized header");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let st = raw(
        &a,
        format!("GET /db/ HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .0;
    assert!(st == 431 || st == 400, "too many headers: {st}");
    assert_eq!(raw(&a, b"GARBAGE\r\n\r\n").0, 400, "garbage request line");
    assert_eq!(
        raw(
            &a,
            b"PUT /db/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
        )
        .0,
        400,
        "bad content-length"
    );
    // a chunked body over the limit is refused without buffering it all
    let mut chunked = b"PUT /db/chunky HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend_from_slice(&vec![b' '; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(&a, &chunked).0, 413, "chunked body over the limit");
    kinds += 5;
    assert!(kinds >= 40, "corpus has {kinds} kinds");
    // nothing half-written: only the documents that were correct successes exist
    let (_, all) = get(&format!("{a}/db/_all_docs"));
    let ids: Vec<&str> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["exists", "t7", "t8"], "{all}");
    assert!(!s.log_text().contains("panicked"), "no panic in the log");
}

#[test]
fn slow_clients_and_many_connections() {
    let s = TestServer::start();
    let host = s.admin.trim_start_matches("http://").to_string();
    // slow-loris: connections that never finish their headers do not block others
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(&host).unwrap();
        c.write_all(b"GET /db/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        slow.push(c);
    }
    assert_eq!(get(&format!("{}/db/", s.admin)).0, 200);
    // 1,000 concurrent connections each get an answer
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let mut c = TcpStream::connect(&host).unwrap();
        c.write_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        conns.push(c);
    }
    let mut ok = 0;
    for mut c in conns {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    drop(slow);
    assert_eq!(get(&format!("{}/_ping", s.admin)).0, 200);
}

#[test]
fn metrics_endpoint() {
    let s = TestServer::start();
    put(&format!("{}/db/m1", s.admin), &json!({}));
    get(&format!("{}/db/m1", s.admin));
    get(&format!("{}/db/nope", s.admin));
    let text = client()
        .get(format!("{}/metrics", s.metrics))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "syncgate_changes_feeds_active{db=\"db\"} 0",
        "syncgate_docs_written_total{db=\"db\"} 1",
        "syncgate_docs_read_total{db=\"db\"}",
        "syncgate_store_size_bytes",
        "syncgate_http_requests_total{",
        "syncgate_http_request_duration_seconds_bucket{",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(
        text.contains(r#"route="doc",status="404""#) || text.contains(r#"status="404""#),
        "{text}"
    );
    assert!(!text.contains("m1"), "doc ids never become labels");
    let r = client().get(format!("{}/_ping", s.metrics)).send().unwrap();
    assert_eq!(r.text().unwrap(), "OK");
    // refused authentications are counted by reason
    get(&format!("{}/db/", s.public));
    get(&format!("{}/db/", s.public));
    send(
        client()
            .get(format!("{}/db/", s.public))
            .basic_auth("nobody", Some("nope")),
    );
    send(
        client()
            .get(format!("{}/db/", s.public))
            .header("cookie", "SyncGatewaySession=0000"),
    );
    assert_eq!(
        s.metric(r#"syncgate_auth_failures_total{db="db",reason="no_credentials"}"#),
        2.0
    );
    assert_eq!(
        s.metric(r#"syncgate_auth_failures_total{db="db",reason="password"}"#),
        1.0
    );
    assert_eq!(
        s.metric(r#"syncgate_auth_failures_total{db="db",reason="session"}"#),
        1.0
    );
}

#[test]
fn sigterm_finishes_writes_closes_feeds_and_exits_0() {
    let mut s = TestServer::start();
    let db = format!("{}/db", s.admin);
    // an open continuous feed
    let feed_url = format!("{db}/_changes?feed=continuous&heartbeat=1000");
    let feed = std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .get(feed_url)
            .send()
            .unwrap();
        r.text().is_ok()
    });
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        let c = client();
        let mut acked = Vec::new();
        for i in 0..400 {
            match c
                .put(format!("{writer_db}/w{i}"))
                .json(&json!({"i": i}))
                .send()
            {
                Ok(r) if r.status() == 201 => acked.push(format!("w{i}")),
                Ok(r) => assert!(
                    r.status() == 503,
                    "only 503 while shutting down, got {}",
                    r.status()
                ),
                Err(_) => {}
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert_eq!(
        s.terminate(),
        Some(0),
        "exit status 0; log:\n{}",
        s.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "shutdown is bounded"
    );
    assert!(feed.join().unwrap(), "the continuous feed ended cleanly");
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty());
    let s = s.restart();
    for id in &acked {
        assert_eq!(get(&format!("{}/db/{id}", s.admin)).0, 200, "{id} lost");
    }
}

#[test]
fn tls_on_every_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(tmp.path());
    let (c2, k2) = (cert.clone(), key.clone());
    let s = TestServer::start_with(move |c| {
        c["SSLCert"] = json!(c2);
        c["SSLKey"] = json!(k2);
    });
    assert!(
        s.public.starts_with("https://")
            && s.admin.starts_with("https://")
            && s.metrics.starts_with("https://")
    );
    for (url, expect) in [
        (format!("{}/", s.admin), "Welcome"),
        (format!("{}/_ping", s.public), "OK"),
        (format!("{}/metrics", s.metrics), "syncgate_"),
    ] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert", cert.to_str().unwrap(), &url])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(expect),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // TLS 1.1 is refused; plain HTTP gets no answer
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            &format!("{}/", s.admin),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.1 must fail");
    let plain = s.admin.replace("https://", "http://");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5", &format!("{plain}/")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Welcome"));
    // a key that is not PEM is a config error (exit 2)
    let bad = tmp.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let cfg = tmp.path().join("c.json");
    std::fs::write(&cfg, json!({"SSLCert": cert, "SSLKey": bad, "interface": "127.0.0.1:0", "adminInterface": "127.0.0.1:0", "metricsInterface": "127.0.0.1:0", "data_dir": tmp.path().join("d")}).to_string()).unwrap();
    let out = std::process::Command::new(BIN).arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSLKey"));
}

/// DNS rebinding: a web page whose name resolves to 127.0.0.1 reaches the loopback admin port
/// with its own name in `Host`; the admin port refuses it and changes nothing.
#[test]
fn loopback_admin_port_refuses_foreign_host_names() {
    let s = TestServer::start();
    let rebound = |method: &str, path: &str, host: &str| {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        raw(&s.admin, req.as_bytes())
    };
    let port = s.admin.rsplit(':').next().unwrap().to_string();
    let (st, body) = rebound("PUT", "/stolen", &format!("attacker.example:{port}"));
    assert_eq!(st, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "forbidden");
    let (st, _) = rebound("GET", "/db/_all_docs", "attacker.example");
    assert_eq!(st, 403);
    let (st, _) = rebound("GET", "/_console/", "localhost.attacker.example");
    assert_eq!(st, 403);
    // nothing was created
    let r = client().get(format!("{}/stolen", s.admin)).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // loopback names are answered
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (st, body) = rebound("GET", "/db", &host);
        assert_eq!(st, 200, "{host}: {body}");
    }
    // the public port serves any name (clients come through proxies and real host names)
    let (st, _) = {
        let req = "GET / HTTP/1.1\r\nHost: sync.example.com\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        raw(&s.public, req.as_bytes())
    };
    assert_eq!(st, 200);
}

/// Every listener queues many connections before they are accepted: clients that arrive
/// together (hundreds of replicators reconnecting after a restart) are not dropped to retry a
/// second later, as with the default backlog of 128. The backlog of a listening socket is the
/// `Send-Q` that `ss -lnt` shows (iproute2).
#[test]
fn listeners_queue_many_connections() {
    let s = TestServer::start();
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("reading net.core.somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number");
    for base in [&s.public, &s.admin, &s.metrics] {
        let port = base.rsplit(':').next().unwrap();
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("running ss (Debian package iproute2)");
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no listener on {port} in `ss` output: {text:?}"));
        assert!(
            backlog >= somaxconn.min(1024),
            "listener {base}: backlog {backlog} (somaxconn {somaxconn})"
        );
    }
}
