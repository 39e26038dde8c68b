//! The admin console and the admin endpoints it relies on: console files on the admin port
//! only, their Content-Security-Policy, `GET /_metrics`, `GET /_all_dbs?verbose=true`, the
//! user listing with `include_access`, and a user's sessions listed and revoked by handle.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::users::{basic, call, Resp};

fn with_users(c: &mut Value) {
    c["databases"]["db"]["users"] = json!({
        "alice": {"password": "pw-alice-1", "admin_channels": ["a"], "admin_roles": ["team"]},
        "bob": {"password": "pw-bob-1", "admin_channels": ["b"]}
    });
    c["databases"]["db"]["roles"] = json!({"team": {"admin_channels": ["t"]}});
}

fn get_resp(url: &str) -> Resp {
    call(client().get(url))
}

/// Logs in on the public port; returns the `Cookie` header value.
fn login(s: &TestServer, user: &str, pass: &str) -> String {
    let r = call(
        client()
            .post(format!("{}/db/_session", s.public))
            .json(&json!({"name": user, "password": pass})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn with_cookie(s: &TestServer, cookie: &str) -> u16 {
    call(
        client()
            .get(format!("{}/db/", s.public))
            .header("cookie", cookie),
    )
    .status
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn console_files_are_served_on_the_admin_port_only_with_a_strict_policy() {
    let s = TestServer::start();
    for path in ["/_console", "/_console/", "/_console/index.html"] {
        let r = get_resp(&format!("{}{path}", s.admin));
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text.contains("/_console/app.js"), "{path}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
    }
    let js = get_resp(&format!("{}/_console/views/users.js", s.admin));
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_error(
        &get(&format!("{}/_console/missing.js", s.admin)),
        404,
        "not_found",
    );
    assert_error(
        &send(
            client()
                .post(format!("{}/_console/", s.admin))
                .json(&json!({})),
        ),
        405,
        "method_not_allowed",
    );
    // the public port knows nothing of the console
    for path in ["/_console", "/_console/", "/_console/app.js", "/_metrics"] {
        let r = get(&format!("{}{path}", s.public));
        assert_error(&r, 404, "not_found");
        assert_eq!(r.1["reason"], "unknown URL");
    }
    // any other admin response is a sandboxed document (an HTML attachment opened from the
    // admin origin cannot run script there)
    let put = call(
        client()
            .put(format!("{}/db/page/index.html", s.admin))
            .header("content-type", "text/html")
            .body("<script>alert(1)</script>"),
    );
    assert_eq!(put.status, 201, "{}", put.text);
    let att = get_resp(&format!("{}/db/page/index.html", s.admin));
    assert_eq!(att.status, 200);
    assert!(att
        .header("content-security-policy")
        .unwrap()
        .starts_with("sandbox"));
    assert_eq!(att.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn admin_metrics_are_the_metrics_listeners_text() {
    let s = TestServer::start();
    assert_eq!(get(&format!("{}/db/", s.public)).0, 401);
    let r = get_resp(&format!("{}/_metrics", s.admin));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "syncgate_http_requests_total{",
        "syncgate_http_request_duration_seconds_bucket{",
        "syncgate_changes_feeds_active{db=\"db\"}",
        "syncgate_docs_written_total{db=\"db\"}",
        "syncgate_auth_failures_total{db=\"db\",reason=\"no_credentials\"} 1",
    ] {
        assert!(r.text.contains(name), "{name} in\n{}", r.text);
    }
    assert_error(
        &send(
            client()
                .post(format!("{}/_metrics", s.admin))
                .json(&json!({})),
        ),
        405,
        "method_not_allowed",
    );
}

#[test]
fn all_dbs_verbose_gives_each_databases_info_and_backend() {
    let s = TestServer::start();
    assert_eq!(put(&format!("{}/app/", s.admin), &json!({})).0, 201);
    assert_eq!(put(&format!("{}/db/d1", s.admin), &json!({"x": 1})).0, 201);
    let (st, names) = get(&format!("{}/_all_dbs", s.admin));
    assert_eq!(st, 200);
    assert_eq!(names, json!(["app", "db"]));
    let (st, v) = get(&format!("{}/_all_dbs?verbose=true", s.admin));
    assert_eq!(st, 200);
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["db_name"], "app");
    assert_eq!(list[1]["db_name"], "db");
    assert_eq!(list[1]["doc_count"], 1);
    assert_eq!(list[1]["state"], "Online");
    assert_eq!(list[1]["backend"], "embedded");
    assert!(list[1]["update_seq"].as_u64().unwrap() >= 1);
    assert_error(
        &get(&format!("{}/_all_dbs?verbose=maybe", s.admin)),
        400,
        "bad_request",
    );
}

#[test]
fn user_listing_with_access_has_channels_and_roles() {
    let s = TestServer::start_with(with_users);
    let (st, v) = get(&format!(
        "{}/db/_user/?name_only=false&include_access=true",
        s.admin
    ));
    assert_eq!(st, 200, "{v}");
    let alice = v
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    assert_eq!(alice["admin_channels"], json!(["a"]));
    assert_eq!(alice["admin_roles"], json!(["team"]));
    assert_eq!(alice["roles"], json!(["team"]));
    let all: Vec<&str> = alice["all_channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(all.contains(&"a") && all.contains(&"t"), "{all:?}");
    assert!(alice.get("password").is_none() && !v.to_string().contains("argon2"));
    // the same object as the user's own GET
    let (_, one) = get(&format!("{}/db/_user/alice", s.admin));
    assert_eq!(*alice, one);
    // the default listing is unchanged
    let (_, plain) = get(&format!("{}/db/_user/?name_only=false", s.admin));
    assert_eq!(
        plain[0],
        json!({"name": "alice", "email": "", "disabled": false})
    );
    assert_error(
        &get(&format!("{}/db/_user/?include_access=true", s.admin)),
        400,
        "bad_request",
    );
}

#[test]
fn a_users_sessions_are_listed_by_handle_and_revoked_one_by_one() {
    let s = TestServer::start_with(with_users);
    let c1 = login(&s, "alice", "pw-alice-1");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let c2 = login(&s, "alice", "pw-alice-1");
    let cb = login(&s, "bob", "pw-bob-1");
    // an admin-made session with its own TTL
    let (st, made) = post(
        &format!("{}/db/_session", s.admin),
        &json!({"name": "alice", "ttl": 600}),
    );
    assert_eq!(st, 200);
    let c3 = format!(
        "SyncGatewaySession={}",
        made["session_id"].as_str().unwrap()
    );

    let url = format!("{}/db/_user/alice/_session", s.admin);
    let r = get_resp(&url);
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{}", r.text);
    // ordered by expiry: the admin session (10 min) first, then the logins (24 h) in order
    assert_eq!(list[0]["ttl_secs"], 600);
    assert_eq!(list[1]["ttl_secs"], 86400);
    assert_eq!(list[0]["expires"], made["expires"]);
    for e in &list {
        let h = e["handle"].as_str().unwrap();
        assert!(is_hex(h, 32), "{h}");
        assert_eq!(e["one_time"], false);
        assert!(e["issued"].as_str().unwrap().ends_with('Z'));
    }
    // no session id (nor its stored hash) in the answer
    for c in [&c1, &c2, &c3] {
        let id = c.split('=').nth(1).unwrap();
        assert!(!r.text.contains(id));
    }
    // a handle is not a session id anywhere else
    let h1 = list[1]["handle"].as_str().unwrap().to_string();
    assert_error(
        &get(&format!("{}/db/_session/{h1}", s.admin)),
        404,
        "not_found",
    );
    assert_eq!(with_cookie(&s, &format!("SyncGatewaySession={h1}")), 401);
    // another user's path does not reach it
    assert_error(
        &delete(&format!("{}/db/_user/bob/_session/{h1}", s.admin)),
        404,
        "not_found",
    );
    assert_eq!(with_cookie(&s, &c1), 200);

    let (st, body) = delete(&format!("{url}/{h1}"));
    assert_eq!((st, body), (200, json!({"ok": true})));
    assert_eq!(with_cookie(&s, &c1), 401, "the revoked session is refused");
    assert_eq!(with_cookie(&s, &c2), 200);
    assert_eq!(with_cookie(&s, &c3), 200);
    assert_eq!(with_cookie(&s, &cb), 200);
    assert_error(&delete(&format!("{url}/{h1}")), 404, "not_found");
    let (_, left) = get(&url);
    assert_eq!(left.as_array().unwrap().len(), 2);
    assert!(!left.to_string().contains(&h1));

    // a password change ends the others: none is listed any more
    assert_eq!(
        put(
            &format!("{}/db/_user/alice", s.admin),
            &json!({"password": "pw-alice-2"})
        )
        .0,
        200
    );
    assert_eq!(get(&url).1, json!([]));
    assert_eq!(with_cookie(&s, &c2), 401);
    let (_, bobs) = get(&format!("{}/db/_user/bob/_session", s.admin));
    assert_eq!(bobs.as_array().unwrap().len(), 1);

    assert_error(
        &get(&format!("{}/db/_user/nobody/_session", s.admin)),
        404,
        "not_found",
    );
    assert_error(
        &delete(&format!("{url}/{}", "0".repeat(32))),
        404,
        "not_found",
    );
    // the public port has none of this
    let r = call(
        client()
            .get(format!("{}/db/_user/bob/_session", s.public))
            .header("authorization", basic("bob", "pw-bob-1")),
    );
    assert_eq!(r.status, 404, "{}", r.text);
}
