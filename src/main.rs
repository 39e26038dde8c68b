//! The `syncgate` binary: parses the CLI, loads the config, sets up logging and runs the
//! [`app::Application`] until SIGINT/SIGTERM.

mod app;
mod metrics;
mod tls;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use syncgate_core::config::ServerConfig;

/// A Sync Gateway-style sync replication server.
#[derive(Parser, Debug)]
#[command(name = "syncgate", version, about)]
struct Cli {
    /// The JSON config file.
    #[arg(default_value = "config.json")]
    config: PathBuf,
    /// Validate CONFIG and exit (0 = valid, 2 = invalid) without binding any port.
    #[arg(long, value_name = "CONFIG")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let app = match app::Application::build(config, tls).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("syncgate: {e}");
                return ExitCode::from(1);
            }
        };
        app.run_until_stopped(app::shutdown_signal()).await;
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
