//! The running server: listeners, connections, graceful shutdown.
//!
//! Each listener runs hyper's HTTP/1 connection loop itself (warp 0.4 has no TLS and hides the
//! client address); the warp filter of the port is the service. The service wrapper inserts the
//! client address, swaps in streaming bodies for live feeds, and answers 503 while draining.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use syncgate_api_common::{error_reply, ClientAddr, Reply, StreamingBody};
use syncgate_core::config::{parse_addr, ServerConfig};
use syncgate_core::{Error, Server};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{route_class, HttpMetrics};
use warp::filters::BoxedFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server did not start, and the exit code that says so (2: the configuration or the
/// store cannot be used by this build; 1: anything else).
#[derive(Debug)]
pub struct StartupError {
    pub message: String,
    pub exit_code: u8,
}

impl From<String> for StartupError {
    fn from(message: String) -> Self {
        StartupError {
            message,
            exit_code: 1,
        }
    }
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A built server: listeners bound, not yet serving.
pub struct Application {
    server: Arc<Server>,
    tls: Option<TlsAcceptor>,
    listeners: Vec<(&'static str, TcpListener, BoxedFilter<(Reply,)>)>,
    http_metrics: HttpMetrics,
}

impl Application {
    /// Opens the store and binds every listener (port 0 picks a free port).
    pub async fn build(
        config: ServerConfig,
        tls: Option<TlsAcceptor>,
    ) -> Result<Application, StartupError> {
        let server = Server::open(config).await.map_err(|e| StartupError {
            exit_code: if matches!(e, Error::Incompatible(_)) {
                2
            } else {
                1
            },
            message: e.to_string(),
        })?;
        let cfg = &server.config;
        let mut listeners = Vec::new();
        let http_metrics = HttpMetrics::new();
        // the admin port serves the same text at /_metrics (for the console)
        let admin_metrics: syncgate_admin_api::MetricsText = {
            let (server, http) = (server.clone(), http_metrics.clone());
            Arc::new(move || {
                let (server, http) = (server.clone(), http.clone());
                Box::pin(async move { crate::metrics::render(&server, &http).await })
            })
        };
        for (name, addr, filter) in [
            (
                "public",
                cfg.interface().to_string(),
                syncgate_public_api::routes(server.clone()),
            ),
            (
                "admin",
                cfg.admin_interface().to_string(),
                syncgate_admin_api::routes(server.clone(), admin_metrics.clone()),
            ),
            (
                "metrics",
                cfg.metrics_interface().to_string(),
                crate::metrics::routes(server.clone(), http_metrics.clone()),
            ),
        ] {
            let sa = parse_addr(&addr).map_err(|e| e.0)?;
            let l = listen(sa).map_err(|e| format!("cannot listen on {addr} ({name}): {e}"))?;
            listeners.push((name, l, filter));
        }
        for (name, l, _) in &listeners {
            let a = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            // printed once, on stdout, whatever the log level: operators and test harnesses
            // read it to learn the (possibly ephemeral) ports
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!("syncgate: {name} listener on {scheme}://{a}");
        }
        for db in server.databases() {
            tracing::info!(db = %db.name(), docs = db.doc_count().await.unwrap_or(0), seq = db.last_seq(), "database online");
        }
        if let Ok(admin) = parse_addr(server.config.admin_interface()) {
            if !admin.ip().is_loopback() {
                tracing::warn!(
                    "the admin port {admin} is not on loopback: it has no authentication"
                );
            }
        }
        Ok(Application {
            server,
            tls,
            listeners,
            http_metrics,
        })
    }

    /// Serves until `signal` resolves, then drains and flushes.
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_loops = Vec::new();
        for (port, listener, filter) in self.listeners {
            accept_loops.push(tokio::spawn(accept_loop(
                port,
                self.http_metrics.clone(),
                listener,
                filter,
                self.tls.clone(),
                self.server.clone(),
                stop_rx.clone(),
                graceful.clone(),
            )));
        }
        signal.await;
        tracing::info!("shutting down: finishing in-flight requests");
        self.server.begin_shutdown();
        stop_tx.send_replace(true);
        for l in accept_loops {
            let _ = l.await;
        }
        let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within {DRAIN_TIMEOUT:?}");
        }
        if let Err(e) = self.server.flush() {
            tracing::error!("final flush failed: {e}");
        }
        tracing::info!("stopped");
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    port: &'static str,
    metrics: HttpMetrics,
    listener: TcpListener,
    filter: BoxedFilter<(Reply,)>,
    tls: Option<TlsAcceptor>,
    server: Arc<Server>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let warp_svc = warp::service(filter.clone());
        let server = server.clone();
        let metrics = metrics.clone();
        let svc = hyper::service::service_fn(move |req| {
            handle(
                warp_svc.clone(),
                server.clone(),
                addr,
                req,
                port,
                metrics.clone(),
            )
        });
        match &tls {
            None => serve_connection(stream, svc, &graceful),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls_stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            return tracing::debug!("TLS handshake with {addr} failed: {e}")
                        }
                        Err(_) => return tracing::debug!("TLS handshake with {addr} timed out"),
                    };
                    let conn = http1_builder().serve_connection(TokioIo::new(tls_stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
        }
    }
}

/// Longest time a request may take to produce its response head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest total size of request headers (beyond it: 431).
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1 settings: bounded header size (hyper answers 431 beyond it) and header read time
/// (slow-loris clients are dropped).
fn http1_builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024)
        .max_headers(100);
    b
}

fn serve_connection<S>(stream: tokio::net::TcpStream, svc: S, graceful: &GracefulShutdown)
where
    S: hyper::service::HttpService<Incoming, ResBody = ResBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let conn = graceful.watch(http1_builder().serve_connection(TokioIo::new(stream), svc));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended: {e}");
        }
    });
}

/// Handles one request: 503 while draining, client address in, streaming body out.
async fn handle<S>(
    mut svc: S,
    server: Arc<Server>,
    addr: SocketAddr,
    mut req: http::Request<Incoming>,
    port: &'static str,
    metrics: HttpMetrics,
) -> Result<http::Response<ResBody>, Infallible>
where
    S: tower_service::Service<http::Request<Incoming>, Response = Reply, Error = Infallible>,
{
    if server.is_shutting_down() {
        let e = Error::ServiceUnavailable("The server is shutting down".into());
        return Ok(into_body(error_reply(&e)));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        let mut r = syncgate_api_common::json_reply(
            431,
            &serde_json::json!({"error": "bad_request", "reason": "The request headers are too large"}),
        );
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return Ok(into_body(r));
    }
    req.extensions_mut().insert(ClientAddr(addr));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    // bounds every request up to its response head; live feeds stream their body afterwards
    let resp =
        match tokio::time::timeout(REQUEST_TIMEOUT, tower_service::Service::call(&mut svc, req))
            .await
        {
            Ok(r) => r?,
            Err(_) => error_reply(&Error::ServiceUnavailable(
                "The request took too long and was abandoned".into(),
            )),
        };
    let status = resp.status().as_u16();
    let route = route_class(&path);
    metrics.record(
        port,
        method.as_str(),
        route,
        status,
        started.elapsed().as_secs_f64(),
    );
    // the path is logged by route class only: a path can carry ids a user considers private
    tracing::debug!(port, %method, route, status, "request");
    Ok(into_body(resp))
}

/// Converts a warp reply into the connection's body type, swapping in a streaming body.
fn into_body(resp: Reply) -> http::Response<ResBody> {
    let stream = resp
        .extensions()
        .get::<StreamingBody>()
        .and_then(|s| s.take());
    match stream {
        Some(s) => {
            let body = StreamBody::new(s.map(|b| Ok::<_, BoxError>(Frame::data(b))));
            resp.map(|_| BodyExt::boxed_unsync(body))
        }
        None => resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    // registered now, before the listeners are announced: a SIGTERM right after startup is a
    // graceful stop too, not the default action
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {},
                _ = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Connections the kernel queues for a listener before syncgate accepts them (capped by
/// `net.core.somaxconn`). The default of Rust's and tokio's `bind`, 128, made clients arriving
/// together lose their connection attempt and retry after a second: 500 longpoll clients
/// connecting at once took 1.1 s instead of 0.13 s whenever the queue overflowed (the
/// kernel's `ListenOverflows` counter rose).
const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket on `sa` (address reuse on, as `TcpListener::bind` sets it).
fn listen(sa: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    socket.listen(LISTEN_BACKLOG)
}
