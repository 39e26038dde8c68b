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
use std::time::Duration;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::{Result, StorageError};

/// Longest a call waits for PostgreSQL before it is refused as unavailable (a server that
/// stopped answering must not hang requests). Compaction is exempt ([`Bridge::run_untimed`]).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// Runs `fut` on the backend runtime and waits for its result, at most [`CALL_TIMEOUT`].
    pub(super) fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.run_untimed(async move {
            tokio::time::timeout(CALL_TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        })
    }

    /// [`Bridge::run`] without the time limit (compaction).
    pub(super) fn run_untimed<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        wait(rx, None)
    }

    /// Runs a synchronous step that drives several queries itself (`handle.block_on(…)` for
    /// each) on a blocking thread of the backend runtime, and waits for its result: how a write
    /// batch runs the backend-neutral rules (synchronous) inside one transaction. After
    /// [`CALL_TIMEOUT`] the caller is told PostgreSQL is unavailable (the step may still
    /// finish: like any lost answer, the outcome is then unknown to the client).
    pub(super) fn run_sync<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Handle) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = self.handle.clone();
        self.handle.spawn_blocking(move || {
            let _ = tx.send(f(&handle));
        });
        wait(rx, Some(CALL_TIMEOUT))
    }
}

fn timed_out() -> StorageError {
    StorageError::Unavailable(format!(
        "PostgreSQL did not answer within {} s",
        CALL_TIMEOUT.as_secs()
    ))
}

/// Blocks the calling thread for the result (a task that panicked sends none).
fn wait<T>(rx: std::sync::mpsc::Receiver<Result<T>>, limit: Option<Duration>) -> Result<T> {
    use std::sync::mpsc::RecvTimeoutError;
    let recv = move || match limit {
        Some(limit) => rx.recv_timeout(limit).unwrap_or_else(|e| match e {
            RecvTimeoutError::Timeout => Err(timed_out()),
            RecvTimeoutError::Disconnected => Err(task_failed()),
        }),
        None => rx.recv().unwrap_or_else(|_| Err(task_failed())),
    };
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(recv)
        }
        _ => recv(),
    }
}

fn task_failed() -> StorageError {
    StorageError::Engine("a PostgreSQL storage task failed".into())
}
