//! TTL sessions: public login/logout, admin sessions for custom auth, cookie attributes,
//! expiry, sliding refresh, revocation, one-time sessions, persistence.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::users::{basic, call, Resp};

fn with_users(c: &mut Value) {
    c["databases"]["db"]["users"] = json!({
        "alice": {"password": "pw-alice-1", "admin_channels": ["*"]},
        "bob": {"password": "pw-bob-1", "admin_channels": ["b"]}
    });
}

/// (name, value, attributes) of a Set-Cookie header.
fn parse_cookie(h: &str) -> (String, String, Vec<String>) {
    let mut parts = h.split(';').map(|p| p.trim().to_string());
    let first = parts.next().unwrap();
    let (n, v) = first.split_once('=').unwrap();
    (n.to_string(), v.to_string(), parts.collect())
}

fn attr<'a>(attrs: &'a [String], name: &str) -> Option<&'a str> {
    attrs.iter().find_map(|a| {
        let (k, v) = a.split_once('=').unwrap_or((a, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn expires_in(attrs: &[String]) -> Duration {
    let t = httpdate::parse_http_date(attr(attrs, "Expires").expect("Expires")).unwrap();
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

fn login(s: &TestServer, db: &str, user: &str, pass: &str) -> Resp {
    call(
        client()
            .post(format!("{}/{db}/_session", s.public))
            .json(&json!({"name": user, "password": pass})),
    )
}

/// The session id from a successful login.
fn login_id(s: &TestServer, user: &str, pass: &str) -> String {
    let r = login(s, "db", user, pass);
    assert_eq!(r.status, 200, "{}", r.text);
    parse_cookie(r.header("set-cookie").unwrap()).1
}

fn get_with_cookie(url: &str, cookie: &str) -> Resp {
    call(client().get(url).header("cookie", cookie))
}

fn is_session_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn public_login_session_and_logout() {
    let s = TestServer::start_with(with_users);
    let db = format!("{}/db", s.public);
    let r = login(&s, "db", "alice", "pw-alice-1");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["userCtx"]["name"], "alice");
    assert!(r.body.get("one_time_session_id").is_none());
    let (name, id, attrs) = parse_cookie(r.header("set-cookie").unwrap());
    assert_eq!(name, "SyncGatewaySession");
    assert!(is_session_id(&id), "{id}");
    assert_eq!(attr(&attrs, "Path"), Some("/db"));
    assert!(attr(&attrs, "HttpOnly").is_some());
    assert_eq!(attr(&attrs, "SameSite"), Some("Lax"));
    assert!(attr(&attrs, "Secure").is_none(), "no TLS: not Secure");
    let left = expires_in(&attrs);
    assert!(
        left > Duration::from_secs(86_300) && left <= Duration::from_secs(86_400),
        "{left:?}"
    );
    let cookie = format!("SyncGatewaySession={id}");
    // the cookie alone authenticates
    assert_eq!(get_with_cookie(&format!("{db}/"), &cookie).status, 200);
    let me = get_with_cookie(&format!("{db}/_session"), &cookie);
    assert_eq!(me.body["userCtx"]["name"], "alice");
    assert!(
        me.header("set-cookie").is_none(),
        "fresh session: no refresh"
    );
    // wrong password / unknown user: 401, no cookie, no Basic challenge
    for (u, p) in [("alice", "wrong"), ("nobody", "x")] {
        let r = login(&s, "db", u, p);
        assert_error(&r.pair(), 401, "unauthorized");
        assert!(r.header("set-cookie").is_none());
        assert!(r.header("www-authenticate").is_none());
    }
    // bad bodies
    for body in [
        json!({"name": "alice", "password": "pw-alice-1", "extra": 1}),
        json!([1]),
        json!({"name": 5}),
    ] {
        let r = call(client().post(format!("{db}/_session")).json(&body));
        assert_error(&r.pair(), 400, "bad_request");
    }
    // no name: a session for the caller already authenticated by Basic...
    let r = call(
        client()
            .post(format!("{db}/_session"))
            .header("authorization", basic("bob", "pw-bob-1")),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["userCtx"]["name"], "bob");
    let bob_cookie = format!(
        "SyncGatewaySession={}",
        parse_cookie(r.header("set-cookie").unwrap()).1
    );
    // ...or by cookie; anonymous: 401
    let r = call(
        client()
            .post(format!("{db}/_session"))
            .header("cookie", &cookie),
    );
    assert_eq!(
        (r.status, r.body["userCtx"]["name"].clone()),
        (200, json!("alice"))
    );
    assert_error(
        &call(client().post(format!("{db}/_session"))).pair(),
        401,
        "unauthorized",
    );
    // Basic wins over another user's cookie
    let r = call(
        client()
            .get(format!("{db}/_session"))
            .header("cookie", &cookie)
            .header("authorization", basic("bob", "pw-bob-1")),
    );
    assert_eq!(r.body["userCtx"]["name"], "bob");
    // logout: 200 {"ok":true}, an expiring cookie, and the session is gone
    let r = call(
        client()
            .delete(format!("{db}/_session"))
            .header("cookie", &cookie),
    );
    assert_eq!((r.status, r.body.clone()), (200, json!({"ok": true})));
    let (n, v, attrs) = parse_cookie(r.header("set-cookie").unwrap());
    assert_eq!((n.as_str(), v.as_str()), ("SyncGatewaySession", ""));
    assert_eq!(attr(&attrs, "Path"), Some("/db"));
    assert_eq!(attr(&attrs, "Max-Age"), Some("0"));
    assert_error(
        &get_with_cookie(&format!("{db}/"), &cookie).pair(),
        401,
        "unauthorized",
    );
    // a dead cookie is ignored on /_session
    let r = get_with_cookie(&format!("{db}/_session"), &cookie);
    assert_eq!(
        (r.status, r.body["userCtx"]["name"].clone()),
        (200, Value::Null)
    );
    // logging out again: 401 (the cookie is invalid); without a cookie: 404
    assert_eq!(
        call(
            client()
                .delete(format!("{db}/_session"))
                .header("cookie", &cookie)
        )
        .status,
        401
    );
    let r = call(
        client()
            .delete(format!("{db}/_session"))
            .header("authorization", basic("bob", "pw-bob-1")),
    );
    assert_error(&r.pair(), 404, "not_found");
    assert_eq!(
        get_with_cookie(&format!("{db}/"), &bob_cookie).status,
        200,
        "other sessions live on"
    );
    // a disabled user cannot log in
    put(
        &format!("{}/db/_user/bob", s.admin),
        &json!({"disabled": true}),
    );
    assert_eq!(login(&s, "db", "bob", "pw-bob-1").status, 401);
    // the public port does not serve admin session routes
    let r = call(
        client()
            .get(format!("{db}/_session/{id}"))
            .header("authorization", basic("alice", "pw-alice-1")),
    );
    assert_error(&r.pair(), 404, "not_found");
    // no session id in the log
    let log = s.log_text();
    assert!(log.contains("DEBUG"));
    assert!(!log.contains(&id), "session id in the log");
}

#[test]
fn cookie_attributes_follow_the_config() {
    let s = TestServer::start_with(|c| {
        with_users(c);
        c["CORS"] = json!({"Origin": ["app://obsidian.md"], "LoginOrigin": ["app://obsidian.md"]});
        c["databases"]["db"]["session_cookie_secure"] = json!(true);
        c["databases"]["db"]["session_ttl_secs"] = json!(600);
        c["databases"]["strict"] = json!({
            "session_cookie_name": "MyCookie",
            "session_cookie_http_only": false,
            "session_cookie_same_site": "Strict",
            "users": {"carol": {"password": "pw-carol-1"}}
        });
    });
    // Secure + CORS origins → SameSite=None; TTL from session_ttl_secs
    let r = login(&s, "db", "alice", "pw-alice-1");
    let (_, _, attrs) = parse_cookie(r.header("set-cookie").unwrap());
    assert!(attr(&attrs, "Secure").is_some());
    assert_eq!(attr(&attrs, "SameSite"), Some("None"));
    let left = expires_in(&attrs);
    assert!(
        left > Duration::from_secs(590) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    // custom name, no HttpOnly, Strict
    let r = login(&s, "strict", "carol", "pw-carol-1");
    let (name, id, attrs) = parse_cookie(r.header("set-cookie").unwrap());
    assert_eq!(name, "MyCookie");
    assert_eq!(attr(&attrs, "Path"), Some("/strict"));
    assert!(attr(&attrs, "HttpOnly").is_none());
    assert_eq!(attr(&attrs, "SameSite"), Some("Strict"));
    assert!(attr(&attrs, "Secure").is_none());
    assert_eq!(
        get_with_cookie(&format!("{}/strict/", s.public), &format!("MyCookie={id}")).status,
        200
    );
    // only the configured name counts
    assert_eq!(
        get_with_cookie(
            &format!("{}/strict/", s.public),
            &format!("SyncGatewaySession={id}")
        )
        .status,
        401
    );
    // a session of one database is nothing to another
    assert_error(
        &get_with_cookie(
            &format!("{}/db/", s.public),
            &format!("SyncGatewaySession={id}"),
        )
        .pair(),
        401,
        "unauthorized",
    );
    let admin = post(
        &format!("{}/strict/_session", s.admin),
        &json!({"name": "carol"}),
    );
    assert_eq!(admin.1["cookie_name"], "MyCookie");
}

#[test]
fn cookies_are_secure_by_default_under_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(tmp.path());
    let s = TestServer::start_with(|c| {
        with_users(c);
        c["SSLCert"] = json!(cert);
        c["SSLKey"] = json!(key);
        c["CORS"] = json!({"Origin": ["capacitor://localhost"]});
    });
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"name":"alice","password":"pw-alice-1"}"#,
            &format!("{}/db/_session", s.public),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| {
            panic!(
                "no Set-Cookie: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (_, _, attrs) = parse_cookie(line.split_once(':').unwrap().1.trim());
    assert!(attr(&attrs, "Secure").is_some(), "{line}");
    assert_eq!(attr(&attrs, "SameSite"), Some("None"), "{line}");
    assert!(attr(&attrs, "HttpOnly").is_some(), "{line}");
}

#[test]
fn admin_sessions_for_custom_auth() {
    let s = TestServer::start_with(with_users);
    let sess = format!("{}/db/_session", s.admin);
    let r = call(
        client()
            .post(&sess)
            .json(&json!({"name": "alice", "ttl": 3600})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("set-cookie").is_none(),
        "the app server hands the cookie over"
    );
    let id = r.body["session_id"].as_str().unwrap().to_string();
    assert!(is_session_id(&id));
    assert_eq!(r.body["cookie_name"], "SyncGatewaySession");
    let expires = r.body["expires"].as_str().unwrap();
    assert!(expires.ends_with('Z') && expires.len() == 20, "{expires}");
    // expires ≈ now + ttl (RFC 3339, second precision)
    let as_http = rfc3339_to_epoch(expires);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 3590..=now + 3601).contains(&as_http), "{expires}");
    // the id works as a cookie on the public port
    let cookie = format!("SyncGatewaySession={id}");
    let me = get_with_cookie(&format!("{}/db/_session", s.public), &cookie);
    assert_eq!(me.body["userCtx"]["name"], "alice");
    // default TTL: session_ttl_secs
    let r = post(&sess, &json!({"name": "bob"}));
    assert_eq!(r.0, 200);
    let bob_id = r.1["session_id"].as_str().unwrap().to_string();
    // errors
    for (body, status) in [
        (json!({"name": "nobody"}), 404),
        (json!({"name": "alice", "ttl": 0}), 400),
        (json!({"name": "alice", "ttl": -5}), 400),
        (json!({"name": "alice", "ttl": "3600"}), 400),
        (json!({"name": "alice", "ttl": 3600, "one_time": true}), 400),
        (json!({"ttl": 60}), 400),
        (json!({"name": "GUEST"}), 400),
        (json!({"name": ""}), 400),
        (json!("alice"), 400),
    ] {
        let r = post(&sess, &body);
        assert_eq!(r.0, status, "{body}: {}", r.1);
        assert!(r.1["reason"].is_string());
    }
    put(
        &format!("{}/db/_user/bob", s.admin),
        &json!({"disabled": true}),
    );
    assert_error(&post(&sess, &json!({"name": "bob"})), 400, "bad_request");
    put(
        &format!("{}/db/_user/bob", s.admin),
        &json!({"disabled": false}),
    );
    // GET /_session/{id}
    let (st, info) = get(&format!("{sess}/{id}"));
    assert_eq!(st, 200);
    assert_eq!(info["userCtx"]["name"], "alice");
    assert_error(
        &get(&format!("{sess}/{}", "0".repeat(40))),
        404,
        "not_found",
    );
    assert_error(&get(&format!("{sess}/not-a-session")), 404, "not_found");
    // bob's sessions were revoked by the disable
    assert_error(&get(&format!("{sess}/{bob_id}")), 404, "not_found");
    // DELETE /_user/{name}/_session/{id}: only the owner's
    assert_error(
        &delete(&format!("{}/db/_user/bob/_session/{id}", s.admin)),
        404,
        "not_found",
    );
    assert_eq!(get(&format!("{sess}/{id}")).0, 200);
    assert_eq!(
        delete(&format!("{}/db/_user/alice/_session/{id}", s.admin)).0,
        200
    );
    assert_eq!(
        get_with_cookie(&format!("{}/db/", s.public), &cookie).status,
        401
    );
    // DELETE /_session/{id}
    let id2 = post(&sess, &json!({"name": "alice"})).1["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(delete(&format!("{sess}/{id2}")).0, 200);
    assert_error(&delete(&format!("{sess}/{id2}")), 404, "not_found");
    assert_eq!(
        get_with_cookie(
            &format!("{}/db/", s.public),
            &format!("SyncGatewaySession={id2}")
        )
        .status,
        401
    );
    // DELETE /_user/{name}/_session: every session of the user, password untouched
    let a1 = post(&sess, &json!({"name": "alice"})).1["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let a2 = login_id(&s, "alice", "pw-alice-1");
    let b1 = post(&sess, &json!({"name": "bob"})).1["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        delete(&format!("{}/db/_user/alice/_session", s.admin)).0,
        200
    );
    for a in [&a1, &a2] {
        assert_eq!(
            get_with_cookie(
                &format!("{}/db/", s.public),
                &format!("SyncGatewaySession={a}")
            )
            .status,
            401
        );
    }
    assert_eq!(
        get_with_cookie(
            &format!("{}/db/", s.public),
            &format!("SyncGatewaySession={b1}")
        )
        .status,
        200
    );
    assert_eq!(login(&s, "db", "alice", "pw-alice-1").status, 200);
    assert_error(
        &delete(&format!("{}/db/_user/nobody/_session", s.admin)),
        404,
        "not_found",
    );
    assert_error(
        &send(client().put(&sess).json(&json!({}))),
        405,
        "method_not_allowed",
    );
}

/// `2026-01-21T15:24:44Z` → seconds since the epoch.
fn rfc3339_to_epoch(s: &str) -> u64 {
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // days from civil (Howard Hinnant)
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as u64
}

#[test]
fn every_revocation_path_and_forged_cookies() {
    let s = TestServer::start_with(|c| {
        with_users(c);
        c["databases"]["db"]["users"]["carol"] = json!({"password": "pw-carol-1"});
        c["databases"]["db"]["guest"] = json!({"disabled": false, "admin_channels": ["pub"]});
        c["databases"]["db2"] = json!({"users": {"alice": {"password": "pw-alice-1"}}});
    });
    let db = format!("{}/db", s.public);
    let ok =
        |id: &str| get_with_cookie(&format!("{db}/"), &format!("SyncGatewaySession={id}")).status;
    // password change (even to the same password)
    let id = login_id(&s, "alice", "pw-alice-1");
    assert_eq!(ok(&id), 200);
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"password": "pw-alice-1"}),
    );
    assert_eq!(ok(&id), 401);
    // disable (and the session stays dead after re-enabling)
    let id = login_id(&s, "alice", "pw-alice-1");
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"disabled": true}),
    );
    assert_eq!(ok(&id), 401);
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"disabled": false}),
    );
    assert_eq!(ok(&id), 401);
    // channel changes do not log anyone out
    let id = login_id(&s, "alice", "pw-alice-1");
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"admin_channels": ["x"], "email": "a@b.c"}),
    );
    assert_eq!(ok(&id), 200);
    // deletion, and re-creation under the same name does not revive the session
    let id = login_id(&s, "carol", "pw-carol-1");
    assert_eq!(delete(&format!("{}/db/_user/carol", s.admin)).0, 200);
    assert_eq!(ok(&id), 401);
    put(
        &format!("{}/db/_user/carol", s.admin),
        &json!({"password": "pw-carol-1"}),
    );
    assert_eq!(ok(&id), 401);
    // forged and malformed cookies: 401 on normal endpoints even with GUEST enabled...
    for forged in [
        "0123456789abcdef0123456789abcdef01234567".to_string(),
        "abc".into(),
        "".into(),
        "x".repeat(500),
    ] {
        let r = get_with_cookie(&format!("{db}/"), &format!("SyncGatewaySession={forged}"));
        assert_error(&r.pair(), 401, "unauthorized");
        assert!(r.header("www-authenticate").is_none());
        // ...ignored on /_session (GUEST here)
        let r = get_with_cookie(
            &format!("{db}/_session"),
            &format!("SyncGatewaySession={forged}"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body["userCtx"]["name"], Value::Null);
        assert!(r.body["userCtx"]["channels"].get("pub").is_some());
    }
    // a fake cookie does not stop a login with good credentials
    let r = call(
        client()
            .post(format!("{db}/_session"))
            .header(
                "cookie",
                "SyncGatewaySession=0123456789abcdef0123456789abcdef01234567",
            )
            .json(&json!({"name": "alice", "password": "pw-alice-1"})),
    );
    assert_eq!(r.status, 200);
    // a cookie from another database
    let r = login(&s, "db2", "alice", "pw-alice-1");
    let other = parse_cookie(r.header("set-cookie").unwrap()).1;
    assert_eq!(
        get_with_cookie(
            &format!("{}/db2/", s.public),
            &format!("SyncGatewaySession={other}")
        )
        .status,
        200
    );
    assert_eq!(ok(&other), 401);
}

#[test]
fn expiry_and_sliding_refresh() {
    let s = TestServer::start_with(|c| {
        with_users(c);
        c["databases"]["db"]["session_ttl_secs"] = json!(5);
    });
    let db = format!("{}/db", s.public);
    // a session nobody uses (logged in first: nothing slow between alice's login and her
    // first request, which must come within 10 % of the TTL)
    let idle = login_id(&s, "bob", "pw-bob-1");
    // public login with a 5 s TTL: refresh threshold 0.5 s
    let r = login(&s, "db", "alice", "pw-alice-1");
    let login_cookie = r.header("set-cookie").unwrap().to_string();
    let (_, id, login_attrs) = parse_cookie(&login_cookie);
    let cookie = format!("SyncGatewaySession={id}");
    let r = get_with_cookie(&format!("{db}/"), &cookie);
    assert!(
        r.header("set-cookie").is_none(),
        "within 10 % of the TTL: no refresh"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = get_with_cookie(&format!("{db}/"), &cookie);
    assert_eq!(r.status, 200);
    let refreshed = r
        .header("set-cookie")
        .expect("refresh after 10 % of the TTL")
        .to_string();
    let (n, v, attrs) = parse_cookie(&refreshed);
    assert_eq!(
        (n.as_str(), v.as_str()),
        ("SyncGatewaySession", id.as_str()),
        "same id"
    );
    let strip = |a: &[String]| {
        a.iter()
            .filter(|x| !x.starts_with("Expires"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(&attrs),
        strip(&login_attrs),
        "same attributes as at login"
    );
    // a full TTL again (5 s; Expires has whole seconds, so up to 1 s less shows): more than
    // the ~3.5 s the login cookie had left
    assert!(
        expires_in(&attrs) > Duration::from_millis(3700),
        "{refreshed}"
    );
    let r = get_with_cookie(&format!("{db}/"), &cookie);
    assert!(r.header("set-cookie").is_none(), "just refreshed");
    // keep the refreshed session alive past the original expiry; the idle one expires
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(get_with_cookie(&format!("{db}/"), &cookie).status, 200);
    }
    let r = get_with_cookie(&format!("{db}/"), &format!("SyncGatewaySession={idle}"));
    assert_error(&r.pair(), 401, "unauthorized");
    assert_error(
        &get(&format!("{}/db/_session/{idle}", s.admin)),
        404,
        "not_found",
    );
    // admin sessions with a TTL of a few seconds expire too
    let (_, a) = post(
        &format!("{}/db/_session", s.admin),
        &json!({"name": "alice", "ttl": 1}),
    );
    let aid = a["session_id"].as_str().unwrap();
    assert_eq!(
        get_with_cookie(&format!("{db}/"), &format!("SyncGatewaySession={aid}")).status,
        200
    );
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        get_with_cookie(&format!("{db}/"), &format!("SyncGatewaySession={aid}")).status,
        401
    );
}

#[test]
fn one_time_sessions_are_single_use() {
    let s = TestServer::start_with(with_users);
    let r = call(
        client()
            .post(format!("{}/db/_session?one_time=true", s.public))
            .json(&json!({"name": "alice", "password": "pw-alice-1"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("set-cookie").is_none(),
        "no cookie for one-time sessions"
    );
    let id = r.body["one_time_session_id"].as_str().unwrap().to_string();
    assert!(is_session_id(&id));
    assert_eq!(r.body["userCtx"]["name"], "alice");
    let cookie = format!("SyncGatewaySession={id}");
    let first = get_with_cookie(&format!("{}/db/", s.public), &cookie);
    assert_eq!(first.status, 200);
    assert!(first.header("set-cookie").is_none());
    assert_eq!(
        get_with_cookie(&format!("{}/db/", s.public), &cookie).status,
        401
    );
}

#[test]
fn sessions_survive_a_restart_and_only_hashes_are_stored() {
    let s = TestServer::start_with(with_users);
    let id = login_id(&s, "alice", "pw-alice-1");
    let (_, a) = post(&format!("{}/db/_session", s.admin), &json!({"name": "bob"}));
    let bob = a["session_id"].as_str().unwrap().to_string();
    let mut s = s;
    assert_eq!(s.terminate(), Some(0));
    let s = s.restart();
    for (who, sid) in [("alice", &id), ("bob", &bob)] {
        let r = get_with_cookie(
            &format!("{}/db/_session", s.public),
            &format!("SyncGatewaySession={sid}"),
        );
        assert_eq!(r.body["userCtx"]["name"], who);
    }
    // the store never holds a session id
    let hay = s.store_bytes();
    assert!(!hay.is_empty());
    for sid in [&id, &bob] {
        assert!(
            !hay.windows(40).any(|w| w == sid.as_bytes()),
            "session id stored in clear"
        );
    }
}

#[test]
fn revocations_survive_kill_9() {
    let s = TestServer::start_with(with_users);
    let logout = login_id(&s, "alice", "pw-alice-1");
    let admin_deleted = login_id(&s, "alice", "pw-alice-1");
    let user_revoked = login_id(&s, "bob", "pw-bob-1");
    let kept = login_id(&s, "alice", "pw-alice-1");
    let cookie = |id: &str| format!("SyncGatewaySession={id}");

    let r = send(
        client()
            .delete(format!("{}/db/_session", s.public))
            .header("cookie", cookie(&logout)),
    );
    assert_eq!(r.0, 200);
    assert_eq!(
        delete(&format!("{}/db/_session/{admin_deleted}", s.admin)).0,
        200
    );
    assert_eq!(delete(&format!("{}/db/_user/bob/_session", s.admin)).0, 200);
    // the crash comes right after the acknowledgements
    let s = s.restart();
    let db2 = format!("{}/db/", s.public);
    for id in [&logout, &admin_deleted, &user_revoked] {
        assert_eq!(
            get_with_cookie(&db2, &cookie(id)).status,
            401,
            "a revoked session came back after kill -9"
        );
    }
    assert_eq!(
        get_with_cookie(&db2, &cookie(&kept)).status,
        200,
        "the untouched session survives"
    );
}
