//! The one place the synchronous storage traits meet the async PostgreSQL client.
//!
//! The backend owns a small multi-thread tokio runtime (shared by every [`super::PgStore`] of
//! the process): it runs the pools' connections, the listener and the poller. A synchronous
//! trait call hands its work to that runtime and blocks the calling thread until it is done:
//! inside `tokio::task::block_in_place` when the caller is a worker of a multi-thread runtime
//! (so that runtime keeps serving), plainly on any other thread. The caller's runtime is never
//! entered from inside itself. When the trait becomes async, this module is what goes.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::{Result, StorageError};

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// A handle on the backend's runtime.
#[derive(Clone)]
pub(super) struct Bridge {
    handle: Handle,
}

impl Bridge {
    pub(super) fn new() -> Result<Bridge> {
        let rt = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("syncgate-pg")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        });
        match rt {
            Ok(rt) => Ok(Bridge {
                handle: rt.handle().clone(),
            }),
            Err(e) => Err(StorageError::Engine(format!(
                "cannot start the PostgreSQL runtime: {e}"
            ))),
        }
    }

    /// Starts a background task on the backend runtime.
    pub(super) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// Runs `fut` on the backend runtime and waits for its result.
    pub(super) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        wait(rx)
    }

    /// Runs a synchronous step that drives several queries itself (`handle.block_on(…)` for
    /// each) on a blocking thread of the backend runtime, and waits for its result: how a write
    /// batch runs the backend-neutral rules (synchronous) inside one transaction.
    pub(super) fn run_sync<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Handle) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = self.handle.clone();
        self.handle.spawn_blocking(move || {
            let _ = tx.send(f(&handle));
        });
        wait(rx)
    }
}

/// Blocks the calling thread for the result (a task that panicked sends none).
fn wait<T>(rx: std::sync::mpsc::Receiver<Result<T>>) -> Result<T> {
    let recv = move || {
        rx.recv().unwrap_or_else(|_| {
            Err(StorageError::Engine(
                "a PostgreSQL storage task failed".into(),
            ))
        })
    };
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(recv)
        }
        _ => recv(),
    }
}
