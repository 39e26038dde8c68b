//! Black-box tests: every test starts the real binary (one test binary for link time).

mod helpers;

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
mod sessions;
mod sync_admin;
mod sync_function;
mod users;
