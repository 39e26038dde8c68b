//! Black-box tests: every test starts the real binary (one test binary for link time).

mod helpers;
#[path = "../../crates/storage/tests/support/pg_cluster.rs"]
mod pg_cluster;

mod channels;
mod compaction;
mod config;
mod conformance;
mod console;
mod crash;
mod documents;
mod fidelity;
mod hardening;
mod http;
mod mango;
mod migrate;
mod postgres;
mod sessions;
mod sync_admin;
mod sync_function;
mod users;
