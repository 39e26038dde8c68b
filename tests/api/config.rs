//! Config errors: exit status 2 with a one-line message; --check-config; --help; --version.

use std::process::Command;

use crate::helpers::BIN;

fn run_with(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, config).unwrap();
    let start = std::time::Instant::now();
    let out = Command::new(BIN)
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        start.elapsed().as_secs() < 5,
        "config errors must exit quickly"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_errors_exit_2_with_a_clear_line() {
    for (cfg, needle) in [
        (
            r#"{"databases":{"db":{"revs_limt":30}}}"#,
            "unknown key \"revs_limt\" at $.databases.db (did you mean \"revs_limit\"?)",
        ),
        (
            r#"{"intrface":"127.0.0.1:1"}"#,
            "did you mean \"interface\"",
        ),
        ("{\n\"interface\": ,\n}", "line 2 column"),
        (r#"{"interface":"not-an-address"}"#, "not a valid address"),
        (
            r#"{"interface":"${SYNCGATE_TEST_UNSET_VAR}"}"#,
            "SYNCGATE_TEST_UNSET_VAR is not set",
        ),
        (r#"{"databases":{"Bad Name":{}}}"#, "invalid database name"),
        (
            r#"{"SSLCert":"/nonexistent.pem","SSLKey":"/nonexistent.key"}"#,
            "cannot read",
        ),
        (r#"[]"#, "$"),
    ] {
        let (code, stderr) = run_with(cfg);
        assert_eq!(code, Some(2), "{cfg}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{cfg}: expected {needle:?} in {stderr:?}"
        );
        assert!(stderr.contains("c.json"), "names the file: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn check_config_help_version() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"interface":"127.0.0.1:${SG_PORT_FOR_TEST:-4984}","databases":{"db":{}}}"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"nope":1}"#).unwrap();
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--check-config"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    // the repository's config.json is valid
    let repo_cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config.json");
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg(repo_cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
