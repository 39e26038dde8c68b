//! The metrics listener: Prometheus text at `GET /metrics`, `GET /_ping`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use syncgate_api_common::reply::bytes_reply;
use syncgate_api_common::{error_reply, Reply};
use syncgate_core::{Error, Server};
use warp::filters::BoxedFilter;
use warp::Filter;

type Labels = Vec<(String, String)>;

/// Renders the current values. Metrics are read from the live counters at scrape time.
pub fn render(server: &Server) -> String {
    let mut reg = Registry::default();
    let feeds = Family::<Labels, Gauge>::default();
    let written = Family::<Labels, Counter>::default();
    let read = Family::<Labels, Counter>::default();
    let docs = Family::<Labels, Gauge>::default();
    for db in server.databases() {
        let l = vec![("db".to_string(), db.name.clone())];
        feeds
            .get_or_create(&l)
            .set(db.metrics.feeds_active.load(Ordering::SeqCst));
        written
            .get_or_create(&l)
            .inc_by(db.metrics.docs_written.load(Ordering::Relaxed));
        read.get_or_create(&l).inc_by(db.store.docs_read());
        docs.get_or_create(&l)
            .set(db.store.doc_count().unwrap_or(0) as i64);
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

pub fn routes(server: Arc<Server>) -> BoxedFilter<(Reply,)> {
    warp::path::full()
        .map(move |p: warp::path::FullPath| match p.as_str() {
            "/metrics" => bytes_reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                render(&server).into_bytes(),
            ),
            "/_ping" => bytes_reply(200, "text/plain; charset=utf-8", b"OK".to_vec()),
            _ => error_reply(&Error::not_found("unknown URL")),
        })
        .boxed()
}
