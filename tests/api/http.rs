//! HTTP surface: JSON bodies require `Content-Type: application/json` on both ports (415 and
//! nothing written otherwise), `multipart/related` document uploads as CouchDB's replicator
//! sends them, and the startup output (each line once, no colour codes in a pipe).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::users::{basic, call, Resp};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn with_user(c: &mut Value) {
    c["databases"]["db"]["users"] =
        json!({"alice": {"password": "pw-alice-1", "admin_channels": ["*"]}});
}

/// A request with an explicit Content-Type (or none) and a raw body.
fn raw(
    method: Method,
    url: &str,
    ct: Option<&str>,
    auth: Option<&str>,
    body: impl Into<reqwest::blocking::Body>,
) -> Resp {
    let mut rb = client().request(method, url).body(body);
    if let Some(ct) = ct {
        rb = rb.header("content-type", ct);
    }
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    call(rb)
}

/// Every JSON-body route of a port, as (method, path after the server URL, body).
fn json_routes(admin: bool) -> Vec<(Method, &'static str, String)> {
    let mut v = vec![
        (Method::POST, "/db/", r#"{"_id":"w1","v":1}"#.to_string()),
        (Method::PUT, "/db/w2", r#"{"v":2}"#.into()),
        (Method::PUT, "/db/_design/w3", r#"{"v":3}"#.into()),
        (
            Method::POST,
            "/db/_bulk_docs",
            r#"{"docs":[{"_id":"w4"},{"_id":"w5","_rev":"1-a"}],"new_edits":false}"#.into(),
        ),
        (
            Method::POST,
            "/db/_bulk_get",
            r#"{"docs":[{"id":"x"}]}"#.into(),
        ),
        (Method::POST, "/db/_revs_diff", r#"{"x":["1-a"]}"#.into()),
        (Method::POST, "/db/_all_docs", r#"{"keys":["x"]}"#.into()),
        (Method::POST, "/db/_changes", r#"{"since":0}"#.into()),
        (
            Method::POST,
            "/db/_changes?filter=_selector",
            r#"{"selector":{"v":1}}"#.into(),
        ),
        (Method::POST, "/db/_find", r#"{"selector":{}}"#.into()),
        (Method::PUT, "/db/_local/w6", r#"{"v":6}"#.into()),
    ];
    if admin {
        v.extend([
            (
                Method::POST,
                "/db/_user/",
                r#"{"name":"u1","password":"pw-u1-123"}"#.to_string(),
            ),
            (
                Method::PUT,
                "/db/_user/u2",
                r#"{"password":"pw-u2-123"}"#.into(),
            ),
            (
                Method::PUT,
                "/db/_user/alice",
                r#"{"admin_channels":["changed"]}"#.into(),
            ),
            (Method::POST, "/db/_role/", r#"{"name":"r1"}"#.into()),
            (
                Method::PUT,
                "/db/_role/r2",
                r#"{"admin_channels":[]}"#.into(),
            ),
            (Method::POST, "/db/_session", r#"{"name":"alice"}"#.into()),
        ]);
    } else {
        v.push((
            Method::POST,
            "/db/_session",
            r#"{"name":"alice","password":"pw-alice-1"}"#.into(),
        ));
    }
    v
}

/// What a refused write could have changed: documents, local docs, users, roles, sessions.
/// `update_seq`: the database's at the start (installing config users may take sequences).
fn assert_nothing_written(s: &TestServer, update_seq: &Value) {
    let a = &s.admin;
    let (_, info) = get(&format!("{a}/db/"));
    assert_eq!(info["doc_count"], 0, "{info}");
    assert_eq!(&info["update_seq"], update_seq, "{info}");
    assert_eq!(get(&format!("{a}/db/_local/w6")).0, 404);
    let (_, users) = get(&format!("{a}/db/_user/"));
    assert_eq!(users, json!(["alice"]));
    let (_, alice) = get(&format!("{a}/db/_user/alice"));
    assert_eq!(alice["admin_channels"], json!(["*"]), "{alice}");
    let (_, roles) = get(&format!("{a}/db/_role/"));
    assert_eq!(roles, json!([]));
}

#[test]
fn json_routes_refuse_other_content_types_on_both_ports() {
    let s = TestServer::start_with(with_user);
    let update_seq = get(&format!("{}/db/", s.admin)).1["update_seq"].clone();
    let auth = basic("alice", "pw-alice-1");
    for admin in [false, true] {
        let base = if admin { &s.admin } else { &s.public };
        let auth = (!admin).then_some(auth.as_str());
        for (m, path, body) in json_routes(admin) {
            let url = format!("{base}{path}");
            for ct in [
                Some("text/plain"),
                Some("text/plain;charset=UTF-8"),
                Some("application/x-www-form-urlencoded"),
                Some("multipart/form-data; boundary=x"),
                Some("application/jsonx"),
                Some("application/merge-patch+json"),
                Some(""),
                None,
            ] {
                let r = raw(m.clone(), &url, ct, auth, body.clone());
                assert_eq!(
                    r.status,
                    415,
                    "{m} {path} with {ct:?} on the {} port: {}",
                    if admin { "admin" } else { "public" },
                    r.text
                );
                assert_eq!(r.body["error"], "bad_content_type", "{}", r.text);
                assert!(
                    r.body["reason"]
                        .as_str()
                        .is_some_and(|t| t.contains("application/json")),
                    "{}",
                    r.text
                );
                assert!(r.header("set-cookie").is_none(), "{m} {path}: cookie set");
            }
        }
    }
    // multipart/related is a document PUT only
    let mp = "multipart/related; boundary=b";
    let body = "--b\r\n\r\n{}\r\n--b--";
    for (m, path) in [
        (Method::POST, "/db/"),
        (Method::POST, "/db/_bulk_docs"),
        (Method::PUT, "/db/_local/w6"),
    ] {
        let r = raw(m, &format!("{}{path}", s.admin), Some(mp), None, body);
        assert_eq!(r.status, 415, "{path}: {}", r.text);
    }
    assert_nothing_written(&s, &update_seq);
    // a browser's form post at the public login is not a login either
    let r = raw(
        Method::POST,
        &format!("{}/db/_session", s.public),
        Some("application/x-www-form-urlencoded"),
        None,
        "name=alice&password=pw-alice-1",
    );
    assert_eq!(r.status, 415, "{}", r.text);
    assert!(r.header("set-cookie").is_none());
}

#[test]
fn json_content_type_variants_and_bodyless_routes_still_work() {
    let s = TestServer::start_with(with_user);
    let a = &s.admin;
    let auth = basic("alice", "pw-alice-1");
    // parameters and case do not matter
    for (i, ct) in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
        " application/json ",
    ]
    .iter()
    .enumerate()
    {
        let r = raw(
            Method::PUT,
            &format!("{}/db/ok{i}", s.public),
            Some(ct),
            Some(&auth),
            r#"{"v":1}"#,
        );
        assert_eq!(r.status, 201, "{ct}: {}", r.text);
    }
    // optional bodies: empty JSON body on POST _changes / _all_docs
    let r = raw(
        Method::POST,
        &format!("{a}/db/_changes"),
        Some("application/json"),
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 4);
    let r = raw(
        Method::POST,
        &format!("{a}/db/_all_docs"),
        Some("application/json"),
        None,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // requests without a body keep working without a Content-Type
    let r = raw(
        Method::POST,
        &format!("{}/db/_ensure_full_commit", s.public),
        None,
        Some(&auth),
        "",
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let rev = get(&format!("{a}/db/ok0")).1["_rev"]
        .as_str()
        .unwrap()
        .to_string();
    let r = raw(
        Method::DELETE,
        &format!("{}/db/ok0?rev={rev}", s.public),
        None,
        Some(&auth),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // an authenticated caller asks for a cookie with an empty POST (no body, no type)
    let r = raw(
        Method::POST,
        &format!("{}/db/_session", s.public),
        None,
        Some(&auth),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.header("set-cookie").is_some());
    // attachment bodies keep any type, including none
    let rev = get(&format!("{a}/db/ok1")).1["_rev"]
        .as_str()
        .unwrap()
        .to_string();
    let r = raw(
        Method::PUT,
        &format!("{}/db/ok1/a.txt?rev={rev}", s.public),
        Some("text/plain"),
        Some(&auth),
        "plain text",
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let r = raw(
        Method::PUT,
        &format!(
            "{}/db/ok1/b.bin?rev={}",
            s.public,
            r.body["rev"].as_str().unwrap()
        ),
        None,
        Some(&auth),
        vec![0u8, 1, 2],
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let resp = client().get(format!("{a}/db/ok1/a.txt")).send().unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.text().unwrap(), "plain text");
}

/// A `multipart/related` body as CouchDB's replicator writes it: the JSON part, then one part
/// per following attachment, `\r\n--boundary` between parts and `--` after the last.
fn multipart(boundary: &str, doc: &Value, atts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut out = format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n").into_bytes();
    out.extend_from_slice(doc.to_string().as_bytes());
    for (name, ct, data) in atts {
        out.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
    out
}

fn put_multipart(url: &str, ct: &str, body: Vec<u8>, auth: Option<&str>) -> Resp {
    raw(Method::PUT, url, Some(ct), auth, body)
}

#[test]
fn multipart_related_put_is_the_same_write_as_inline() {
    let s = TestServer::start_with(with_user);
    let a = &s.admin;
    // binary data with CRLF, dashes and a fake boundary prefix inside
    let bin: Vec<u8> = (0..=255u8)
        .cycle()
        .take(10_000)
        .chain(b"\r\n--x\r\n--".iter().copied())
        .collect();
    let text = b"hello, world\r\n";
    let doc = json!({
        "title": "with attachments",
        "n": 3,
        "_attachments": {
            "bin.dat": {"follows": true, "content_type": "application/x-test", "length": bin.len()},
            "note.txt": {"follows": true, "content_type": "text/plain", "length": text.len()}
        }
    });
    let body = multipart(
        "abc-123",
        &doc,
        &[
            ("bin.dat", "application/x-test", &bin),
            ("note.txt", "text/plain", text),
        ],
    );
    let r = put_multipart(
        &format!("{}/db/mp", s.public),
        "multipart/related; boundary=\"abc-123\"",
        body,
        Some(&basic("alice", "pw-alice-1")),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let mp_rev = r.body["rev"].as_str().unwrap().to_string();
    // the same document written inline gets the same revision
    let (st, inline) = put(
        &format!("{a}/db/inline"),
        &json!({
            "title": "with attachments",
            "n": 3,
            "_attachments": {
                "bin.dat": {"content_type": "application/x-test", "data": b64(&bin)},
                "note.txt": {"content_type": "text/plain", "data": b64(text)}
            }
        }),
    );
    assert_eq!(st, 201, "{inline}");
    assert_eq!(inline["rev"], mp_rev.as_str());
    // round trip
    let (_, got) = get(&format!("{a}/db/mp?attachments=true"));
    assert_eq!(got["title"], "with attachments");
    assert_eq!(got["_attachments"]["bin.dat"]["data"], b64(&bin));
    assert_eq!(got["_attachments"]["note.txt"]["data"], b64(text));
    assert_eq!(got["_attachments"]["bin.dat"]["length"], bin.len());
    assert!(got["_attachments"]["bin.dat"].get("follows").is_none());
    let (_, same) = get(&format!("{a}/db/inline?attachments=true"));
    assert_eq!(
        got["_attachments"]["bin.dat"]["digest"],
        same["_attachments"]["bin.dat"]["digest"]
    );
    let resp = client().get(format!("{a}/db/mp/bin.dat")).send().unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-test");
    assert_eq!(resp.bytes().unwrap().to_vec(), bin);

    // an update: one attachment kept as a stub, one new following with its digest, unquoted
    // boundary
    let digest = same["_attachments"]["note.txt"]["digest"].as_str().unwrap();
    let new = b"second";
    let upd = json!({
        "_rev": mp_rev,
        "title": "v2",
        "_attachments": {
            "note.txt": {"stub": true, "digest": digest, "revpos": 1},
            "new.txt": {"follows": true, "content_type": "text/plain", "length": 6,
                        "digest": got_digest(a, new)}
        }
    });
    let r = put_multipart(
        &format!("{a}/db/mp"),
        "Multipart/Related;boundary=zz",
        multipart("zz", &upd, &[("new.txt", "text/plain", new)]),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let (_, v2) = get(&format!("{a}/db/mp?attachments=true"));
    assert_eq!(v2["title"], "v2");
    assert_eq!(v2["_attachments"]["new.txt"]["data"], b64(new));
    assert_eq!(v2["_attachments"]["new.txt"]["revpos"], 2);
    assert_eq!(v2["_attachments"]["note.txt"]["data"], b64(text));
    assert!(v2["_attachments"].get("bin.dat").is_none());
}

/// The md5 digest the server computes for `data` (via a throwaway inline document).
fn got_digest(admin: &str, data: &[u8]) -> String {
    let (st, r) = put(
        &format!("{admin}/db/digest-probe-{}", data.len()),
        &json!({"_attachments": {"x": {"content_type": "x/y", "data": b64(data)}}}),
    );
    assert_eq!(st, 201, "{r}");
    let (_, d) = get(&format!("{admin}/db/digest-probe-{}", data.len()));
    d["_attachments"]["x"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn multipart_related_with_new_edits_false_replicates_a_revision() {
    let s = TestServer::start();
    let a = &s.admin;
    let data = b"replicated attachment";
    let doc = json!({
        "_id": "r",
        "_rev": "2-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "_revisions": {"start": 2, "ids": ["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]},
        "v": 2,
        "_attachments": {"f.txt": {"follows": true, "content_type": "text/plain",
                                   "length": data.len(), "revpos": 2,
                                   "digest": got_digest(a, data)}}
    });
    let r = put_multipart(
        &format!("{a}/db/r?new_edits=false"),
        "multipart/related; boundary=\"e2c7d5a6f3\"",
        multipart("e2c7d5a6f3", &doc, &[("f.txt", "text/plain", data)]),
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let (_, got) = get(&format!("{a}/db/r?attachments=true&revs=true"));
    assert_eq!(got["_rev"], "2-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    assert_eq!(
        got["_revisions"]["ids"][1],
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    );
    assert_eq!(got["_attachments"]["f.txt"]["data"], b64(data));
    assert_eq!(got["_attachments"]["f.txt"]["revpos"], 2);
}

#[test]
fn bad_multipart_bodies_are_400_and_write_nothing() {
    let s = TestServer::start();
    let a = &s.admin;
    let url = format!("{a}/db/bad");
    let data: &[u8] = b"some bytes";
    let att = |extra: Value| {
        let mut m = json!({"follows": true, "content_type": "text/plain"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"_attachments": {"a.txt": m}})
    };
    let ct = "multipart/related; boundary=\"B\"";
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "wrong length",
            ct,
            multipart(
                "B",
                &att(json!({"length": 3})),
                &[("a.txt", "text/plain", data)],
            ),
        ),
        (
            "wrong digest",
            ct,
            multipart(
                "B",
                &att(json!({"digest": "md5-AAAAAAAAAAAAAAAAAAAAAA=="})),
                &[("a.txt", "text/plain", data)],
            ),
        ),
        ("missing part", ct, multipart("B", &att(json!({})), &[])),
        (
            "one part too many",
            ct,
            multipart(
                "B",
                &att(json!({})),
                &[("a.txt", "text/plain", data), ("b", "x/y", data)],
            ),
        ),
        (
            "no boundary parameter",
            "multipart/related",
            multipart("B", &att(json!({})), &[("a.txt", "text/plain", data)]),
        ),
        (
            "other boundary",
            "multipart/related; boundary=C",
            multipart("B", &att(json!({})), &[("a.txt", "text/plain", data)]),
        ),
        (
            "cut off",
            ct,
            b"--B\r\nContent-Type: application/json\r\n\r\n{}".to_vec(),
        ),
        (
            "first part not a JSON object",
            ct,
            b"--B\r\nContent-Type: application/json\r\n\r\n[1]\r\n--B--".to_vec(),
        ),
        ("part Content-Length lies", ct, {
            let mut b = multipart("B", &att(json!({})), &[("a.txt", "text/plain", data)]);
            let t = String::from_utf8(b.clone()).unwrap();
            b = t
                .replace("Content-Length: 10", "Content-Length: 11")
                .into_bytes();
            b
        }),
        ("empty body", ct, Vec::new()),
    ];
    for (name, ct, body) in cases {
        let r = put_multipart(&url, ct, body, None);
        assert_eq!(r.status, 400, "{name}: {}", r.text);
        assert_eq!(r.body["error"], "bad_request", "{name}: {}", r.text);
    }
    assert_eq!(get(&url).0, 404);
    let (_, info) = get(&format!("{a}/db/"));
    assert_eq!(info["update_seq"], 0, "{info}");
}

/// Starts the binary with both outputs piped, makes a few requests, stops it, and returns
/// (stdout, stderr).
fn run_and_capture(config: Value, dir: &std::path::Path) -> (String, String) {
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut child = Command::new(BIN)
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    let mut public = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("public listener on ") {
            public = line.split_whitespace().last().map(str::to_string);
        }
        stdout.push_str(&line);
        if stdout.contains("metrics listener on ") {
            break;
        }
    }
    let public = public.expect("public listener line");
    // some requests so that request logging (debug) happens, including an error
    assert_eq!(get(&format!("{public}/")).0, 200);
    assert_eq!(get(&format!("{public}/nope/")).0, 401);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    stdout.push_str(&rest);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
    (stdout, err_thread.join().unwrap())
}

#[test]
fn startup_lines_once_and_no_colour_codes_in_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = base_config(tmp.path());
    let (stdout, stderr) = run_and_capture(cfg, tmp.path());
    let all = format!("{stdout}{stderr}");
    assert!(
        !all.contains('\x1b'),
        "escape codes in the output:\n{all:?}"
    );
    for port in ["public", "admin", "metrics"] {
        let needle = format!("{port} listener on ");
        assert_eq!(
            all.matches(&needle).count(),
            1,
            "'{needle}' not exactly once:\n{all}"
        );
        // and the line tests and operators read is on stdout
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("syncgate: ") && l.contains(&needle)),
            "{stdout}"
        );
    }
    // every line appears once (no line printed by two loggers)
    for line in all.lines().filter(|l| !l.trim().is_empty()) {
        let body = line.split_once(" INFO ").map(|(_, b)| b).unwrap_or(line);
        assert_eq!(
            all.matches(body).count(),
            1,
            "line printed more than once: {line}\n{all}"
        );
    }
    assert!(stderr.contains("database online"), "{stderr}");
}
