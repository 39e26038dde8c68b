//! The database context shared by both ports: the config model, the server registry, and the
//! document and replication handlers. Knows nothing of HTTP frameworks: handlers take parsed
//! JSON and return JSON values or typed results; the API crates render them.
//!
//! - [`config`]: the config file model and its validation.
//! - [`database`]: [`Server`] (all databases) and [`Database`] (one database's store,
//!   authenticator, settings and metrics).
//! - [`docs`]: document CRUD, `_bulk_docs`, `_bulk_get`, `_revs_diff`, `_all_docs`,
//!   attachments and `_local` docs.
//! - [`changes`]: the changes feed and its wake-up.
//! - [`mango`]: Mango selectors (parse once, match many) and `fields` projection.
//! - [`find`]: Mango over stored documents: `_changes?filter=_selector` and `_find`.
//! - [`error`]: the one error type, with each variant's HTTP status.
//! - [`compaction`]: automatic compaction on a size-growth or idle policy.
//! - [`sync_fn`]: the JavaScript sync function (engine pool, helpers, output rules).

pub mod changes;
pub mod compaction;
pub mod config;
pub mod database;
pub mod docs;
pub mod error;
pub mod find;
pub mod mango;
pub mod migrate;
mod read_ahead;
pub mod sync_fn;

pub use database::{Database, Server};
pub use error::{Error, Result};

/// A client-supplied string shortened for an error message.
pub(crate) fn short(s: &str) -> String {
    syncgate_storage::revtree_truncate(s, 64)
}
