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
use warp::filters::BoxedFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built server: listeners bound, not yet serving.
pub struct Application {
    server: Arc<Server>,
    listeners: Vec<(&'static str, TcpListener, BoxedFilter<(Reply,)>)>,
}

impl Application {
    /// Opens the store and binds every listener (port 0 picks a free port).
    pub async fn build(config: ServerConfig) -> Result<Application, String> {
        let server = Server::open(config).map_err(|e| e.to_string())?;
        let cfg = &server.config;
        let mut listeners = Vec::new();
        for (name, addr, filter) in [
            (
                "public",
                cfg.interface().to_string(),
                syncgate_public_api::routes(server.clone()),
            ),
            (
                "admin",
                cfg.admin_interface().to_string(),
                syncgate_admin_api::routes(server.clone()),
            ),
            (
                "metrics",
                cfg.metrics_interface().to_string(),
                crate::metrics::routes(server.clone()),
            ),
        ] {
            let sa = parse_addr(&addr).map_err(|e| e.0)?;
            let l = TcpListener::bind(sa)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({name}): {e}"))?;
            listeners.push((name, l, filter));
        }
        for (name, l, _) in &listeners {
            let a = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            // test harnesses read this line to learn ephemeral ports
            tracing::info!("{name} listener on http://{a}");
            println!("syncgate: {name} listener on http://{a}");
        }
        for db in server.databases() {
            tracing::info!(db = %db.name, docs = db.store.doc_count().unwrap_or(0), seq = db.store.last_seq(), "database online");
        }
        if let Ok(admin) = parse_addr(server.config.admin_interface()) {
            if !admin.ip().is_loopback() {
                tracing::warn!(
                    "the admin port {admin} is not on loopback: it has no authentication"
                );
            }
        }
        Ok(Application { server, listeners })
    }

    /// Serves until `signal` resolves, then drains and flushes.
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accept_loops = Vec::new();
        for (_, listener, filter) in self.listeners {
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                filter,
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

async fn accept_loop(
    listener: TcpListener,
    filter: BoxedFilter<(Reply,)>,
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
        let svc = hyper::service::service_fn(move |req| {
            handle(warp_svc.clone(), server.clone(), addr, req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Handles one request: 503 while draining, client address in, streaming body out.
async fn handle<S>(
    mut svc: S,
    server: Arc<Server>,
    addr: SocketAddr,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<ResBody>, Infallible>
where
    S: tower_service::Service<http::Request<Incoming>, Response = Reply, Error = Infallible>,
{
    if server.is_shutting_down() {
        let e = Error::ServiceUnavailable("The server is shutting down".into());
        return Ok(into_body(error_reply(&e)));
    }
    req.extensions_mut().insert(ClientAddr(addr));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = tower_service::Service::call(&mut svc, req).await?;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
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
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
