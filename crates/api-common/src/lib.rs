//! HTTP plumbing shared by both ports.
//!
//! - [`request`]: the one warp filter both ports use to turn a request into a [`Request`]
//!   (decoded path segments, query, headers, size-limited body, client address).
//! - [`reply`]: JSON replies and the single mapping from [`syncgate_core::Error`] to the JSON
//!   error body; the `recover` for warp's own rejections.
//! - [`routes`]: the document and replication routes both ports serve.
//! - [`all_docs`]: `_all_docs` parameters, each supported, accepted as a no-op or refused.
//! - [`feed`]: streaming `_changes` feeds (longpoll, continuous, eventsource).
//! - [`cors`]: CORS policy, preflights and response headers for both ports.
//! - [`multipart`]: `multipart/related` document uploads (CouchDB's replicator) made inline.
//!
//! warp is used for what it is good at (turning hyper requests into filters); dispatch is a
//! `match` on decoded path segments, so a `%2F` inside a doc id stays part of the id.

pub mod all_docs;
pub mod cors;
pub mod feed;
pub mod multipart;
pub mod reply;
pub mod request;
pub mod routes;

pub use reply::{error_reply, json_reply, recover, Reply};
pub use request::{request_filter, ClientAddr, Request};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// A streaming body handed from a route to the connection layer, which swaps it in for the
/// response's empty body (warp 0.4 has no public way to build a streaming body).
#[derive(Clone)]
pub struct StreamingBody(pub Arc<Mutex<Option<BoxStream<'static, Bytes>>>>);

impl StreamingBody {
    pub fn new(s: BoxStream<'static, Bytes>) -> Self {
        StreamingBody(Arc::new(Mutex::new(Some(s))))
    }

    /// Takes the stream out (once).
    pub fn take(&self) -> Option<BoxStream<'static, Bytes>> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// Server name and version for `GET /`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
