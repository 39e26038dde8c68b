//! The `syncgate` binary: parses the CLI, loads the config, sets up logging and runs the
//! [`app::Application`] until SIGINT/SIGTERM.

mod app;
mod memory;
mod metrics;
mod tls;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncgate_core::config::ServerConfig;

/// A Sync Gateway-style sync replication server.
#[derive(Parser, Debug)]
#[command(name = "syncgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The JSON config file.
    #[arg(default_value = "config.json")]
    config: PathBuf,
    /// Validate CONFIG and exit (0 = valid, 2 = invalid) without binding any port.
    #[arg(long, value_name = "CONFIG")]
    check_config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Copy a database from the store CONFIG gives it (normally the embedded store) into a
    /// PostgreSQL database, with syncgate stopped; then set the database's `server` to that URL.
    Migrate {
        /// The database to copy (a name under `databases` in CONFIG).
        #[arg(long)]
        db: String,
        /// The target: postgres://USER:PASSWORD@HOST:PORT/DBNAME (or $VAR naming it).
        #[arg(long)]
        to: String,
        /// The JSON config file.
        #[arg(default_value = "config.json")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    memory::fix_mmap_threshold();
    let cli = Cli::parse();
    if let Some(Command::Migrate { db, to, config }) = cli.command {
        return migrate(&config, &db, &to);
    }
    if let Some(path) = cli.check_config {
        return match ServerConfig::load(&path) {
            Ok(_) => {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("syncgate: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match ServerConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncgate: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match (&config.ssl_cert, &config.ssl_key) {
        (Some(c), Some(k)) => match tls::acceptor(c, k) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("syncgate: {}: {e}", cli.config.display());
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    init_tracing(config.log_level());
    memory::spawn_trimmer();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let stop = app::shutdown_signal();
        let app = match app::Application::build(config, tls).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("syncgate: {e}");
                return ExitCode::from(e.exit_code);
            }
        };
        app.run_until_stopped(stop).await;
        ExitCode::SUCCESS
    })
}

fn init_tracing(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(match level {
            "none" => "off".to_string(),
            // the PostgreSQL client logs every statement with its parameters (session keys,
            // password hashes) at debug: never below info
            "debug" | "trace" => format!("{level},tokio_postgres=info"),
            _ => level.to_string(),
        }),
    };
    // colours only for a person at a terminal (and never with NO_COLOR): log files, journald
    // and pipes get plain text
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// `syncgate migrate`: exit 0 when copied, 2 for a bad config or target, 1 otherwise.
fn migrate(config_path: &std::path::Path, db: &str, to: &str) -> ExitCode {
    let config = match ServerConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncgate: {e}");
            return ExitCode::from(2);
        }
    };
    // the URL may be given as $VAR (it holds a password: keep it out of the shell history)
    let to = match to.strip_prefix('$') {
        Some(var) => match std::env::var(var.trim_start_matches('{').trim_end_matches('}')) {
            Ok(v) => v,
            Err(_) => {
                eprintln!("syncgate migrate: --to names ${var}, which is not set");
                return ExitCode::from(2);
            }
        },
        None => to.to_string(),
    };
    init_tracing(config.log_level());
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let result = rt.block_on(async {
        let mut last_report = std::time::Instant::now();
        let mut progress = |n: u64| {
            if last_report.elapsed() >= std::time::Duration::from_secs(2) {
                eprintln!("syncgate migrate: {n} documents copied");
                last_report = std::time::Instant::now();
            }
        };
        syncgate_core::migrate::migrate(&config, db, &to, &mut progress).await
    });
    match result {
        Ok(r) => {
            let c = &r.copied;
            println!(
                "syncgate migrate: database \"{db}\" copied in {:.1} s: {} documents ({} leaf revisions), {} users, {} roles, {} sessions, {} settings",
                started.elapsed().as_secs_f64(),
                c.documents,
                c.revisions,
                c.users,
                c.roles,
                c.sessions,
                c.settings
            );
            if r.sessions_dropped {
                println!(
                    "syncgate migrate: the target already had another session key: sessions were not copied (users log in again)"
                );
            }
            println!(
                "syncgate migrate: now set \"server\" of database \"{db}\" in {} to the PostgreSQL URL and start syncgate",
                config_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncgate migrate: {e}");
            let code = match e {
                syncgate_core::Error::BadRequest(_)
                | syncgate_core::Error::NotFound(_)
                | syncgate_core::Error::Conflict(_)
                | syncgate_core::Error::Incompatible(_) => 2,
                _ => 1,
            };
            ExitCode::from(code)
        }
    }
}

/// The multi-threaded runtime both commands run on; exit 1 when it cannot start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("syncgate: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}
