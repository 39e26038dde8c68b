//! The metrics listener: Prometheus text at `GET /metrics`, `GET /_ping`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use syncgate_api_common::reply::bytes_reply;
use syncgate_api_common::{error_reply, Reply};
use syncgate_core::{Error, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

type Labels = Vec<(String, String)>;

/// Per-request metrics, recorded by the connection layer for every port.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl HttpMetrics {
    pub fn new() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    /// Records one answered request. `route` is a bounded class (never a doc id).
    pub fn record(
        &self,
        port: &'static str,
        method: &str,
        route: &'static str,
        status: u16,
        secs: f64,
    ) {
        let labels = vec![
            ("port".to_string(), port.to_string()),
            ("method".to_string(), method.to_string()),
            ("route".to_string(), route.to_string()),
            ("status".to_string(), status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
        let l = vec![
            ("port".to_string(), port.to_string()),
            ("route".to_string(), route.to_string()),
        ];
        self.latency.get_or_create(&l).observe(secs);
    }
}

/// The route class of a path, for metric labels: bounded, never a document id.
pub fn route_class(path: &str) -> &'static str {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [] => "root",
        ["_ping"] => "ping",
        ["_all_dbs"] => "all_dbs",
        [s, ..] if s.starts_with('_') => "other",
        [_] => "db",
        [_, s, ..] => match *s {
            "_changes" => "changes",
            "_bulk_docs" => "bulk_docs",
            "_bulk_get" => "bulk_get",
            "_revs_diff" => "revs_diff",
            "_all_docs" => "all_docs",
            "_local" => "local",
            "_session" => "session",
            "_user" => "user",
            "_role" => "role",
            "_ensure_full_commit" => "ensure_full_commit",
            "_compact" => "compact",
            "_design" if segs.len() > 4 => "attachment",
            "_design" => "doc",
            s if s.starts_with('_') => "other",
            _ if segs.len() > 2 => "attachment",
            _ => "doc",
        },
    }
}

/// Renders the current values. Metrics are read from the live counters at scrape time.
pub async fn render(server: &Server, http: &HttpMetrics) -> String {
    let mut reg = Registry::default();
    reg.register(
        "syncgate_http_requests",
        "HTTP requests by port, method, route class and status",
        http.requests.clone(),
    );
    reg.register(
        "syncgate_http_request_duration_seconds",
        "Time to produce the response head, by port and route class",
        http.latency.clone(),
    );
    let feeds = Family::<Labels, Gauge>::default();
    let written = Family::<Labels, Counter>::default();
    let read = Family::<Labels, Counter>::default();
    let docs = Family::<Labels, Gauge>::default();
    let auth = Family::<Labels, Counter>::default();
    for db in server.databases() {
        let l = vec![("db".to_string(), db.name().to_string())];
        feeds
            .get_or_create(&l)
            .set(db.metrics().feeds_active.load(Ordering::SeqCst));
        written
            .get_or_create(&l)
            .inc_by(db.metrics().docs_written.load(Ordering::Relaxed));
        read.get_or_create(&l).inc_by(db.docs_read());
        let count = db.doc_count().await.unwrap_or(0);
        docs.get_or_create(&l).set(count as i64);
        for why in syncgate_core::database::AuthFailure::ALL {
            let labels = vec![
                ("db".to_string(), db.name().to_string()),
                ("reason".to_string(), why.label().to_string()),
            ];
            auth.get_or_create(&labels)
                .inc_by(db.metrics().auth_failures(why));
        }
    }
    reg.register(
        "syncgate_changes_feeds_active",
        "Open longpoll, continuous and eventsource feeds",
        feeds,
    );
    reg.register(
        "syncgate_docs_written",
        "Document revisions written",
        written,
    );
    reg.register(
        "syncgate_docs_read",
        "Document trees and bodies read from the store",
        read,
    );
    reg.register("syncgate_doc_count", "Live documents", docs);
    reg.register(
        "syncgate_auth_failures",
        "Refused public-port authentications by reason",
        auth,
    );
    let size = Gauge::<i64>::default();
    size.set(server.store_size() as i64);
    reg.register(
        "syncgate_store_size_bytes",
        "Size of the embedded store on disk",
        size,
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

pub fn routes(server: Arc<Server>, http: HttpMetrics) -> BoxedFilter<(Reply,)> {
    warp::path::full()
        .then(move |p: warp::path::FullPath| {
            let (server, http) = (server.clone(), http.clone());
            async move {
                match p.as_str() {
                    "/metrics" => bytes_reply(
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        render(&server, &http).await.into_bytes(),
                    ),
                    "/_ping" => ping(server).await,
                    _ => error_reply(&Error::not_found("unknown URL")),
                }
            }
        })
        .boxed()
}

/// `GET /_ping`: `OK`, or 503 naming every database whose store cannot serve (PostgreSQL
/// unreachable).
async fn ping(server: Arc<Server>) -> Reply {
    let down = server.unavailable_databases().await;
    if down.is_empty() {
        return bytes_reply(200, "text/plain; charset=utf-8", b"OK".to_vec());
    }
    let reason = down
        .iter()
        .map(|(db, why)| format!("database \"{db}\" unavailable: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    error_reply(&Error::ServiceUnavailable(reason))
}

#[cfg(test)]
mod tests {
    use super::route_class;

    #[test]
    fn route_classes_are_bounded() {
        assert_eq!(route_class("/"), "root");
        assert_eq!(route_class("/db/"), "db");
        assert_eq!(route_class("/db/some-doc-id"), "doc");
        assert_eq!(route_class("/db/doc/att.png"), "attachment");
        assert_eq!(route_class("/db/_design/x"), "doc");
        assert_eq!(route_class("/db/_changes"), "changes");
        assert_eq!(route_class("/db/_weird"), "other");
    }
}
