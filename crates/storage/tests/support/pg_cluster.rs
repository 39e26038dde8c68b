//! A PostgreSQL server for tests: `SYNCGATE_TEST_POSTGRES` (a `postgres://` URL) when set,
//! otherwise a throwaway cluster this process starts (Debian's `postgresql` package:
//! `initdb`/`pg_ctl` from /usr/lib/postgresql/N/bin, run as the `postgres` OS user when we are
//! root) in a temp dir, on a free loopback port, with its socket in that dir. A watchdog
//! stops the cluster and removes the dir once this test process has exited. Without the
//! binaries, tests that need it fail with how to install them (never skipped).
//!
//! Shared by the storage tests and the black-box tests (`#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// URL of the test server's maintenance database (`…/postgres`).
pub fn server_url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    match URL.get_or_init(|| match std::env::var("SYNCGATE_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => start_cluster(),
    }) {
        Ok(url) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A fresh, empty PostgreSQL database on the test server; its URL.
pub fn fresh_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "sgtest_{}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let url = server_url();
    // on a thread of its own: callers may be inside a runtime (`#[tokio::test]`)
    let (u, n) = (url.clone(), name.clone());
    std::thread::spawn(move || create_database(&u, &n))
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    with_database(&url, &name)
}

fn create_database(url: &str, name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
    });
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let base = match rest.find('/') {
        Some(i) => &base[..base.len() - rest.len() + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): these tests \
         need a real PostgreSQL server. Install it (`apt-get install postgresql`; scripts/test \
         does this) or point SYNCGATE_TEST_POSTGRES at one (postgres://USER:PASSWORD@HOST:PORT/DB)."
            .to_string()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root (the server refuses root).
fn pg_command(bin: &Path, program: &str, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn start_cluster() -> Result<String, String> {
    let c = Dedicated::create("shared")?;
    let url = c.url();
    // stopped by its watchdog when this process exits
    std::mem::forget(c);
    Ok(url)
}

/// The `postgres` user's password on a [`Dedicated::start_tls`] cluster.
pub const TLS_PASSWORD: &str = "hunter2";

/// A cluster of its own (for tests that stop and restart PostgreSQL). Stopped and removed on
/// drop; a watchdog does the same if this process dies first.
pub struct Dedicated {
    bin: PathBuf,
    root: bool,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    /// More server options (`-c ssl=on`).
    extra: String,
}

impl Dedicated {
    /// Starts a new cluster; panics with how to install PostgreSQL when it is missing.
    pub fn start() -> Dedicated {
        static N: AtomicUsize = AtomicUsize::new(0);
        Dedicated::create(&format!("own{}", N.fetch_add(1, Ordering::SeqCst)))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A cluster that accepts only TLS connections (`hostssl`, user `postgres` with password
    /// [`TLS_PASSWORD`], SCRAM), with a server certificate
    /// for `localhost` and 127.0.0.1 signed by a CA made here (openssl CLI). Returns it, the
    /// CA's certificate file and another CA's (which did not sign it).
    pub fn start_tls() -> (Dedicated, PathBuf, PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!("tls{}", N.fetch_add(1, Ordering::SeqCst));
        let c = Dedicated::init(&tag).unwrap_or_else(|e| panic!("{e}"));
        let script = "set -e; cd \"$1\"
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=syncgate-test-ca 2>/dev/null
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout other.key -out other-ca.crt -days 2 -subj /CN=syncgate-other-ca 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext 2>/dev/null
            chmod 600 server.key
            printf 'local all all trust\\nhostssl all all 127.0.0.1/32 scram-sha-256\\n' > pg_hba.conf";
        let mut gen = pg_command(Path::new("/bin"), "sh", c.root);
        gen.args(["-c", script, "sh"]).arg(&c.data);
        run(gen, "making the test certificates").unwrap_or_else(|e| panic!("{e}"));
        let mut c = c;
        c.extra = " -c ssl=on".into();
        c.start_server().unwrap_or_else(|e| panic!("{e}"));
        // TCP clients authenticate with a password (SCRAM over TLS), set over the socket
        let mut psql = pg_command(&c.bin, "psql", c.root);
        psql.arg("-h")
            .arg(&c.dir)
            .args([
                "-p",
                &c.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-c",
            ])
            .arg(format!("ALTER USER postgres PASSWORD '{TLS_PASSWORD}'"));
        run(psql, "setting the password").unwrap_or_else(|e| panic!("{e}"));
        let (ca, other) = (c.data.join("ca.crt"), c.data.join("other-ca.crt"));
        (c, ca, other)
    }

    fn create(tag: &str) -> Result<Dedicated, String> {
        let c = Dedicated::init(tag)?;
        c.start_server()?;
        Ok(c)
    }

    /// A new cluster (not started), stopped and removed by a watchdog once this process is gone.
    fn init(tag: &str) -> Result<Dedicated, String> {
        let bin = bin_dir()?;
        let root = is_root();
        let dir = std::env::temp_dir().join(format!("syncgate-pg-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&dir);
                    c
                },
                "chown",
            )?;
        }
        let mut initdb = pg_command(&bin, "initdb", root);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        run(initdb, "initdb")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let c = Dedicated {
            bin,
            root,
            dir,
            data,
            port,
            extra: String::new(),
        };
        // the watchdog: stops the cluster and removes its dir once this process is gone
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {runas}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            runas = if c.root { "runuser -u postgres -- " } else { "" },
            pg_ctl = c.bin.join("pg_ctl").display(),
            data = c.data.display(),
            dir = c.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the cluster watchdog: {e}"))?;
        Ok(c)
    }

    fn start_server(&self) -> Result<(), String> {
        let mut start = pg_command(&self.bin, "pg_ctl", self.root);
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300{}",
                self.port,
                self.dir.display(),
                self.extra
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start")
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The maintenance database's URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: open connections are ended).
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bin, "pg_ctl", self.root);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(stop, "pg_ctl stop").unwrap();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.start_server().unwrap();
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        let mut stop = pg_command(&self.bin, "pg_ctl", self.root);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"]);
        let _ = run(stop, "pg_ctl stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every text and bytea value of the syncgate tables in the database at `url` (for tests
/// that check what is, or is not, stored).
pub fn dump(url: &str) -> Vec<u8> {
    use tokio_postgres::types::Type;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        let tables = client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'syncgate\\_%'",
                &[],
            )
            .await
            .unwrap();
        for t in tables {
            let table: String = t.get(0);
            for row in client
                .query(&format!("SELECT * FROM {table}"), &[])
                .await
                .unwrap()
            {
                for (i, col) in row.columns().iter().enumerate() {
                    if *col.type_() == Type::BYTEA {
                        out.extend(row.get::<_, Option<Vec<u8>>>(i).unwrap_or_default());
                    } else if *col.type_() == Type::TEXT {
                        out.extend(
                            row.get::<_, Option<String>>(i)
                                .unwrap_or_default()
                                .into_bytes(),
                        );
                    }
                    out.push(0);
                }
            }
        }
        out
    })
}
