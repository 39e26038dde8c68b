//! Users, roles, GUEST, Basic auth, config-file principals, login throttling and CORS.

use std::time::Duration;

use base64::Engine;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::helpers::*;

/// A response with its headers and raw text.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn pair(&self) -> (u16, Value) {
        (self.status, self.body.clone())
    }
}

pub fn call(rb: reqwest::blocking::RequestBuilder) -> Resp {
    let r = rb.send().expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().unwrap_or_default();
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// GET on the public port with Basic credentials.
fn get_as(url: &str, user: &str, pass: &str) -> Resp {
    call(client().get(url).header("authorization", basic(user, pass)))
}

#[test]
fn user_endpoints_success_and_errors() {
    let s = TestServer::start();
    let users = format!("{}/db/_user", s.admin);
    assert_eq!(get(&format!("{users}/")), (200, json!([])));
    // POST creates (201), again 409
    let alice = json!({"name": "alice", "password": "pw-alice-1", "email": "alice@example.com",
                       "admin_channels": ["b", "a"], "admin_roles": ["editors"]});
    assert_eq!(post(&format!("{users}/"), &alice).0, 201);
    assert_error(&post(&format!("{users}/"), &alice), 409, "conflict");
    // GET: fields, sorted channels, never the password or its hash
    let r = call(client().get(format!("{users}/alice")));
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "alice");
    assert_eq!(r.body["email"], "alice@example.com");
    assert_eq!(r.body["disabled"], false);
    assert_eq!(r.body["admin_channels"], json!(["a", "b"]));
    assert_eq!(r.body["admin_roles"], json!(["editors"]));
    assert_eq!(r.body["all_channels"], json!(["!", "a", "b"]));
    assert_eq!(r.body["roles"], json!(["editors"]));
    assert!(r.body.get("password").is_none());
    assert!(
        !r.text.contains("pw-alice-1") && !r.text.contains("argon2"),
        "{}",
        r.text
    );
    // PUT creates (201) and partially updates (200)
    assert_eq!(
        put(&format!("{users}/bob"), &json!({"password": "pw-bob-1"})).0,
        201
    );
    assert_eq!(
        put(&format!("{users}/bob"), &json!({"admin_channels": ["x"]})).0,
        200
    );
    let (_, bob) = get(&format!("{users}/bob"));
    assert_eq!(bob["admin_channels"], json!(["x"]));
    // omitted fields stay, [] clears
    assert_eq!(
        put(
            &format!("{users}/bob"),
            &json!({"email": "bob@example.com"})
        )
        .0,
        200
    );
    let (_, bob) = get(&format!("{users}/bob"));
    assert_eq!(bob["admin_channels"], json!(["x"]));
    assert_eq!(
        put(&format!("{users}/bob"), &json!({"admin_channels": []})).0,
        200
    );
    let (_, bob) = get(&format!("{users}/bob"));
    assert_eq!(bob["admin_channels"], json!([]));
    assert_eq!(bob["email"], "bob@example.com");
    // a GET body can be PUT back unchanged (read-only fields included)
    let (_, a) = get(&format!("{users}/alice"));
    assert_eq!(put(&format!("{users}/alice"), &a).0, 200);
    // listing: sorted, GUEST excluded
    assert_eq!(get(&format!("{users}/")), (200, json!(["alice", "bob"])));
    let (st, full) = get(&format!("{users}/?name_only=false"));
    assert_eq!(st, 200);
    assert_eq!(
        full[0],
        json!({"name":"alice","email":"alice@example.com","disabled":false})
    );
    assert_error(&get(&format!("{users}/?limit=1")), 400, "bad_request");
    // errors
    for (body, why) in [
        (json!({"password": "pw-x-1"}), "missing name"),
        (json!({"name": "carol"}), "no password on create"),
        (
            json!({"name": "carol", "password": "ab"}),
            "password too short",
        ),
        (
            json!({"name": "carol", "password": "pw-c-1", "colour": "red"}),
            "unknown field",
        ),
        (
            json!({"name": "carol", "password": "pw-c-1", "email": "not-an-email"}),
            "invalid email",
        ),
        (
            json!({"name": "carol", "password": "pw-c-1", "admin_channels": "a"}),
            "channels not an array",
        ),
        (
            json!({"name": "carol", "password": 12345}),
            "password not a string",
        ),
        (
            json!({"name": "a/b", "password": "pw-c-1"}),
            "slash in name",
        ),
        (
            json!({"name": "a:b", "password": "pw-c-1"}),
            "colon in name",
        ),
        (
            json!({"name": "a,b", "password": "pw-c-1"}),
            "comma in name",
        ),
        (
            json!({"name": "a`b", "password": "pw-c-1"}),
            "backtick in name",
        ),
        (
            json!({"name": "x".repeat(240), "password": "pw-c-1"}),
            "240 bytes",
        ),
        (json!(["not", "an", "object"]), "array body"),
    ] {
        let r = post(&format!("{users}/"), &body);
        assert_error(&r, 400, "bad_request");
        assert!(!r.1.to_string().contains("12345"), "{why}: {}", r.1);
    }
    assert_eq!(
        post(
            &format!("{users}/"),
            &json!({"name": "x".repeat(239), "password": "pw-c-1"})
        )
        .0,
        201
    );
    assert_eq!(
        post(
            &format!("{users}/"),
            &json!({"name": "$funky#name?", "password": "pw-c-1"})
        )
        .0,
        201
    );
    assert_eq!(get(&format!("{users}/%24funky%23name%3F")).0, 200);
    let empty = call(
        client()
            .put(format!("{users}/bob"))
            .header("content-type", "application/json"),
    );
    assert_error(&empty.pair(), 400, "bad_request");
    assert_error(
        &put(&format!("{users}/bob"), &json!({"name": "robert"})),
        400,
        "bad_request",
    );
    for ro in [
        json!({"all_channels": ["zzz"]}),
        json!({"roles": ["admin"]}),
        json!({"jwt_issuer": "https://x"}),
    ] {
        assert_error(&put(&format!("{users}/alice"), &ro), 400, "bad_request");
    }
    assert_error(&get(&format!("{users}/nobody")), 404, "not_found");
    assert_error(&delete(&format!("{users}/nobody")), 404, "not_found");
    assert_error(
        &send(client().patch(format!("{users}/bob"))),
        405,
        "method_not_allowed",
    );
    // DELETE
    assert_eq!(delete(&format!("{users}/bob")).0, 200);
    assert_error(&get(&format!("{users}/bob")), 404, "not_found");
    // GUEST: readable, editable, never deletable, never created by POST
    let (st, g) = get(&format!("{users}/GUEST"));
    assert_eq!(st, 200);
    assert_eq!(g["disabled"], true);
    assert_eq!(
        put(
            &format!("{users}/GUEST"),
            &json!({"disabled": false, "admin_channels": ["pub"]})
        )
        .0,
        200
    );
    assert_error(
        &delete(&format!("{users}/GUEST")),
        405,
        "method_not_allowed",
    );
    assert_error(
        &post(&format!("{users}/"), &json!({"name": "GUEST"})),
        409,
        "conflict",
    );
    assert_error(
        &put(&format!("{users}/GUEST"), &json!({"password": "pw-guest"})),
        400,
        "bad_request",
    );
    // the public port hides the user API
    let r = get_as(
        &format!("{}/db/_user/alice", s.public),
        "alice",
        "pw-alice-1",
    );
    assert_error(&r.pair(), 404, "not_found");
    assert_eq!(r.body["reason"], "unknown URL");
    // unknown database
    assert_error(&get(&format!("{}/nodb/_user/", s.admin)), 404, "not_found");
}

#[test]
fn role_endpoints_and_role_channels() {
    let s = TestServer::start();
    let roles = format!("{}/db/_role", s.admin);
    assert_eq!(get(&format!("{roles}/")), (200, json!([])));
    assert_eq!(
        post(
            &format!("{roles}/"),
            &json!({"name": "editors", "admin_channels": ["e1"]})
        )
        .0,
        201
    );
    assert_error(
        &post(&format!("{roles}/"), &json!({"name": "editors"})),
        409,
        "conflict",
    );
    assert_eq!(
        put(
            &format!("{roles}/readers"),
            &json!({"admin_channels": ["r1"]})
        )
        .0,
        201
    );
    assert_eq!(
        put(
            &format!("{roles}/readers"),
            &json!({"admin_channels": ["r1", "r2"]})
        )
        .0,
        200
    );
    assert_eq!(
        get(&format!("{roles}/")),
        (200, json!(["editors", "readers"]))
    );
    let (st, r) = get(&format!("{roles}/readers"));
    assert_eq!(st, 200);
    assert_eq!(
        r,
        json!({"name": "readers", "admin_channels": ["r1", "r2"], "all_channels": ["!", "r1", "r2"]})
    );
    assert_eq!(
        put(&format!("{roles}/readers"), &r).0,
        200,
        "GET body PUT back"
    );
    for bad in [
        json!({"name": "x", "password": "nope"}),
        json!({"name": "x", "admin_roles": []}),
        json!({"admin_channels": ["a"]}),
        json!({"name": "a/b"}),
    ] {
        assert_error(&post(&format!("{roles}/"), &bad), 400, "bad_request");
    }
    assert_error(
        &put(&format!("{roles}/readers"), &json!({"all_channels": ["q"]})),
        400,
        "bad_request",
    );
    assert_error(
        &put(&format!("{roles}/readers"), &json!({"name": "other"})),
        400,
        "bad_request",
    );
    // a user's channels include its roles' channels
    post(
        &format!("{}/db/_user/", s.admin),
        &json!({"name": "u", "password": "pw-u-1", "admin_channels": ["own"], "admin_roles": ["readers"]}),
    );
    let (_, u) = get(&format!("{}/db/_user/u", s.admin));
    assert_eq!(u["all_channels"], json!(["!", "own", "r1", "r2"]));
    let r = get_as(&format!("{}/db/_session", s.public), "u", "pw-u-1");
    let chans = r.body["userCtx"]["channels"].as_object().unwrap();
    assert!(
        ["!", "own", "r1", "r2"]
            .iter()
            .all(|c| chans.contains_key(*c)),
        "{}",
        r.body
    );
    assert_eq!(r.body["userCtx"]["roles"], json!(["readers"]));
    // deleting the role removes its channels
    assert_eq!(delete(&format!("{roles}/readers")).0, 200);
    assert_error(&get(&format!("{roles}/readers")), 404, "not_found");
    assert_error(&delete(&format!("{roles}/readers")), 404, "not_found");
    let (_, u) = get(&format!("{}/db/_user/u", s.admin));
    assert_eq!(u["all_channels"], json!(["!", "own"]));
    assert_error(
        &send(
            client()
                .get(format!("{}/db/_role/", s.public))
                .header("authorization", basic("u", "pw-u-1")),
        ),
        404,
        "not_found",
    );
}

#[test]
fn basic_auth_guest_and_disabled_users() {
    let s = TestServer::start();
    let db = format!("{}/db", s.public);
    post(
        &format!("{}/db/_user/", s.admin),
        &json!({"name": "alice", "password": "pw-alice-1", "admin_channels": ["*"]}),
    );
    // success; the cached second request is fast too
    let ok = get_as(&format!("{db}/"), "alice", "pw-alice-1");
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-1").status, 200);
    let r = get_as(&format!("{db}/_session"), "alice", "pw-alice-1");
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["userCtx"]["name"], "alice");
    assert!(
        r.body["userCtx"]["channels"].get("*").is_some(),
        "{}",
        r.body
    );
    // wrong password, unknown user: 401 with a challenge for curl-like clients...
    for (u, p) in [("alice", "wrong-pw"), ("nobody", "pw-alice-1")] {
        let r = get_as(&format!("{db}/"), u, p);
        assert_error(&r.pair(), 401, "unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"syncgate\"")
        );
    }
    // ...never for browser/app requests (Origin or X-Requested-With)
    for (h, v) in [
        ("origin", "app://obsidian.md"),
        ("x-requested-with", "XMLHttpRequest"),
    ] {
        let r = call(
            client()
                .get(format!("{db}/"))
                .header("authorization", basic("alice", "x"))
                .header(h, v),
        );
        assert_eq!(r.status, 401);
        assert!(r.header("www-authenticate").is_none(), "{h}");
    }
    // malformed Basic credentials
    for h in ["Basic !!!", "Basic Zm9v", "Digest abc"] {
        let r = call(client().get(format!("{db}/")).header("authorization", h));
        assert_error(&r.pair(), 401, "unauthorized");
    }
    // GUEST off: anonymous 401 Login required; _session answers name null
    let r = call(client().get(format!("{db}/")));
    assert_error(&r.pair(), 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"syncgate\"")
    );
    assert_eq!(
        get(&format!("{db}/_session")).1,
        json!({"ok": true, "authentication_handlers": ["default", "cookie"],
               "userCtx": {"name": null, "channels": {}, "roles": []}})
    );
    // GUEST on: anonymous requests act as GUEST with GUEST's channels
    put(
        &format!("{}/db/_user/GUEST", s.admin),
        &json!({"disabled": false, "admin_channels": ["public"]}),
    );
    assert_eq!(get(&format!("{db}/")).0, 200);
    let (_, sess) = get(&format!("{db}/_session"));
    assert_eq!(sess["userCtx"]["name"], Value::Null);
    assert!(
        sess["userCtx"]["channels"].get("public").is_some(),
        "{sess}"
    );
    // ...but wrong credentials are still a 401
    assert_eq!(get_as(&format!("{db}/"), "alice", "wrong-pw").status, 401);
    put(
        &format!("{}/db/_user/GUEST", s.admin),
        &json!({"disabled": true}),
    );
    assert_eq!(get(&format!("{db}/")).0, 401);
    // disabled user: refused, even with the (cached) right password
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"disabled": true}),
    );
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-1").status, 401);
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"disabled": false}),
    );
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-1").status, 200);
    // password change: the old password stops working at once
    put(
        &format!("{}/db/_user/alice", s.admin),
        &json!({"password": "pw-alice-2"}),
    );
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-1").status, 401);
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-2").status, 200);
    // deleted user
    delete(&format!("{}/db/_user/alice", s.admin));
    assert_eq!(get_as(&format!("{db}/"), "alice", "pw-alice-2").status, 401);
    // unknown database: 401, no enumeration
    assert_eq!(
        get_as(&format!("{}/nodb/", s.public), "alice", "pw-alice-2").status,
        401
    );
}

#[test]
fn disable_password_auth_refuses_basic_without_a_challenge() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"] = json!({
            "disable_password_auth": true,
            "users": {"alice": {"password": "pw-alice-1"}}
        });
    });
    let r = get_as(&format!("{}/db/", s.public), "alice", "pw-alice-1");
    assert_error(&r.pair(), 401, "unauthorized");
    assert!(r.header("www-authenticate").is_none());
    let r = call(
        client()
            .post(format!("{}/db/_session", s.public))
            .json(&json!({"name": "alice", "password": "pw-alice-1"})),
    );
    assert_error(&r.pair(), 401, "unauthorized");
    // the admin port can still make a session for the user (custom auth)
    assert_eq!(
        post(
            &format!("{}/db/_session", s.admin),
            &json!({"name": "alice"})
        )
        .0,
        200
    );
}

#[test]
fn config_users_are_created_once_and_guest_always_reset() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"] = json!({
            "users": {
                "cfg-user": {"password": "pw-config-1", "admin_channels": ["c1"], "email": "c@example.com"},
                "GUEST": {"disabled": false, "admin_channels": ["g1"]}
            },
            "roles": {"cfg-role": {"admin_channels": ["rc"]}}
        });
    });
    let (st, u) = get(&format!("{}/db/_user/cfg-user", s.admin));
    assert_eq!(st, 200);
    assert_eq!(u["admin_channels"], json!(["c1"]));
    assert_eq!(u["email"], "c@example.com");
    assert_eq!(
        get(&format!("{}/db/_role/cfg-role", s.admin)).1["admin_channels"],
        json!(["rc"])
    );
    assert_eq!(
        get_as(&format!("{}/db/", s.public), "cfg-user", "pw-config-1").status,
        200
    );
    assert_eq!(
        get(&format!("{}/db/_user/GUEST", s.admin)).1["admin_channels"],
        json!(["g1"])
    );
    // change them through the admin API
    put(
        &format!("{}/db/_user/cfg-user", s.admin),
        &json!({"password": "pw-changed-1", "admin_channels": ["c2"]}),
    );
    put(
        &format!("{}/db/_role/cfg-role", s.admin),
        &json!({"admin_channels": ["rc2"]}),
    );
    put(
        &format!("{}/db/_user/GUEST", s.admin),
        &json!({"disabled": true, "admin_channels": []}),
    );
    let s = s.restart();
    let (_, u) = get(&format!("{}/db/_user/cfg-user", s.admin));
    assert_eq!(
        u["admin_channels"],
        json!(["c2"]),
        "config user not overwritten"
    );
    assert_eq!(
        get_as(&format!("{}/db/", s.public), "cfg-user", "pw-config-1").status,
        401
    );
    assert_eq!(
        get_as(&format!("{}/db/", s.public), "cfg-user", "pw-changed-1").status,
        200
    );
    assert_eq!(
        get(&format!("{}/db/_role/cfg-role", s.admin)).1["admin_channels"],
        json!(["rc2"])
    );
    let (_, g) = get(&format!("{}/db/_user/GUEST", s.admin));
    assert_eq!(g["disabled"], false, "GUEST always from the config");
    assert_eq!(g["admin_channels"], json!(["g1"]));
    // deleted config users come back at the next start
    delete(&format!("{}/db/_user/cfg-user", s.admin));
    let s = s.restart();
    assert_eq!(
        get_as(&format!("{}/db/", s.public), "cfg-user", "pw-config-1").status,
        200
    );
}

#[test]
fn config_principal_errors_name_the_json_path() {
    for (db, needle) in [
        (
            json!({"users": {"alice": {"password": "pw-a-1", "passwrd": "x"}}}),
            "unknown key \"passwrd\" at $.databases.db.users.alice (did you mean \"password\"?)",
        ),
        (
            json!({"roles": {"r": {"admin_channel": ["x"]}}}),
            "at $.databases.db.roles.r",
        ),
        (
            json!({"users": {"alice": {"admin_channels": ["x"]}}}),
            "$.databases.db.users.alice.password",
        ),
        (
            json!({"users": {"alice": {"password": "ab"}}}),
            "$.databases.db.users.alice",
        ),
        (
            json!({"users": {"alice": {"password": "pw-a-1", "email": "nope"}}}),
            "Invalid email",
        ),
        (
            json!({"users": {"a/b": {"password": "pw-a-1"}}}),
            "$.databases.db.users.a/b",
        ),
        (
            json!({"users": {"GUEST": {"disabled": false}}, "guest": {"disabled": true}}),
            "GUEST is configured twice",
        ),
        (
            json!({"session_cookie_same_site": "None"}),
            "needs a Secure cookie",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let cfg = json!({"data_dir": dir.path().join("data"), "databases": {"db": db}});
        std::fs::write(&path, cfg.to_string()).unwrap();
        let out = std::process::Command::new(BIN)
            .arg("--check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{db}: {err}");
        assert!(err.contains(needle), "{db}: expected {needle:?} in {err}");
        assert!(!err.contains("pw-a-1"), "{err}");
    }
}

#[test]
fn passwords_never_appear_in_responses_or_the_debug_log() {
    let secret = "Tr0ub4dor-and-3-horses";
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["users"] = json!({"cfg": {"password": "Cfg-Secret-Pw-77"}});
    });
    let users = format!("{}/db/_user", s.admin);
    let mut bodies = Vec::new();
    bodies.push(
        call(
            client()
                .post(format!("{users}/"))
                .json(&json!({"name": "alice", "password": secret})),
        )
        .text,
    );
    bodies.push(call(client().get(format!("{users}/alice"))).text);
    bodies.push(
        call(
            client()
                .put(format!("{users}/alice"))
                .json(&json!({"password": secret, "email": "bad"})),
        )
        .text,
    );
    bodies.push(
        call(
            client()
                .put(format!("{users}/alice"))
                .json(&json!({"password": 99887766})),
        )
        .text,
    );
    bodies.push(get_as(&format!("{}/db/", s.public), "alice", secret).text);
    bodies.push(get_as(&format!("{}/db/", s.public), "alice", &format!("{secret}x")).text);
    bodies.push(get_as(&format!("{}/db/_session", s.public), "alice", secret).text);
    bodies.push(
        call(
            client()
                .post(format!("{}/db/_session", s.public))
                .json(&json!({"name": "alice", "password": secret})),
        )
        .text,
    );
    bodies.push(
        call(
            client()
                .post(format!("{}/db/_session", s.public))
                .json(&json!({"name": "alice", "password": secret, "x": 1})),
        )
        .text,
    );
    for b in &bodies {
        assert!(
            !b.contains(secret) && !b.contains("99887766") && !b.contains("argon2"),
            "{b}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log_text();
    assert!(log.contains("DEBUG"), "debug logging is on");
    for needle in [secret, "Cfg-Secret-Pw-77", "99887766", "argon2id"] {
        assert!(!log.contains(needle), "{needle} in the log");
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"));
    assert!(!log.contains(&b64));
    // nor in the data directory's config copy of a registered database, nor as plain text in the store
    let data = s.store_bytes();
    assert!(!data.is_empty());
    assert!(!contains(&data, secret.as_bytes()), "password in the store");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A client whose connections come from another loopback address.
fn client_from(addr: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(Some(addr.parse().unwrap()))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn failed_logins_are_throttled_per_name_and_address_then_lift() {
    let s = TestServer::start_with(|c| {
        c["databases"]["db"]["users"] = json!({
            "victim": {"password": "pw-victim-1"},
            "other": {"password": "pw-other-1"}
        });
    });
    let url = format!("{}/db/", s.public);
    let attempt = |c: &reqwest::blocking::Client, u: &str, p: &str| {
        call(c.get(&url).header("authorization", basic(u, p)))
    };
    let here = client();
    for i in 0..10 {
        assert_eq!(attempt(&here, "victim", "wrong").status, 401, "failure {i}");
    }
    // the 11th, even with the right password: 429 with Retry-After
    let r = attempt(&here, "victim", "pw-victim-1");
    assert_error(&r.pair(), 429, "too_many_requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // the same via POST /_session
    let r = call(
        here.post(format!("{}/db/_session", s.public))
            .json(&json!({"name": "victim", "password": "pw-victim-1"})),
    );
    assert_eq!(r.status, 429);
    // another user from the same address, and the same user from another address: unaffected
    assert_eq!(attempt(&here, "other", "pw-other-1").status, 200);
    assert_eq!(
        attempt(&client_from("127.0.0.2"), "victim", "pw-victim-1").status,
        200
    );
    // it lifts after Retry-After
    std::thread::sleep(Duration::from_secs(retry + 1));
    assert_eq!(attempt(&here, "victim", "pw-victim-1").status, 200);
}

fn cors_server() -> TestServer {
    TestServer::start_with(|c| {
        c["CORS"] = json!({
            "Origin": ["app://obsidian.md", "capacitor://localhost", "http://localhost"],
            "LoginOrigin": ["app://obsidian.md", "capacitor://localhost", "http://localhost"],
            "Headers": ["X-Custom"],
            "MaxAge": 1234
        });
        c["databases"]["db"]["users"] =
            json!({"alice": {"password": "pw-alice-1", "admin_channels": ["*"]}});
        c["databases"]["other"] =
            json!({"cors": {"origin": ["https://only.example"], "login_origin": []}});
    })
}

#[test]
fn cors_preflight_and_actual_requests_for_app_origins() {
    let s = cors_server();
    for origin in [
        "app://obsidian.md",
        "capacitor://localhost",
        "http://localhost",
    ] {
        // preflight, no credentials needed
        let r = call(
            client()
                .request(
                    reqwest::Method::OPTIONS,
                    format!("{}/db/_changes", s.public),
                )
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
        );
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-max-age"), Some("1234"));
        let methods = r.header("access-control-allow-methods").unwrap();
        assert!(
            methods.contains("POST") && methods.contains("PUT"),
            "{methods}"
        );
        let headers = r
            .header("access-control-allow-headers")
            .unwrap()
            .to_lowercase();
        for h in ["authorization", "content-type", "x-custom"] {
            assert!(headers.contains(h), "{headers}");
        }
        // actual request with credentials
        let r = call(
            client()
                .get(format!("{}/db/", s.public))
                .header("origin", origin)
                .header("authorization", basic("alice", "pw-alice-1")),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        // errors carry CORS headers too (so the app can read its 401), but no Basic challenge
        let r = call(
            client()
                .get(format!("{}/db/", s.public))
                .header("origin", origin),
        );
        assert_eq!(r.status, 401);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r.header("www-authenticate").is_none());
        // login from an allowed login origin
        let r = call(
            client()
                .post(format!("{}/db/_session", s.public))
                .header("origin", origin)
                .json(&json!({"name": "alice", "password": "pw-alice-1"})),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(r.header("set-cookie").is_some());
    }
    // a rejected origin: no allow-origin header on preflight or response, login refused
    let evil = "https://evil.example";
    let r = call(
        client()
            .request(reqwest::Method::OPTIONS, format!("{}/db/", s.public))
            .header("origin", evil)
            .header("access-control-request-method", "GET"),
    );
    assert!(r.header("access-control-allow-origin").is_none());
    let r = call(
        client()
            .get(format!("{}/db/", s.public))
            .header("origin", evil)
            .header("authorization", basic("alice", "pw-alice-1")),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-credentials").is_none());
    let r = call(
        client()
            .post(format!("{}/db/_session", s.public))
            .header("origin", evil)
            .json(&json!({"name": "alice", "password": "pw-alice-1"})),
    );
    assert_error(&r.pair(), 400, "bad_request");
    assert!(r.body["reason"].as_str().unwrap().contains("No CORS"));
    assert!(r.header("set-cookie").is_none());
    // the per-database block overrides the server's
    let r = call(
        client()
            .get(format!("{}/other/", s.public))
            .header("origin", "app://obsidian.md"),
    );
    assert!(r.header("access-control-allow-origin").is_none());
    let r = call(
        client()
            .get(format!("{}/other/", s.public))
            .header("origin", "https://only.example"),
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://only.example")
    );
    let r = call(
        client()
            .post(format!("{}/other/_session", s.public))
            .header("origin", "https://only.example")
            .json(&json!({"name": "x", "password": "y"})),
    );
    assert_eq!(r.status, 400, "login_origin empty for this db");
    // no CORS configured: an Origin login is refused, plain requests carry no CORS headers
    let plain = TestServer::start();
    let r = call(
        client()
            .get(format!("{}/db/", plain.public))
            .header("origin", "http://localhost"),
    );
    assert!(r.header("access-control-allow-origin").is_none());
    let r = call(
        client()
            .post(format!("{}/db/_session", plain.public))
            .header("origin", "http://localhost")
            .json(&json!({"name": "x", "password": "y"})),
    );
    assert_eq!(r.status, 400);
}
