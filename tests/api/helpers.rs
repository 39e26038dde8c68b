//! Starts the real `syncgate` binary on ephemeral loopback ports with a generated config.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

/// A running server. Killed on drop.
#[allow(dead_code)]
pub struct TestServer {
    pub child: Child,
    pub public: String,
    pub admin: String,
    pub metrics: String,
    pub dir: PathBuf,
    /// Keeps the temporary directory alive.
    _tmp: Option<tempfile::TempDir>,
    pub log: PathBuf,
    pub config: Value,
}

/// A config with one database `db`, all listeners on loopback port 0, data in `dir`. With
/// `SYNCGATE_TEST_BACKEND=postgres`, every database lives in a fresh PostgreSQL database
/// (top-level `server`) instead of the embedded store.
pub fn base_config(dir: &Path) -> Value {
    let mut cfg = json!({
        "interface": "127.0.0.1:0",
        "adminInterface": "127.0.0.1:0",
        "metricsInterface": "127.0.0.1:0",
        "data_dir": dir.join("data"),
        "logging": {"console": {"log_level": "debug"}},
        "databases": {"db": {}}
    });
    if std::env::var("SYNCGATE_TEST_BACKEND").as_deref() == Ok("postgres") {
        cfg["server"] = json!(crate::pg_cluster::fresh_database());
    }
    cfg
}

#[allow(dead_code)]
impl TestServer {
    /// Starts with the base config.
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Starts with the base config changed by `edit`.
    pub fn start_with(edit: impl FnOnce(&mut Value)) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = base_config(tmp.path());
        edit(&mut cfg);
        let dir = tmp.path().to_path_buf();
        let mut s = Self::spawn(&dir, cfg);
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing directory (restart tests).
    pub fn spawn(dir: &Path, config: Value) -> TestServer {
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = dir.join(format!(
            "server-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BIN)
            .arg(&cfg_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start syncgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut public, mut admin, mut metrics) = (None, None, None);
        while public.is_none() || admin.is_none() || metrics.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not start; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            let url = line.rsplit(' ').next().unwrap_or("").to_string();
            if line.contains("public listener") {
                public = Some(url);
            } else if line.contains("admin listener") {
                admin = Some(url);
            } else if line.contains("metrics listener") {
                metrics = Some(url);
            }
        }
        TestServer {
            child,
            public: public.unwrap(),
            admin: admin.unwrap(),
            metrics: metrics.unwrap(),
            dir: dir.to_path_buf(),
            _tmp: None,
            log,
            config,
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Restarts on the same directory and config (after kill9/terminate).
    pub fn restart(mut self) -> TestServer {
        self.kill9();
        let tmp = self._tmp.take();
        let mut s = Self::spawn(&self.dir.clone(), self.config.clone());
        s._tmp = tmp;
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every byte the server stored: the files of its data directory, and the syncgate tables
    /// when its databases live in PostgreSQL (top-level `server`).
    pub fn store_bytes(&self) -> Vec<u8> {
        fn walk(dir: &Path, out: &mut Vec<u8>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.extend(b);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.join("data"), &mut out);
        if let Some(url) = self.config["server"].as_str() {
            out.extend(crate::pg_cluster::dump(url));
        }
        out
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.metrics))
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client with no pooling surprises.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Response as (status, JSON body or Null).
pub fn send(rb: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let r = rb.send().expect("request");
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub fn get(url: &str) -> (u16, Value) {
    send(client().get(url))
}

pub fn put(url: &str, body: &Value) -> (u16, Value) {
    send(client().put(url).json(body))
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    send(client().post(url).json(body))
}

pub fn delete(url: &str) -> (u16, Value) {
    send(client().delete(url))
}

/// Asserts a JSON error body with the given status and error name.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, error: &str) {
    assert_eq!(resp.0, status, "body: {}", resp.1);
    assert_eq!(resp.1["error"], error, "body: {}", resp.1);
    assert!(
        resp.1["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "reason missing: {}",
        resp.1
    );
}

/// A self-signed P-256 certificate for 127.0.0.1/localhost in `dir`: (cert path, key path).
#[allow(dead_code)]
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
